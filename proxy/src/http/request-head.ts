/**
 * From a request head as llhttp accepted it to the head the proxy forwards, or to a refusal.
 * Pure: no sockets, no policy, no clock. The connection asks the policy about the result
 * (method, normalised path, host, forwarded fields) and writes `head` upstream, so the upstream
 * gets exactly the message the policy judged.
 *
 * Framing is decided here, once. llhttp has already refused what it can tell is ambiguous
 * (Content-Length with a non-empty Transfer-Encoding, two Content-Length, a request
 * Transfer-Encoding not ending in `chunked`); what it lets through but a backend may read
 * differently is refused here (an empty Transfer-Encoding that llhttp ignores, `_` spellings of
 * framing fields that some servers fold into `-`, Transfer-Encoding on HTTP/1.0, a Connection
 * header that would strip a framing field). What is left has one reading, and the forwarded
 * head carries only the framing field written here: `Content-Length: <the number llhttp read>`
 * or `Transfer-Encoding: chunked`, never the client's bytes. The connection frames the body it
 * forwards by `framing` alone and checks that llhttp's body ends where that framing says.
 *
 * Fields the client's Connection header lists are hop-by-hop (RFC 9110 §7.6.1): removed, with
 * Connection, Keep-Alive and Proxy-Connection. The upstream connection's own options are the
 * proxy's: `Connection: upgrade` for an upgrade, `Connection: keep-alive` for an HTTP/1.0
 * client that asked for it.
 */
import { normalizeTarget } from './normalize.js'
import type { ReplyKind } from './replies.js'

/** A request head as llhttp parsed it (flat `[name, value, ...]` fields, as received). */
export interface ParsedRequestHead {
  major: number
  minor: number
  method: string
  url: string
  headers: string[]
  /** llhttp's verdict: an upgrade request (Connection: upgrade + Upgrade) or CONNECT. */
  upgrade: boolean
  /** llhttp's verdict: the client wants the connection kept after this exchange. */
  keepAlive: boolean
}

/** Why a request is answered locally and never forwarded. */
export interface Refusal {
  readonly status: ReplyKind
  readonly reason: string
}

/** How the forwarded body is framed. */
export const enum Framing { NONE, LENGTH, CHUNKED }

/** The forwardable request; one per connection, refilled for each request (stable shape). */
export class ForwardRequest {
  method = ''
  /** Normalised target (origin-form path and query, `*`, or the CONNECT authority). */
  path = ''
  /** The authority the request is for (Host, or the CONNECT/absolute-form target's). */
  host = ''
  /** The fields forwarded, as `[name, value, ...]` (what header rules are matched against). */
  headers: string[] = []
  framing: Framing = Framing.NONE
  /** Body length when framing is LENGTH. */
  length = 0
  upgrade = false
  keepAlive = true
  /** The request line and fields to write upstream, CRLFCRLF included. */
  head = ''
  /** `head` without the fields: the request line (and an added Host), and what follows them. */
  headStart = ''
  headEnd = ''

  get hasBody (): boolean { return this.framing === Framing.CHUNKED || this.length > 0 }
}

function refusal (status: ReplyKind, reason: string): Refusal { return Object.freeze({ status, reason }) }

export const REFUSE = {
  tooManyHeaders: refusal(431, 'too-many-headers'),
  http09: refusal(400, 'http-0.9'),
  httpVersion: refusal(505, 'http-version'),
  duplicateHost: refusal(400, 'duplicate-host'),
  missingHost: refusal(400, 'missing-host'),
  badHost: refusal(400, 'bad-host'),
  connectHostMismatch: refusal(400, 'connect-host-mismatch'),
  badTarget: refusal(400, 'bad-target'),
  absoluteFormHostMismatch: refusal(400, 'absolute-form-host-mismatch'),
  pathNotNormalizable: refusal(400, 'path-not-normalizable'),
  framingFieldUnderscore: refusal(400, 'framing-field-underscore'),
  emptyTransferEncoding: refusal(400, 'empty-transfer-encoding'),
  http10TransferEncoding: refusal(400, 'http-1.0-transfer-encoding'),
  transferCoding: refusal(501, 'transfer-coding-not-implemented'),
  badContentLength: refusal(400, 'bad-content-length'),
  connectionNamesFraming: refusal(400, 'connection-names-framing-field'),
  badConnection: refusal(400, 'bad-connection'),
  expectation: refusal(417, 'expectation-failed'),
  upgradeToHttp: refusal(400, 'upgrade-to-http')
} as const

const CRLF = '\r\n'
/** A Content-Length value as llhttp accepts it, short enough to be an exact number. */
const CONTENT_LENGTH = /^\d{1,15}$/
/**
 * A Host value: a bracketed IP literal or reg-name/IPv4 characters (RFC 3986 §3.2.2, without
 * `,` which joins list values), then an optional port. Anything else (`a, b`, `foo/bar`,
 * `user@host`) is refused (RFC 9112 §3.2: 400 for an invalid Host).
 */
const HOST = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+;=-]*)(?::\d{0,5})?$/
/** A Connection option: an RFC 9110 token. */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
/**
 * An Upgrade offer of HTTP itself (`h2c`, `h2`, `HTTP/2.0`, ...). After the 101 the connection
 * is a pipe this proxy no longer parses, so every request the client then sends on it (any
 * method, any path) would reach the backend unjudged ("h2c smuggling"). Envoy strips such
 * offers; here the request is refused, because llhttp has already taken it as an upgrade.
 */
const HTTP_UPGRADE = /(?:^|,)[ \t]*(?:h2c|h2|http)(?:\/[^,]*)?[ \t]*(?:,|$)/i

/**
 * Fill `out` with the canonical form of `req`, or return why it is refused (then `out` holds
 * whatever was filled so far: method and path for the access log).
 */
export function canonicalRequest (req: ParsedRequestHead, maxHeaders: number, out: ForwardRequest): Refusal | null {
  const { headers, method, url, minor } = req
  out.method = method
  out.path = url
  out.host = ''
  out.headers = headers
  out.framing = Framing.NONE
  out.length = 0
  out.upgrade = req.upgrade
  out.keepAlive = req.keepAlive
  out.head = ''
  out.headStart = ''
  out.headEnd = ''

  if (headers.length / 2 > maxHeaders) return REFUSE.tooManyHeaders
  // HTTP/0.9 (no version) is malformed here; a well-formed 2.x/1.2 request line is a version we do not speak.
  if (req.major === 0) return REFUSE.http09
  if (req.major !== 1 || (minor !== 0 && minor !== 1)) return REFUSE.httpVersion

  // One pass over the fields; names are told apart by length before any lower-casing.
  let hostCount = 0
  let host = ''
  let te = -1
  let cl = -1
  let connection = -1
  let hopByHop = false
  let expect: string | null = null
  for (let i = 0; i < headers.length; i += 2) {
    const n = headers[i]
    switch (n.length) {
      case 4:
        if (n.toLowerCase() === 'host') { host = headers[i + 1]; hostCount++ }
        break
      case 7:
        // Without llhttp's upgrade verdict, an Upgrade field could switch a lenient backend
        // to another protocol while this proxy still reads HTTP: not forwarded.
        if (n.toLowerCase() === 'upgrade') {
          if (!req.upgrade) hopByHop = true
          else if (HTTP_UPGRADE.test(headers[i + 1])) return REFUSE.upgradeToHttp
        }
        break
      case 6:
        if (n.toLowerCase() === 'expect') expect = expect === null ? headers[i + 1] : expect + ', ' + headers[i + 1]
        break
      case 10: {
        const l = n.toLowerCase()
        if (l === 'connection') { connection = connection === -1 ? i : -2; hopByHop = true } else if (l === 'keep-alive') hopByHop = true
        break
      }
      case 14: {
        const l = n.toLowerCase()
        if (l === 'content-length') cl = i // llhttp refused a second one
        else if (l === 'content_length') return REFUSE.framingFieldUnderscore
        break
      }
      case 16:
        if (n.toLowerCase() === 'proxy-connection') hopByHop = true
        break
      case 17: {
        const l = n.toLowerCase()
        if (l === 'transfer-encoding') {
          if (headers[i + 1] === '') return REFUSE.emptyTransferEncoding // llhttp ignores it; others would not
          if (te !== -1) return REFUSE.transferCoding
          te = i
        } else if (l === 'transfer_encoding') return REFUSE.framingFieldUnderscore
        break
      }
    }
  }
  if (hostCount > 1) return REFUSE.duplicateHost
  if (hostCount === 0 && minor === 1) return REFUSE.missingHost
  if (hostCount === 1 && !HOST.test(host)) return REFUSE.badHost

  // Framing (RFC 9112 §6): chunked, a length, or no body.
  if (te !== -1) {
    if (minor === 0) return REFUSE.http10TransferEncoding // RFC 9112 §6.1: a 1.0 message's framing is unreliable
    // llhttp requires `chunked` last; any coding before it is one we would forward undecoded.
    if (headers[te + 1].toLowerCase() !== 'chunked') return REFUSE.transferCoding
    out.framing = Framing.CHUNKED
  } else if (cl !== -1) {
    const v = headers[cl + 1]
    if (!CONTENT_LENGTH.test(v)) return REFUSE.badContentLength
    out.framing = Framing.LENGTH
    out.length = Number(v) // leading zeros are forwarded as the number llhttp read
  }

  if (expect !== null && expect.toLowerCase() !== '100-continue') return REFUSE.expectation

  // Connection options: each names a field to drop; never a framing field or Host.
  let dropped: string[] | null = null
  if (connection === -2) return REFUSE.badConnection
  if (connection !== -1) {
    const opts = headers[connection + 1].split(',')
    for (let k = 0; k < opts.length; k++) {
      const o = opts[k].trim().toLowerCase()
      if (o === '') continue
      if (!TOKEN.test(o)) return REFUSE.badConnection
      if (o === 'content-length' || o === 'transfer-encoding' || o === 'host') return REFUSE.connectionNamesFraming
      if (o === 'close' || o === 'keep-alive' || o === 'upgrade') continue // options, not field names (Upgrade is kept for an upgrade)
      if (dropped === null) dropped = []
      dropped.push(o)
    }
  }

  // Request target forms (RFC 9112 §3.2).
  let target = url
  let addHost = ''
  if (method === 'CONNECT') {
    // authority-form: the target is the authority; it is what `host` rules see.
    if (hostCount === 1 && host.toLowerCase() !== url.toLowerCase()) return REFUSE.connectHostMismatch
    host = url
  } else if (url.charCodeAt(0) !== 0x2f) {
    if (url === '*' && method === 'OPTIONS') {
      target = '*'
    } else {
      // absolute-form: accepted only when it names the same authority as Host (else a
      // backend that honours the target's authority could be steered to another host).
      const m = /^https?:\/\/([^/?#@]+)(.*)$/i.exec(url)
      if (m === null) return REFUSE.badTarget
      const authority = m[1]
      if (hostCount === 1 && host.toLowerCase() !== authority.toLowerCase()) return REFUSE.absoluteFormHostMismatch
      if (hostCount === 0) {
        if (!HOST.test(authority)) return REFUSE.badHost
        host = authority
        addHost = 'Host: ' + authority + CRLF
      }
      const rest = m[2]
      target = rest === '' ? '/' : rest.charCodeAt(0) === 0x3f ? '/' + rest : rest
    }
  }
  let path = target
  if (method !== 'CONNECT' && target !== '*') {
    const n = normalizeTarget(target)
    if (n === null) return REFUSE.pathNotNormalizable
    path = n
  }
  out.path = path
  out.host = host

  // The forwarded fields: as received, minus framing (rewritten below) and hop-by-hop fields.
  let fields = headers
  if (te !== -1 || cl !== -1 || hopByHop) {
    fields = []
    for (let i = 0; i < headers.length; i += 2) {
      const n = headers[i]
      const len = n.length
      if (len === 14 || len === 17 || len === 10 || len === 16 || len === 7 || dropped !== null) {
        const l = n.toLowerCase()
        if (l === 'content-length' || l === 'transfer-encoding' || l === 'connection' || l === 'keep-alive' ||
          l === 'proxy-connection' || (l === 'upgrade' && !req.upgrade) || (dropped !== null && dropped.includes(l))) continue
      }
      fields.push(n, headers[i + 1])
    }
  }
  out.headers = fields

  out.headStart = method + ' ' + path + (minor === 1 ? ' HTTP/1.1\r\n' : ' HTTP/1.0\r\n') + addHost
  let end = ''
  if (out.framing === Framing.CHUNKED) end += 'Transfer-Encoding: chunked\r\n'
  else if (out.framing === Framing.LENGTH) end += 'Content-Length: ' + String(out.length) + CRLF
  if (req.upgrade && method !== 'CONNECT') end += 'Connection: upgrade\r\n'
  else if (minor === 0 && req.keepAlive) end += 'Connection: keep-alive\r\n'
  out.headEnd = end + CRLF
  setFields(out, fields)
  return null
}

/**
 * Replace the forwarded fields (a policy's header actions) and render `head` again. The
 * framing and connection fields stay the ones written above: the policy store refuses actions
 * on them (validate.ts), so an edit cannot change how the body is read.
 */
export function setFields (out: ForwardRequest, fields: string[]): void {
  out.headers = fields
  let head = out.headStart
  for (let i = 0; i < fields.length; i += 2) head += fields[i] + ': ' + fields[i + 1] + CRLF
  out.head = head + out.headEnd
}
