/**
 * Precompiled full-match string matchers for HTTP fields and DNS names. Cilium matches
 * `method`/`path`/`host` with RE2 FullMatch (docs/policy.md), so a pattern is compiled as
 * `^(?:pattern)$`. An RE2 call costs far more than a string compare (it copies the value to UTF-8), so patterns
 * that are literals compare with `===`, `literal.*` is a prefix compare, `literal[0-9]+` (and
 * `*`, `\d`) a prefix plus a digit scan, and any other pattern with a literal start is asked of
 * RE2 only when the value has that start: a rule list such as `/api/v1/users/[0-9]+`,
 * `/api/v1/orders/[0-9]+`, ... then costs one engine call per request, not one per rule (docs/design/hot-paths.md).
 * A property test holds every shortcut to RE2's answers.
 */
import RE2 from 're2'
import type { StringMatcher } from './types.js'

const META = /[\\^$.|?*+()[\]{}]/

/** Compile; throws the RE2 SyntaxError for an invalid pattern. */
export function compileFullMatch (source: string): StringMatcher {
  if (!META.test(source)) return { source, test: (v: string) => v === source }
  if (source.endsWith('.*') && !META.test(source.slice(0, -2))) {
    // `.` does not match `\n` in RE2; keep that exact.
    const prefix = source.slice(0, -2)
    return { source, test: (v: string) => v.startsWith(prefix) && v.indexOf('\n', prefix.length) === -1 }
  }
  const re = new RE2('^(?:' + source + ')$', 'u')
  const prefix = literalPrefix(source)
  const tail = source.slice(prefix.length)
  const digits = DIGIT_TAILS.get(tail)
  if (digits !== undefined) {
    // RE2's [0-9] and \d are the ASCII digits only, also in UTF-8 mode.
    const min = prefix.length + digits
    return { source, test: (v: string) => v.length >= min && v.startsWith(prefix) && allDigits(v, prefix.length) }
  }
  if (prefix === '') return { source, test: (v: string) => re.test(v) }
  return { source, test: (v: string) => v.startsWith(prefix) && re.test(v) }
}

/** Digit-run tails and the fewest digits each needs. */
const DIGIT_TAILS = new Map<string, number>([['[0-9]+', 1], ['[0-9]*', 0], ['\\d+', 1], ['\\d*', 0]])

function allDigits (v: string, from: number): boolean {
  for (let i = from; i < v.length; i++) {
    const c = v.charCodeAt(i)
    if (c < 0x30 || c > 0x39) return false
  }
  return true
}

/**
 * Text that every full match of `source` starts with: the characters before its first
 * metacharacter, less the last one when a quantifier follows it (`ab*`: `a`). '' when the
 * pattern has an alternation anywhere (a branch need not start with it) or starts with a
 * metacharacter (a group, a class, an escape, inline flags). A necessary condition only: the
 * engine still decides every value that has it, except the digit tails above.
 */
export function literalPrefix (source: string): string {
  if (source.includes('|')) return ''
  const m = META.exec(source)
  if (m === null) return source
  let end = m.index
  const c = source[end]
  if (end > 0 && (c === '?' || c === '*' || c === '+' || c === '{')) end--
  return source.slice(0, end)
}

/** `api.GitHub.com` -> `api.github.com.` (Cilium's FQDN normalisation, docs/policy.md). */
export function normalizeFqdn (name: string): string {
  const l = name.toLowerCase()
  return l.endsWith('.') ? l : l + '.'
}

// `test` is a plain function (it uses no `this`), so it can be copied into rule tables.
export interface NameMatcher { pattern: string, key: string, test: (fqdn: string) => boolean }

export const MATCH_NAME_RE = /^([-a-zA-Z0-9_]+[.]?)+$/
export const MATCH_PATTERN_RE = /^([-a-zA-Z0-9_*]+[.]?)+$/

export function compileMatchName (name: string): NameMatcher {
  const n = normalizeFqdn(name)
  return { pattern: name, key: `matchName:${n}`, test: (f: string) => f === n }
}

/**
 * Cilium's matchPattern (pkg/fqdn/matchpattern): only `*` = everything; a leading `**.` =
 * one or more labels; any other run of `*` = `[-a-zA-Z0-9_]*` inside one label. Anchored.
 */
export function compileMatchPattern (pattern: string): NameMatcher {
  const n = normalizeFqdn(pattern)
  const key = `matchPattern:${n}`
  if (/^\*+\.$/.test(n)) return { pattern, key, test: () => true }
  let rest = n
  let re = ''
  const lead = /^\*\*+\./.exec(rest)
  if (lead !== null) {
    re += '(?:[-a-zA-Z0-9_]+\\.)+'
    rest = rest.slice(lead[0].length)
  }
  re += rest.replace(/\*+/g, '*').split('*').map((s) => s.replace(/\./g, '\\.')).join('[-a-zA-Z0-9_]*')
  const compiled = new RE2('^' + re + '$', 'u')
  return { pattern, key, test: (f: string) => compiled.test(f) }
}
