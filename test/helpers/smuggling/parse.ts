/**
 * The differential smuggling harness's backend interpretations: the bytes a backend received
 * from the proxy, re-parsed the way different HTTP/1.1 servers read them. A proxy that forwards
 * one canonical message per request it judged is read the same by all of them; a proxy that
 * forwards ambiguous framing is read differently by at least one, and the request it did not
 * judge shows up here. Test-side code, independent of the proxy's own parser.
 *
 * Interpretations (the framing disagreements of the request-smuggling literature: Linhart et
 * al. 2005 "HTTP Request Smuggling"; PortSwigger / Kettle 2019 "HTTP Desync Attacks" and 2022
 * "Browser-Powered Desync Attacks"; Jabiyev et al. 2021 "T-Reqs" and 2023 "HDiff"-style
 * differential testing):
 * - strict: RFC 9112 as written. CRLF only, no obs-fold, Transfer-Encoding with Content-Length
 *   is an error, TE must be exactly `chunked` last, Content-Length is 1*DIGIT (a list only of
 *   equal values), chunk sizes 1*HEXDIG, CRLF after chunk data, TE on HTTP/1.0 is an error.
 * - lenient: what many servers accept: bare LF, obs-fold, `_` read as `-` in names, space before
 *   the colon, HTTP/0.9 request lines; TE wins when its last coding is chunked, else the first
 *   Content-Length read with parseInt (`+5`, `05`, `5, 5` all read as 5); chunk sizes parsed with
 *   parseInt(hex) (so `0x5` is 5), the two bytes after chunk data skipped unchecked.
 * - cl-wins: lenient, but a Content-Length, when present, frames the body (TE ignored).
 * - last-cl: lenient, but the last Content-Length value (header or list element) wins.
 * - te-anywhere: lenient, but "chunked" anywhere in any Transfer-Encoding value means chunked.
 * - strtol-cl: lenient, but Content-Length read like C's strtol with base 0 (a leading 0 is
 *   octal, 0x hex), as a server that converts it with that call would.
 */

export type Interp = 'strict' | 'lenient' | 'cl-wins' | 'last-cl' | 'te-anywhere' | 'strtol-cl'
export const INTERPRETATIONS: Interp[] = ['strict', 'lenient', 'cl-wins', 'last-cl', 'te-anywhere', 'strtol-cl']

export interface Req {
  method: string
  target: string
  version: string
  headers: Array<[string, string]>
  body: string
  /** Byte offsets of the message in the stream. */
  start: number
  end: number
}

export interface ParseResult {
  requests: Req[]
  /** Why parsing stopped before the end (a server would answer 400 and close here). */
  error?: string
  /** The stream ended inside a message. */
  incomplete: boolean
}

interface Rules {
  lax: boolean
  framing: 'strict' | 'te-last' | 'cl-wins' | 'last-cl' | 'te-anywhere' | 'strtol-cl'
}

const RULES: Record<Interp, Rules> = {
  strict: { lax: false, framing: 'strict' },
  lenient: { lax: true, framing: 'te-last' },
  'cl-wins': { lax: true, framing: 'cl-wins' },
  'last-cl': { lax: true, framing: 'last-cl' },
  'te-anywhere': { lax: true, framing: 'te-anywhere' },
  'strtol-cl': { lax: true, framing: 'strtol-cl' }
}

/** C strtol(s, NULL, 0) on the leading part of s (NaN when there is no number). */
function strtol0 (s: string): number {
  const m = /^[ \t]*([+-]?)(0[xX][0-9A-Fa-f]+|0[0-7]*|[1-9][0-9]*)/.exec(s)
  if (m === null) return NaN
  const d = m[2]
  const v = /^0[xX]/.test(d) ? parseInt(d.slice(2), 16) : d.length > 1 && d[0] === '0' ? parseInt(d.slice(1), 8) : d === '0' ? 0 : parseInt(d, 10)
  return m[1] === '-' ? -v : v
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/

class Fail extends Error {}
class Short extends Error {}

/** Reads lines (CRLF, or under lax rules also bare LF) from a latin1 string. */
class Cursor {
  constructor (readonly s: string, public pos: number, readonly lax: boolean) {}

  line (): string {
    const lf = this.s.indexOf('\n', this.pos)
    if (lf === -1) throw new Short()
    let line = this.s.slice(this.pos, lf)
    if (line.endsWith('\r')) line = line.slice(0, -1)
    else if (!this.lax) throw new Fail('bare LF')
    if (!this.lax && line.includes('\r')) throw new Fail('bare CR')
    this.pos = lf + 1
    return line
  }

  take (n: number): string {
    if (this.pos + n > this.s.length) throw new Short()
    const out = this.s.slice(this.pos, this.pos + n)
    this.pos += n
    return out
  }
}

function parseChunked (c: Cursor, r: Rules): string {
  let body = ''
  for (;;) {
    const line = c.line()
    let size: number
    if (r.lax) {
      size = parseInt(line.trim(), 16)
      if (Number.isNaN(size) || size < 0) throw new Fail(`chunk size "${line}"`)
    } else {
      // eslint-disable-next-line no-control-regex -- a quoted chunk-ext value may not hold these control bytes
      const m = /^([0-9A-Fa-f]+)(?:[ \t]*;[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*=[ \t]*(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+|"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*"))?)*$/.exec(line)
      if (m === null) throw new Fail(`chunk size line "${line}"`)
      if (m[1].replace(/^0+/, '').length > 13) throw new Fail('chunk size overflow')
      size = parseInt(m[1], 16)
    }
    if (size > 1e9) throw new Fail('chunk size too large')
    if (size === 0) {
      // trailer section
      for (;;) {
        const t = c.line()
        if (t === '') return body
        if (!r.lax && !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+:/.test(t)) throw new Fail(`trailer line "${t}"`)
      }
    }
    body += c.take(size)
    const end = c.take(2)
    if (!r.lax && end !== '\r\n') throw new Fail('no CRLF after chunk data')
  }
}

function parseOne (c: Cursor, r: Rules): Req | null {
  const start = c.pos
  // RFC 9112 §2.2: at least one empty line before a request-line is ignored
  let line = c.line()
  while (line === '') {
    if (c.pos >= c.s.length) return null
    line = c.line()
  }
  let method: string, target: string, version: string
  const strictLine = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([^\s]+) HTTP\/(\d\.\d)$/.exec(line)
  if (strictLine !== null) {
    [, method, target, version] = strictLine
  } else if (r.lax) {
    const parts = line.trim().split(/[ \t]+/)
    if (parts.length === 2 && TOKEN.test(parts[0])) {
      // HTTP/0.9: a bare request line, no headers, no body
      return { method: parts[0], target: parts[1], version: '0.9', headers: [], body: '', start, end: c.pos }
    }
    const m = parts.length === 3 ? /^HTTP\/(\d\.\d)$/i.exec(parts[2]) : null
    if (m === null || !TOKEN.test(parts[0])) throw new Fail(`request line "${line}"`)
    method = parts[0]; target = parts[1]; version = m[1]
  } else {
    throw new Fail(`request line "${line}"`)
  }
  const headers: Array<[string, string]> = []
  for (;;) {
    const h = c.line()
    if (h === '') break
    if (h[0] === ' ' || h[0] === '\t') {
      if (!r.lax || headers.length === 0) throw new Fail('obs-fold')
      headers[headers.length - 1][1] += ' ' + h.trim()
      continue
    }
    const colon = h.indexOf(':')
    if (colon <= 0) throw new Fail(`header line "${h}"`)
    let name = h.slice(0, colon)
    const value = h.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '')
    if (r.lax) {
      name = name.trim().replace(/_/g, '-')
    } else {
      if (!TOKEN.test(name)) throw new Fail(`header name "${name}"`)
      // eslint-disable-next-line no-control-regex -- the control bytes a field value may not hold
      if (/[\x00-\x08\x0a-\x1f\x7f]/.test(value)) throw new Fail(`control character in ${name}`)
    }
    headers.push([name, value])
  }
  const all = (n: string): string[] => headers.filter(([k]) => k.toLowerCase() === n).map(([, v]) => v)
  const te = all('transfer-encoding')
  const cl = all('content-length')
  let chunked = false
  let length = 0
  const codings = te.join(',').split(',').map(s => s.trim().toLowerCase()).filter(s => s !== '')
  const clValues = cl.join(',').split(',').map(s => s.trim())
  switch (r.framing) {
    case 'strict': {
      if (te.length > 0) {
        if (version === '1.0') throw new Fail('Transfer-Encoding on HTTP/1.0')
        if (cl.length > 0) throw new Fail('Transfer-Encoding with Content-Length')
        if (codings.length === 0 || codings[codings.length - 1] !== 'chunked' || codings.slice(0, -1).includes('chunked')) throw new Fail(`Transfer-Encoding "${te.join(', ')}"`)
        if (codings.length > 1) throw new Fail(`unsupported coding "${te.join(', ')}"`) // a server answers 501
        chunked = true
      } else if (cl.length > 0) {
        if (!clValues.every(v => /^\d+$/.test(v))) throw new Fail(`Content-Length "${cl.join(', ')}"`)
        if (new Set(clValues.map(v => BigInt(v).toString())).size !== 1) throw new Fail(`Content-Length "${cl.join(', ')}"`)
        length = Number(clValues[0])
      }
      break
    }
    case 'te-last':
      if (codings.length > 0 && codings[codings.length - 1] === 'chunked') chunked = true
      else if (cl.length > 0) length = parseInt(cl[0], 10)
      break
    case 'cl-wins':
      if (cl.length > 0) length = parseInt(cl[0], 10)
      else chunked = codings.length > 0 && codings[codings.length - 1] === 'chunked'
      break
    case 'last-cl':
      if (te.length > 0 && codings.length === 1 && codings[0] === 'chunked') chunked = true
      else if (cl.length > 0) length = parseInt(clValues[clValues.length - 1], 10)
      break
    case 'te-anywhere':
      if (te.some(v => /chunked/i.test(v))) chunked = true
      else if (cl.length > 0) length = parseInt(cl[0], 10)
      break
    case 'strtol-cl':
      if (codings.length > 0 && codings[codings.length - 1] === 'chunked') chunked = true
      else if (cl.length > 0) length = strtol0(cl[0])
      break
  }
  if (Number.isNaN(length) || length < 0) throw new Fail(`Content-Length "${cl.join(', ')}"`)
  if (length > 1e9) throw new Fail('Content-Length too large')
  const body = chunked ? parseChunked(c, r) : c.take(length)
  return { method, target, version, headers, body, start, end: c.pos }
}

/** Every request one interpretation finds in the bytes of one connection, in order. */
export function parseRequests (bytes: string, interp: Interp): ParseResult {
  const r = RULES[interp]
  const c = new Cursor(bytes, 0, r.lax)
  const requests: Req[] = []
  while (c.pos < bytes.length) {
    const at = c.pos
    try {
      const q = parseOne(c, r)
      if (q === null) break
      requests.push(q)
    } catch (e) {
      if (e instanceof Short) return { requests, incomplete: true }
      if (e instanceof Fail) return { requests, error: `${e.message} at byte ${at}`, incomplete: false }
      throw e
    }
  }
  return { requests, incomplete: false }
}

/** The path the policy judges: the target without scheme, authority and query. */
export function pathOf (target: string): string {
  const noAuthority = target.replace(/^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/, '')
  return noAuthority.split('?')[0]
}

/**
 * The harness policy: checkout may `POST /api/v1/charge` (the seed's rule 1), nothing else.
 * Every corpus case hides something else (a DELETE, a GET of /admin) where a desync would
 * smuggle it.
 */
export function allowed (q: Pick<Req, 'method' | 'target'>): boolean {
  return q.method === 'POST' && pathOf(q.target) === '/api/v1/charge'
}

export interface Finding { interp: Interp, request: string, at: number }

/** Requests the policy forbids, found by any interpretation in one connection's bytes. */
export function forbiddenIn (bytes: string): Finding[] {
  const out: Finding[] = []
  for (const interp of INTERPRETATIONS) {
    for (const q of parseRequests(bytes, interp).requests) {
      if (!allowed(q)) out.push({ interp, request: `${q.method} ${q.target} HTTP/${q.version}`, at: q.start })
    }
  }
  return out
}

export interface Resp {
  status: number
  version: string
  headers: Array<[string, string]>
  body: string
}

export interface RespParse {
  responses: Resp[]
  /** Bytes that are no well-formed response (corruption), with the reason. */
  garbage?: string
  /** The stream ended inside a response that has a length. */
  truncated: boolean
}

/**
 * The responses a client received on one connection (strict RFC 9112 response framing; no HEAD
 * requests in this harness). `closed`: the connection ended, so a close-delimited body is
 * complete.
 */
export function parseResponses (bytes: string, closed: boolean): RespParse {
  const responses: Resp[] = []
  const c = new Cursor(bytes, 0, false)
  while (c.pos < bytes.length) {
    const at = c.pos
    try {
      const line = c.line()
      const m = /^HTTP\/(\d\.\d) (\d{3}) [^\r\n]*$/.exec(line)
      if (m === null) return { responses, garbage: `status line "${line.slice(0, 80)}" at byte ${at}`, truncated: false }
      const headers: Array<[string, string]> = []
      for (;;) {
        const h = c.line()
        if (h === '') break
        const colon = h.indexOf(':')
        if (colon <= 0 || !TOKEN.test(h.slice(0, colon))) return { responses, garbage: `header line "${h.slice(0, 80)}" at byte ${at}`, truncated: false }
        headers.push([h.slice(0, colon), h.slice(colon + 1).trim()])
      }
      const status = Number(m[2])
      const get = (n: string): string[] => headers.filter(([k]) => k.toLowerCase() === n).map(([, v]) => v)
      let body = ''
      if ((status >= 100 && status < 200) || status === 204 || status === 304) {
        body = ''
      } else if (get('transfer-encoding').length > 0) {
        body = parseChunked(c, RULES.strict)
      } else if (get('content-length').length > 0) {
        const vals = get('content-length').join(',').split(',').map(s => s.trim())
        if (!vals.every(v => /^\d+$/.test(v)) || new Set(vals).size !== 1) return { responses, garbage: `Content-Length "${vals.join(',')}" at byte ${at}`, truncated: false }
        body = c.take(Number(vals[0]))
      } else {
        if (!closed) return { responses, truncated: true } // close-delimited, not ended yet
        body = bytes.slice(c.pos)
        c.pos = bytes.length
      }
      responses.push({ status, version: m[1], headers, body })
    } catch (e) {
      if (e instanceof Short) return { responses, truncated: true }
      if (e instanceof Fail) return { responses, garbage: `${e.message} at byte ${at}`, truncated: false }
      throw e
    }
  }
  return { responses, truncated: false }
}

export function header (r: { headers: Array<[string, string]> }, name: string): string | undefined {
  return r.headers.find(([k]) => k.toLowerCase() === name)?.[1]
}
