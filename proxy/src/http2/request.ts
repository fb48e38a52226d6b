/**
 * From an HTTP/2 request's header block (as nghttp2 accepted it) to what the policy judges and
 * what goes upstream, or to a refusal. Pure: no sessions, no policy.
 *
 * nghttp2 has already refused what RFC 9113 §8.2-8.3 calls malformed (uppercase names,
 * connection-specific fields, a missing `:method`/`:scheme`/`:path`, pseudo-headers after
 * regular ones or twice, CR/LF/NUL in values) with RST_STREAM PROTOCOL_ERROR. Refused here,
 * with a 4xx as HTTP/1: a `:path` the normaliser will not take, `:authority` and `host` that
 * disagree, no authority at all, and CONNECT (a tunnel no rule would judge the contents of).
 * The path goes upstream normalised, as HTTP/1's does, so the upstream acts on exactly the
 * path the policy saw; the query is kept.
 */
import type { OutgoingHttpHeaders } from 'node:http2'
import { normalizeTarget } from '../http/normalize.js'
import type { RequestView } from '../http/policy.js'
import type { HeaderAction } from '../../../policy-store/src/types.js'

export interface H2Refusal { readonly status: number, readonly reason: string }

function refusal (status: number, reason: string): H2Refusal { return Object.freeze({ status, reason }) }

export const H2_REFUSE = {
  missingMethod: refusal(400, 'missing-method'),
  connect: refusal(501, 'h2-connect'),
  badTarget: refusal(400, 'bad-target'),
  pathNotNormalizable: refusal(400, 'path-not-normalizable'),
  missingHost: refusal(400, 'missing-host'),
  authorityHostMismatch: refusal(400, 'authority-host-mismatch'),
  duplicateHost: refusal(400, 'duplicate-host'),
  duplicateSingleField: refusal(400, 'duplicate-single-field')
} as const

/**
 * Fields node:http2 will only send once (its single-value list); a request carrying one twice
 * is refused rather than having one value silently chosen for the upstream.
 */
const SINGLE = new Set(['content-type', 'content-length', 'authorization', 'user-agent', 'referer', 'host',
  'if-modified-since', 'if-unmodified-since', 'from', 'location', 'max-forwards', 'retry-after', 'etag',
  'last-modified', 'server', 'age', 'expires', 'content-md5', 'content-location', 'content-range',
  'access-control-max-age', 'access-control-allow-credentials', 'proxy-authorization', 'range', 'dnt'])

/**
 * Fill `view` (method, normalised path, authority, regular fields) from the raw header list
 * `[name, value, ...]` and return the headers to send upstream, or a refusal.
 */
export function readH2Request (raw: readonly string[], view: RequestView): OutgoingHttpHeaders | H2Refusal {
  let method = ''
  let path = ''
  let authority: string | undefined
  let scheme = 'http'
  let host: string | undefined
  const fields: string[] = []
  const forward: OutgoingHttpHeaders = {}
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]
    const value = raw[i + 1]
    if (name.charCodeAt(0) === 0x3a) {
      if (name === ':method') method = value
      else if (name === ':path') path = value
      else if (name === ':authority') authority = value
      else if (name === ':scheme') scheme = value
      // :protocol (extended CONNECT) only comes with CONNECT, refused below
      continue
    }
    if (name === 'host') {
      if (host !== undefined) return H2_REFUSE.duplicateHost
      host = value
      continue // the authority goes upstream as :authority only
    }
    fields.push(name, value)
    const prev = forward[name]
    if (prev === undefined) forward[name] = value
    else if (SINGLE.has(name)) return H2_REFUSE.duplicateSingleField
    else if (Array.isArray(prev)) prev.push(value)
    else forward[name] = [prev as string, value]
  }
  if (method === '') return H2_REFUSE.missingMethod
  if (method === 'CONNECT') return H2_REFUSE.connect
  if (authority !== undefined && host !== undefined && authority !== host) return H2_REFUSE.authorityHostMismatch
  const auth = authority ?? host
  if (auth === undefined || auth === '') return H2_REFUSE.missingHost
  if (path.charCodeAt(0) !== 0x2f) return path === '*' && method === 'OPTIONS' ? fill(view, method, path, auth, fields, forward, scheme) : H2_REFUSE.badTarget
  const normalized = normalizeTarget(path)
  if (normalized === null) return H2_REFUSE.pathNotNormalizable
  return fill(view, method, normalized, auth, fields, forward, scheme)
}

function fill (view: RequestView, method: string, path: string, authority: string, fields: string[],
  forward: OutgoingHttpHeaders, scheme: string): OutgoingHttpHeaders {
  view.method = method
  view.path = path
  view.host = authority
  view.headers = fields
  forward[':method'] = method
  forward[':path'] = path
  forward[':authority'] = authority
  forward[':scheme'] = scheme
  return forward
}

export function isRefusal (r: OutgoingHttpHeaders | H2Refusal): r is H2Refusal {
  return typeof (r as H2Refusal).reason === 'string' && typeof (r as H2Refusal).status === 'number' && (r as OutgoingHttpHeaders)[':method'] === undefined
}

/**
 * A matching rule's `headerMatches` mismatch actions on the headers forwarded upstream, as the
 * HTTP/1 path applies them (http/header-actions.ts): LOG changes nothing, ADD appends a value,
 * DELETE removes the field, REPLACE sets it to one value. Names are lower-case already (the
 * policy compiler refuses actions on fields the proxy writes itself).
 */
export function applyH2HeaderActions (headers: OutgoingHttpHeaders, actions: readonly HeaderAction[]): void {
  for (const a of actions) {
    if (a.mismatch === 'LOG') continue
    const name = a.name.toLowerCase()
    if (a.mismatch === 'DELETE') { delete headers[name]; continue }
    const value = a.value ?? ''
    const prev = headers[name]
    if (a.mismatch === 'REPLACE' || prev === undefined) headers[name] = value
    else if (Array.isArray(prev)) prev.push(value)
    else headers[name] = [String(prev), value]
  }
}
