/**
 * The request-smuggling corpus, as data: every case is a name, the public research it comes
 * from, and the raw bytes a client writes (a list of segments, each written on its own, so a
 * case can split a request across reads). Checkout may `POST /api/v1/charge`, nothing else; each
 * case hides a forbidden request (`DELETE /api/v1/charge`, `GET /admin`) where a desync between
 * the proxy and a backend would smuggle it past the policy.
 *
 * Sources (facts only; the bytes are written here):
 * - [Linhart05] C. Linhart, A. Klein, R. Heled, S. Orrin, "HTTP Request Smuggling", Watchfire, 2005
 *   (CL.CL with two Content-Length, CL.TE).
 * - [Kettle19] J. Kettle, "HTTP Desync Attacks: Request Smuggling Reborn", PortSwigger Research, 2019
 *   (TE.CL / CL.TE, the Transfer-Encoding obfuscations: ` chunked`, tab, `xchunked`, duplicate TE,
 *   `X: X\nTransfer-Encoding`, space before the colon).
 * - [Kettle22] J. Kettle, "Browser-Powered Desync Attacks", PortSwigger Research, 2022 (CL.0).
 * - [Kettle25] J. Kettle, "HTTP/1.1 Must Die: The Desync Endgame", PortSwigger Research, 2025
 *   (0.CL, Expect-based desync, obs-fold and hidden headers).
 * - [smuggler] defparam's smuggler.py mutation list (nameprefix, tabprefix, vertical tab, `_`).
 * - [SMUGGLEtest] the TE.TE obfuscation lists of the SMUGGLEtest scanner (`chunked, identity`,
 *   `identity, chunked`, `chunk`, `\x00chunked`, case, CR and LF variants).
 * - [TReqs] B. Jabiyev et al., "T-Reqs: HTTP Request Smuggling with Differential Fuzzing", ACM CCS
 *   2021 (request-line and version mutations, HTTP/0.9 and 1.0, Host variants).
 * - [Wookiees] Regilero, "Hiding Wookiees in HTTP", DEF CON 24, 2016 (chunk-size overflow, `0x`
 *   prefix, leading zeros, bare CR terminators, HTTP/0.9).
 * - [Funky] J. B. Weikop, "Funky chunks: abusing ambiguous chunk line terminators", 2025
 *   (chunk extensions with LF, CR and quotes).
 * - [Probe] the Http11Probe compliance suite's smuggling section (Content-Length `+5`, `5, 5`,
 *   `Transfer_Encoding`, Host `a, b`).
 * - [RFC9112] RFC 9112 §3.2 (Host), §6.1 (TE on HTTP/1.0), §6.3 (framing), §7.1 (chunks);
 *   RFC 9110 §7.6.1 (Connection), §10.1.1 (Expect).
 */

export interface Forwarded {
  method: string
  target: string
  body: string
  /** Fields the backend must receive with these values. */
  headers?: Array<[string, string]>
  /** Fields the backend must not receive. */
  absent?: string[]
}

export interface Case {
  name: string
  source: string
  /** Written one after the other, each on its own (a short pause between). */
  segments: string[]
  /** The proxy must answer exactly this status and forward nothing of the case. */
  refuse?: number
  /** A clean case: what the backend must receive (strict RFC 9112 reading), in order. */
  forward?: Forwarded[]
  /** The case's connection ends after its exchange (HTTP/1.0 without keep-alive). */
  closes?: boolean
}

const HOST = 'Host: billing-service\r\n'
const ALLOWED = 'POST /api/v1/charge HTTP/1.1\r\n'
/** The forbidden request every case hides. */
export const SMUGGLED = `DELETE /api/v1/charge HTTP/1.1\r\n${HOST}Content-Length: 0\r\n\r\n`
const ADMIN = `GET /admin HTTP/1.1\r\n${HOST}\r\n`
const hex = (n: number): string => n.toString(16)
const len = (s: string): number => Buffer.byteLength(s, 'latin1')

/** The normal request that follows a case on its connection and on a fresh one. */
export function normalRequest (marker: string): string {
  return `${ALLOWED}${HOST}Content-Length: ${len(marker)}\r\n\r\n${marker}`
}
/** What the recording backend answers to it. */
export function normalEcho (marker: string): string {
  return `saw POST /api/v1/charge body=${JSON.stringify(marker)}`
}

/** CL.TE: the proxy frames by Content-Length, a backend by (an obfuscated) Transfer-Encoding. */
function clte (te: string): string {
  const body = `0\r\n\r\n${SMUGGLED}`
  return `${ALLOWED}${HOST}Content-Length: ${len(body)}\r\n${te}\r\n\r\n${body}`
}

/** TE.CL: the proxy frames by (an obfuscated) Transfer-Encoding, a backend by Content-Length. */
function tecl (te: string): string {
  const sizeLine = `${hex(len(SMUGGLED))}\r\n`
  const body = `${sizeLine}${SMUGGLED}\r\n0\r\n\r\n`
  return `${ALLOWED}${HOST}${te}\r\nContent-Length: ${len(sizeLine)}\r\n\r\n${body}`
}

/** Transfer-Encoding lines as the scanners obfuscate them [Kettle19] [smuggler] [SMUGGLEtest]. */
const TE_MUTATIONS: Array<[string, string]> = [
  ['plain', 'Transfer-Encoding: chunked'],
  ['xchunked', 'Transfer-Encoding: xchunked'],
  ['leading space in value', 'Transfer-Encoding:  chunked'],
  ['name prefixed by a space', ' Transfer-Encoding: chunked'],
  ['tab before value', 'Transfer-Encoding:\tchunked'],
  ['tab before colon', 'Transfer-Encoding\t:\tchunked'],
  ['space before colon', 'Transfer-Encoding : chunked'],
  ['trailing tab', 'Transfer-Encoding: chunked\t'],
  ['vertical tab', 'Transfer-Encoding:\x0bchunked'],
  ['form feed', 'Transfer-Encoding:\x0cchunked'],
  ['chunked, identity', 'Transfer-Encoding: chunked, identity'],
  ['identity, chunked', 'Transfer-Encoding: identity, chunked'],
  ['upper case', 'TRANSFER-ENCODING: CHUNKED'],
  ['mixed case', 'TrAnSfEr-EnCoDiNg: cHuNkEd'],
  ['duplicate TE, chunked first', 'Transfer-Encoding: chunked\r\nTransfer-Encoding: x'],
  ['duplicate TE, chunked last', 'Transfer-Encoding: x\r\nTransfer-Encoding: chunked'],
  ['obs-fold value', 'Transfer-Encoding:\r\n chunked'],
  ['hidden behind bare LF', 'X: x\nTransfer-Encoding: chunked'],
  ['hidden behind bare CR', 'X: x\rTransfer-Encoding: chunked'],
  ['underscore name', 'Transfer_Encoding: chunked'],
  ['quoted', 'Transfer-Encoding: "chunked"'],
  ['chunk', 'Transfer-Encoding: chunk'],
  ['NUL prefix', 'Transfer-Encoding: \x00chunked'],
  ['non-ASCII u', 'Transfer-Encoding: ch\xf9nked']
]

/**
 * The issue's exploit [Kettle25-style hidden TE]: an empty (or blank) Transfer-Encoding with a
 * Content-Length. A proxy that frames by Content-Length but re-chunks the body (one chunk per
 * read) and forwards both headers lets a Content-Length backend stop inside the chunked body; the
 * body is written in small reads so the chunk overhead moves the smuggled request (behind a CRLF
 * sled that absorbs misalignment) to where that backend starts its next request.
 */
function blankTe (value: string, aligned: boolean): string[] {
  // the smuggled request swallows the proxy's terminating `\r\n0\r\n\r\n` as its body
  const tail = `DELETE /api/v1/charge HTTP/1.1\r\n${HOST}Content-Length: 7\r\n\r\n`
  // 40 two-byte reads add ~200 bytes of chunk framing; the 200-byte sled takes any overhead
  // between the tail's length and the tail plus the sled
  const sled = '\r\n'.repeat(100)
  const pieces = aligned ? [...Array.from({ length: 40 }, () => 'ab'), sled + tail] : ['ab'.repeat(40) + sled + tail]
  const body = pieces.join('')
  return [`${ALLOWED}${HOST}Transfer-Encoding:${value}\r\nContent-Length: ${len(body)}\r\n\r\n`, ...pieces]
}

function caseList (): Case[] {
  const cases: Case[] = []
  for (const [name, te] of TE_MUTATIONS) {
    cases.push({ name: `CL.TE ${name}`, source: 'Kettle19, smuggler, SMUGGLEtest', segments: [clte(te)] })
    cases.push({ name: `TE.CL ${name}`, source: 'Kettle19, smuggler, SMUGGLEtest', segments: [tecl(te)] })
  }
  for (const [name, v] of [['empty', ''], ['space', ' '], ['tab', '\t'], ['spaces', '   ']]) {
    cases.push({ name: `blank TE (${name}) with CL, body over many reads`, source: 'warden regression (a blank TE was re-chunked), Kettle25', segments: blankTe(v, true) })
    cases.push({ name: `blank TE (${name}) with CL, one read`, source: 'warden regression (a blank TE was re-chunked), Kettle25', segments: blankTe(v, false) })
  }
  cases.push({ name: 'TE chunked on HTTP/1.0', source: 'RFC9112 §6.1, TReqs', refuse: 400,
    segments: [`POST /api/v1/charge HTTP/1.0\r\n${HOST}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n${SMUGGLED}`] })

  // Content-Length tricks [Linhart05] [Probe] [Kettle25]
  const cl = (value: string, body: string): string => `${ALLOWED}${HOST}Content-Length: ${value}\r\n\r\n${body}`
  cases.push({ name: 'two different Content-Length', source: 'Linhart05', segments: [`${ALLOWED}${HOST}Content-Length: 5\r\nContent-Length: ${5 + len(SMUGGLED)}\r\n\r\nhello${SMUGGLED}`] })
  cases.push({ name: 'two equal Content-Length', source: 'Linhart05, RFC9112 §6.3', segments: [`${ALLOWED}${HOST}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello`] })
  cases.push({ name: 'Content-Length list 5, 5', source: 'Probe, RFC9112 §6.3', segments: [cl('5, 5', 'hello')] })
  cases.push({ name: 'Content-Length list 5, N', source: 'Probe, Linhart05', segments: [cl(`5, ${5 + len(SMUGGLED)}`, `hello${SMUGGLED}`)] })
  cases.push({ name: 'Content-Length list N, 5', source: 'Probe, Linhart05', segments: [cl(`${5 + len(SMUGGLED)}, 5`, `hello${SMUGGLED}`)] })
  cases.push({ name: 'Content-Length +5', source: 'Probe', segments: [cl('+5', `hello${SMUGGLED}`)] })
  cases.push({ name: 'Content-Length -5', source: 'Probe', segments: [cl('-5', `hello${SMUGGLED}`)] })
  cases.push({ name: 'Content-Length 0x5', source: 'Wookiees', segments: [cl('0x5', `hello${SMUGGLED}`)] })
  // 0100: 100 bytes as the proxy reads it, 64 for a backend that reads a leading 0 as octal
  // (C strtol with base 0); the last 36 bytes are a forbidden request for that backend
  cases.push({ name: 'Content-Length with leading zeros', source: 'Probe, Wookiees', segments: [cl('0100', 'x'.repeat(64) + 'GET /admin HTTP/1.1\r\nHost: bbbbb\r\n\r\n')] })
  cases.push({ name: 'Content-Length 5 5 (space inside)', source: 'Probe', segments: [cl('5 5', `hello${SMUGGLED}`)] })
  cases.push({ name: 'Content-Length overflow', source: 'Wookiees', segments: [cl('18446744073709551621', `hello${SMUGGLED}`)] })
  cases.push({ name: 'Content-Length space before colon', source: 'Kettle19', segments: [`${ALLOWED}${HOST}Content-Length : ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  cases.push({ name: 'Content-Length obs-fold', source: 'Kettle25', segments: [`${ALLOWED}${HOST}Content-Length: 0\r\n ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  cases.push({ name: 'Content-Length hidden behind bare LF', source: 'Kettle25', segments: [`${ALLOWED}${HOST}X: x\nContent-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  cases.push({ name: 'Content-Length hidden behind bare CR', source: 'Wookiees', segments: [`${ALLOWED}${HOST}X: x\rContent-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  {
    // Content_Length: a server that folds `_` to `-` reads the next request's head as this body
    const second = `${ALLOWED}${HOST}Content-Length: ${len(SMUGGLED)}\r\n\r\n`
    cases.push({ name: 'Content_Length (underscore)', source: 'smuggler, Probe', refuse: 400,
      segments: [`${ALLOWED}${HOST}Content_Length: ${len(second)}\r\n\r\n${second}${SMUGGLED}`] })
    cases.push({ name: 'Transfer_Encoding (underscore) with CL', source: 'smuggler, Probe', refuse: 400, segments: [clte('Transfer_Encoding: chunked')] })
  }

  // Chunk-size and chunk-extension tricks [Wookiees] [Funky]
  const chunked = (body: string, extra = ''): string => `${ALLOWED}${HOST}Transfer-Encoding: chunked\r\n${extra}\r\n${body}`
  cases.push({ name: 'chunk size with leading zeros', source: 'Wookiees, RFC9112 §7.1', segments: [chunked('0000000000000000000000005\r\nhello\r\n0\r\n\r\n')], forward: [{ method: 'POST', target: '/api/v1/charge', body: 'hello' }] })
  cases.push({ name: 'chunk size 0x prefix', source: 'Wookiees', segments: [chunked(`0x5\r\nhello\r\n0\r\n\r\n${SMUGGLED}`)] })
  cases.push({ name: 'chunk size overflow wraps to 5', source: 'Wookiees', segments: [chunked(`10000000000000005\r\nhello\r\n0\r\n\r\n${SMUGGLED}`)] })
  cases.push({ name: 'chunk size negative', source: 'Wookiees', segments: [chunked(`-5\r\nhello\r\n0\r\n\r\n${SMUGGLED}`)] })
  cases.push({ name: 'chunk size with trailing space', source: 'Funky', segments: [chunked(`5 \r\nhello\r\n0\r\n\r\n${SMUGGLED}`)] })
  cases.push({ name: 'chunk extension with quoted CRLF', source: 'Funky', segments: [chunked(`5;a="x\r\n0\r\n\r\n${SMUGGLED}"\r\nhello\r\n0\r\n\r\n`)] })
  cases.push({ name: 'chunk extension with bare LF', source: 'Funky', segments: [chunked(`2;\nxx\r\n${hex(len(SMUGGLED) + 5)}\r\n0\r\n\r\n${SMUGGLED}\r\n0\r\n\r\n`)] })
  cases.push({ name: 'chunk extension with bare CR', source: 'Funky', segments: [chunked(`5;a\rb\r\nhello\r\n0\r\n\r\n${SMUGGLED}`)] })
  cases.push({ name: 'chunk data without CRLF', source: 'Funky', segments: [chunked(`5\r\nhelloXX${hex(len(SMUGGLED))}\r\n${SMUGGLED}\r\n0\r\n\r\n`)] })
  cases.push({ name: 'chunk size line ended by bare LF', source: 'Funky', segments: [chunked(`5\nhello\r\n0\r\n\r\n${SMUGGLED}`)] })
  cases.push({ name: 'chunked with a valid extension', source: 'RFC9112 §7.1.1', segments: [chunked('5;name=value\r\nhello\r\n0\r\n\r\n')], forward: [{ method: 'POST', target: '/api/v1/charge', body: 'hello' }] })
  cases.push({ name: 'trailer carrying Content-Length', source: 'Kettle25', segments: [chunked(`5\r\nhello\r\n0\r\nContent-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`)] })

  // bare CR / LF line terminators, obs-fold [Wookiees] [Kettle25]
  cases.push({ name: 'request line ended by bare LF', source: 'Wookiees', segments: [`POST /api/v1/charge HTTP/1.1\n${HOST}Content-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  cases.push({ name: 'head ended by bare LFs', source: 'Wookiees', segments: [`${ALLOWED}${HOST}Content-Length: 0\n\n${SMUGGLED}`] })
  cases.push({ name: 'head ended by bare CRs', source: 'Wookiees', segments: [`${ALLOWED}${HOST}Content-Length: 0\r\r${SMUGGLED}`] })
  cases.push({ name: 'obs-fold hides TE in another field', source: 'Kettle25', segments: [`${ALLOWED}${HOST}X: a\r\n Transfer-Encoding: chunked\r\nContent-Length: ${len(`0\r\n\r\n${SMUGGLED}`)}\r\n\r\n0\r\n\r\n${SMUGGLED}`] })

  // Expect [Kettle25] [RFC 9110 §10.1.1]
  cases.push({ name: 'Expect 100-continue, body after the interim response', source: 'Kettle25', segments: [`${ALLOWED}${HOST}Expect: 100-continue\r\nContent-Length: 5\r\n\r\n`, 'hello'], forward: [{ method: 'POST', target: '/api/v1/charge', body: 'hello' }] })
  cases.push({ name: 'Expect 100-continue on a forbidden request, body is a request', source: 'Kettle25', segments: [`DELETE /api/v1/charge HTTP/1.1\r\n${HOST}Expect: 100-continue\r\nContent-Length: ${len(ADMIN)}\r\n\r\n`, ADMIN] })
  cases.push({ name: 'Expect with an unknown expectation', source: 'Kettle25, RFC9110 §10.1.1', refuse: 417, segments: [`${ALLOWED}${HOST}Expect: y-continue\r\nContent-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  cases.push({ name: 'Expect obs-folded', source: 'Kettle25', segments: [`${ALLOWED}${HOST}Expect:\r\n 100-continue\r\nContent-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })

  // 0.CL and CL.0 [Kettle22] [Kettle25]
  cases.push({ name: 'CL.0: allowed POST whose body is a request', source: 'Kettle22', segments: [cl(String(len(SMUGGLED)), SMUGGLED)], forward: [{ method: 'POST', target: '/api/v1/charge', body: SMUGGLED }] })
  cases.push({ name: 'CL.0: forbidden GET with a body', source: 'Kettle22', segments: [`GET /admin HTTP/1.1\r\n${HOST}Content-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  cases.push({ name: '0.CL: Content-Length the proxy might not see, body after a pause', source: 'Kettle25', segments: [`${ALLOWED}${HOST}Content-Length:\r\n ${len(SMUGGLED)}\r\n\r\n`, SMUGGLED] })
  cases.push({ name: 'Connection names Content-Length', source: 'RFC9110 §7.6.1', refuse: 400, segments: [`${ALLOWED}${HOST}Connection: Content-Length\r\nContent-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  cases.push({ name: 'Connection names Transfer-Encoding', source: 'RFC9110 §7.6.1', refuse: 400, segments: [`${ALLOWED}${HOST}Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n${hex(len(SMUGGLED))}\r\n${SMUGGLED}\r\n0\r\n\r\n`] })
  cases.push({ name: 'fields Connection lists are removed', source: 'RFC9110 §7.6.1', segments: [`${ALLOWED}${HOST}Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-End: 2\r\nContent-Length: 5\r\n\r\nhello`], forward: [{ method: 'POST', target: '/api/v1/charge', body: 'hello', headers: [['X-End', '2']], absent: ['x-hop'] }] })

  // pipelined requests split across reads
  cases.push({ name: 'pipelined: allowed then forbidden, one read', source: 'Linhart05', segments: [cl('5', 'hello') + SMUGGLED] })
  cases.push({ name: 'pipelined: split inside the body and inside the next head', source: 'Kettle22 (pause-based)', segments: [`${ALLOWED}${HOST}Content-Length: 10\r\n\r\nhel`, `lo12345DEL`, `ETE /api/v1/charge HTTP/1.1\r\n${HOST}Content-`, 'Length: 0\r\n\r\n'] })
  cases.push({ name: 'pipelined: split inside a header name and a CRLF', source: 'TReqs', segments: [`${ALLOWED}${HOST}Content-Le`, 'ngth: 5\r', '\n\r\nhello'], forward: [{ method: 'POST', target: '/api/v1/charge', body: 'hello' }] })
  cases.push({ name: 'pipelined: chunked split inside a size line, then forbidden', source: 'TReqs', segments: [chunked('1'), '0\r\n0123456789abcdef\r', '\n0\r\n\r\n', SMUGGLED] })
  cases.push({ name: 'pipelined: three allowed in one read', source: 'RFC9112 §9.3.2', segments: [cl('1', 'a') + cl('1', 'b') + cl('1', 'c')], forward: ['a', 'b', 'c'].map(b => ({ method: 'POST', target: '/api/v1/charge', body: b })) })

  // request line and Host [TReqs] [Probe] [RFC9112 §3.2]
  cases.push({ name: 'absolute-form target', source: 'TReqs', segments: [`POST http://billing-service/api/v1/charge HTTP/1.1\r\n${HOST}Content-Length: 5\r\n\r\nhello`] })
  cases.push({ name: 'absolute-form forbidden target', source: 'TReqs', segments: [`DELETE http://billing-service/api/v1/charge HTTP/1.1\r\n${HOST}Content-Length: 0\r\n\r\n`] })
  cases.push({ name: 'two Host fields', source: 'TReqs, RFC9112 §3.2', refuse: 400, segments: [`${ALLOWED}${HOST}Host: other\r\nContent-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  cases.push({ name: 'Host a, b', source: 'Probe, RFC9112 §3.2', refuse: 400, segments: [`${ALLOWED}Host: a, b\r\nContent-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  cases.push({ name: 'Host foo/bar', source: 'Probe, RFC9112 §3.2', refuse: 400, segments: [`${ALLOWED}Host: foo/bar\r\nContent-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  cases.push({ name: 'request line with two spaces', source: 'TReqs', segments: [`POST  /api/v1/charge HTTP/1.1\r\n${HOST}Content-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  cases.push({ name: 'request line with tabs', source: 'TReqs', segments: [`POST\t/api/v1/charge\tHTTP/1.1\r\n${HOST}Content-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  cases.push({ name: 'lower-case version', source: 'TReqs', segments: [`POST /api/v1/charge http/1.1\r\n${HOST}Content-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  cases.push({ name: 'HTTP/1.2', source: 'TReqs', segments: [`POST /api/v1/charge HTTP/1.2\r\n${HOST}Content-Length: ${len(SMUGGLED)}\r\n\r\n${SMUGGLED}`] })
  cases.push({ name: 'request line with a second version', source: 'TReqs', segments: [`POST /api/v1/charge HTTP/1.1 HTTP/1.1\r\n${HOST}Content-Length: 0\r\n\r\n`] })
  cases.push({ name: 'forbidden request, plain', source: 'baseline', segments: [SMUGGLED] })

  // HTTP/0.9 and 1.0 [TReqs] [Wookiees]
  cases.push({ name: 'HTTP/0.9 forbidden request', source: 'Wookiees, TReqs', segments: ['GET /admin\r\n\r\n'] })
  cases.push({ name: 'HTTP/0.9 line pipelined after an allowed request', source: 'Wookiees', segments: [cl('5', 'hello') + 'DELETE /api/v1/charge\r\n'] })
  cases.push({ name: 'HTTP/1.0 allowed request', source: 'TReqs', closes: true, segments: [`POST /api/v1/charge HTTP/1.0\r\n${HOST}Content-Length: 5\r\n\r\nhello`], forward: [{ method: 'POST', target: '/api/v1/charge', body: 'hello' }] })
  cases.push({ name: 'HTTP/1.0 keep-alive then forbidden', source: 'TReqs', segments: [`POST /api/v1/charge HTTP/1.0\r\n${HOST}Connection: keep-alive\r\nContent-Length: 5\r\n\r\nhello${SMUGGLED}`] })

  // heads with more than 32 fields, messages after trailers (the parser binding hands these over in batches)
  for (const n of [33, 64, 100]) {
    const fields: Array<[string, string]> = Array.from({ length: n - 2 }, (_, i) => [`X-Field-${i}`, `value-${i}`])
    const head = fields.map(([k, v]) => `${k}: ${v}\r\n`).join('')
    cases.push({ name: `${n} header fields`, source: 'warden regression (head fields handed over in batches)', segments: [`${ALLOWED}${HOST}${head}Content-Length: 5\r\n\r\nhello`], forward: [{ method: 'POST', target: '/api/v1/charge', body: 'hello', headers: fields }] })
  }
  cases.push({ name: 'pipelined request after a chunked request with trailers', source: 'warden regression (head fields handed over in batches)', segments: [chunked('5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other: d\r\n\r\n') + cl('5', 'world')],
    forward: [{ method: 'POST', target: '/api/v1/charge', body: 'hello' }, { method: 'POST', target: '/api/v1/charge', body: 'world' }] })
  return cases
}

export const CORPUS: Case[] = caseList()
