/**
 * Hot-path log lines in pino's own JSON format, written straight to the logger's destination.
 *
 * Why: the access log writes one line per request, and pino's generic path (child bindings,
 * then `asJson` walking the record's keys with megamorphic property loads, then string
 * concatenation) was a large share of the HTTP proxy's CPU per allowed request
 * (docs/design/hot-paths.md). A line whose keys are known in advance can be built by plain
 * concatenation: the caller keeps, per connection, the serialised bindings that pino itself
 * produced for a child logger (`bindingsOf`), and per line appends only its own fields.
 *
 * The output is byte-for-byte what `logger.child(bindings)[level](record, msg)` writes for the
 * same keys in the same order (test/proxy/log-line.test.ts proves it against pino), as long as
 * the logger has no mixin, formatters or hooks: `fastLineOk` checks that, and callers fall back
 * to pino's own methods when it says no.
 */
import pino from 'pino'
import { fellBack } from './fast-paths.js'

const S = pino.symbols
/** The pino internals a line is built from; a pino without one of them gets pino's own path. */
const NEEDED = ['chindingsSym', 'streamSym', 'timeSym', 'messageKeySym', 'mixinSym', 'hooksSym', 'formattersSym'] as const
const absent = NEEDED.filter((k) => typeof (S as Record<string, unknown>)[k] !== 'symbol')
if (absent.length > 0) fellBack('log-lines', `pino.symbols lacks ${absent.join(', ')}: lines go through pino's methods`)

export const LEVEL = { info: 30, warn: 40 } as const
const INFO = '{"level":30'
const WARN = '{"level":40'

interface PinoInternals {
  [S.chindingsSym]: string
  [S.streamSym]: { write (line: string): unknown }
  [S.timeSym]: () => string
  [S.messageKeySym]: string
  [S.mixinSym]?: unknown
  [S.hooksSym]?: { logMethod?: unknown, streamWrite?: unknown }
  [S.formattersSym]?: { bindings?: unknown, level?: unknown, log?: unknown }
}

function internals (logger: pino.Logger): PinoInternals {
  return logger as unknown as PinoInternals
}

/**
 * Whether `LineWriter` reproduces this logger's output: no mixin, no log hooks, no custom
 * formatters for the level or the record, and `msg` as the message key.
 */
export function fastLineOk (logger: pino.Logger): boolean {
  if (absent.length > 0) return false
  const l = internals(logger)
  if (l[S.mixinSym] !== undefined && l[S.mixinSym] !== null) return false
  const hooks = l[S.hooksSym]
  if (hooks !== undefined && (hooks.logMethod !== undefined || hooks.streamWrite !== undefined)) return false
  const f = l[S.formattersSym]
  if (f !== undefined) {
    // pino always installs defaults; ours must be those defaults (checked by their output).
    const level = f.level as ((label: string, n: number) => object) | undefined
    const log = f.log as ((o: object) => object) | undefined
    if (level !== undefined && JSON.stringify(level('info', 30)) !== '{"level":30}') return false
    if (log !== undefined) { const probe = { a: 1 }; if (log(probe) !== probe) return false }
  }
  return l[S.messageKeySym] === 'msg'
}

/**
 * The bindings pino serialised for this (child) logger: `,"k":v,...`, after level and time.
 * Returned as a flat string: pino builds it by concatenation, and a line that embeds such a
 * string of pieces makes V8 walk the pieces again for every line it writes out. Callers keep the result per connection.
 */
export function bindingsOf (logger: pino.Logger): string {
  return flat(internals(logger)[S.chindingsSym])
}

/**
 * The same string in one piece (V8 keeps concatenations as trees until something flattens
 * them). Through JSON so that every UTF-16 unit, lone surrogates included, comes back as it was.
 */
function flat (s: string): string {
  return JSON.parse(JSON.stringify(s)) as string
}

/**
 * Writes lines for one root logger and its children (they share its destination and clock).
 * The destination and clock are read from pino once, here: reading them per line through
 * pino's symbol keys was a megamorphic load on every call (children differ in shape).
 */
export class LineWriter {
  private readonly stream: { write (line: string): unknown }
  private readonly time: () => string
  /** pino's default clock (epochTime): its text is cached per millisecond (see timeField). */
  private readonly epoch: boolean
  private lastNow = -1
  private lastTime = ''

  constructor (logger: pino.Logger) {
    const l = internals(logger)
    this.stream = l[S.streamSym]
    this.time = l[S.timeSym]
    this.epoch = this.time === pino.stdTimeFunctions.epochTime
  }

  /**
   * `,"time":<ms>` as pino's epochTime writes it. Many lines share a millisecond under load,
   * and turning Date.now()'s 13-digit double into text is not free.
   */
  private timeField (): string {
    if (!this.epoch) return this.time()
    const now = Date.now()
    if (now !== this.lastNow) { this.lastNow = now; this.lastTime = ',"time":' + epochText(now) }
    return this.lastTime
  }

  /**
   * Write one line (the caller has checked the level with pino's isLevelEnabled):
   * `{"level":L,"time":T<bindings><fields>,"msg":<msg>}`. `bindings` comes from
   * `bindingsOf(child)`; `fields` is `""` or starts with a comma, each value already JSON
   * (`jsonString` for strings); `msgJson` is the message as a JSON string literal.
   */
  write (level: number, bindings: string, fields: string, msgJson: string): void {
    this.stream.write((level === LEVEL.info ? INFO : level === LEVEL.warn ? WARN : '{"level":' + String(level)) +
      this.timeField() + bindings + fields + ',"msg":' + msgJson + '}\n')
  }
}

/**
 * A string as a JSON literal: exactly `JSON.stringify(s)`. Most strings here (names, addresses,
 * paths) need no escaping, and a JS loop that finds so and adds the quotes costs less than the
 * call into V8's C++ JSON.stringify, which a handful of short strings per line made visible in
 * profiles. Anything that may need escaping
 * (control characters, `"`, `\`, surrogates) is left to JSON.stringify.
 */
export function jsonString (s: string): string {
  return needsJsonEscape(s) ? JSON.stringify(s) : '"' + s + '"'
}

/** Whether JSON.stringify(s) is anything but `s` in quotes (control characters, `"`, `\`, surrogates). */
export function needsJsonEscape (s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 0x20 || c === 0x22 || c === 0x5c || (c >= 0xd800 && c <= 0xdfff)) return true
  }
  return false
}

/**
 * `String(ms)` for an integer count of milliseconds since the epoch: as two small integers (the
 * millions and the six digits below), which V8 turns into text without the double-to-shortest
 * conversion `String` needs for a 13-digit number (once per millisecond). Anything else goes to `String`.
 */
export function epochText (ms: number): string {
  if (!(ms >= 1e6 && ms < 2 ** 52 && Math.floor(ms) === ms)) return String(ms)
  const hi = Math.floor(ms / 1e6)
  return String(hi) + String(ms - hi * 1e6 + 1e6).slice(1)
}

/** `.ddd` with trailing zeros dropped, for 0..999 thousandths ('' for 0). */
const THOUSANDTHS: readonly string[] = Array.from({ length: 1000 }, (_, i) => i === 0 ? '' : ('.' + String(i).padStart(3, '0')).replace(/0+$/, ''))

/**
 * `String(Math.round(ms * 1000) / 1000)` (what pino writes for such a number) without the
 * double-to-shortest-text conversion: the integer part and a table of
 * the 999 fractions. The same text, because a value with at most 3 decimals and fewer than 13
 * digits is its own shortest round-trip form (test/proxy/log-line.test.ts compares ranges).
 */
export function millis3 (ms: number): string {
  const us = Math.round(ms * 1000)
  if (!(us >= 0 && us < 2 ** 31)) return String(us / 1000)
  return String((us / 1000) | 0) + THOUSANDTHS[us % 1000]
}
