/**
 * `warden observe` filters, applied by the agent (so `--follow` sends only what is asked for).
 * A peer selector is one of: `namespace/name` (an endpoint), `namespace/` (its endpoints), an
 * IPv4 address, an identity number, `key=value` (a label, any source), or a bare endpoint name.
 */
import type { EventType, ObservedEvent, Peer } from './event.js'

export interface EventFilter {
  from?: string
  to?: string
  verdict?: string
  type?: EventType
  port?: number
}

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/
const TYPES: readonly string[] = ['l3l4', 'http', 'dns']

/** A filter from query parameters; throws a typed error on a malformed one. */
export function parseFilter (q: URLSearchParams): EventFilter {
  const f: EventFilter = {}
  const from = q.get('from')
  const to = q.get('to')
  const verdict = q.get('verdict')
  const type = q.get('type')
  const port = q.get('port')
  if (from !== null) f.from = selector(from, 'from')
  if (to !== null) f.to = selector(to, 'to')
  if (verdict !== null) f.verdict = selector(verdict, 'verdict')
  if (type !== null) {
    if (!TYPES.includes(type)) throw filterError(`type must be one of ${TYPES.join(', ')}, got "${type}"`)
    f.type = type as EventType
  }
  if (port !== null) {
    const n = Number(port)
    if (!/^\d{1,5}$/.test(port) || n > 65535) throw filterError(`port must be a number from 0 to 65535, got "${port}"`)
    f.port = n
  }
  return f
}

function selector (v: string, name: string): string {
  if (v.length === 0 || v.length > 256) throw filterError(`${name} must be 1 to 256 characters`)
  return v
}

function filterError (message: string): Error {
  return Object.assign(new Error(message), { code: 'WARDEN_ERR_API_FILTER' })
}

export function peerMatches (p: Peer, sel: string): boolean {
  if (IPV4.test(sel)) return p.ip === sel
  if (/^\d+$/.test(sel)) return p.identity === Number(sel)
  const eq = sel.indexOf('=')
  if (eq > 0) return p.labels.some((l) => l === sel || l.endsWith(':' + sel))
  if (p.endpoint === undefined) return false
  if (sel.endsWith('/')) return p.endpoint.startsWith(sel)
  if (sel.includes('/')) return p.endpoint === sel
  return p.endpoint.slice(p.endpoint.indexOf('/') + 1) === sel
}

export function matches (e: ObservedEvent, f: EventFilter): boolean {
  if (f.type !== undefined && e.type !== f.type) return false
  if (f.verdict !== undefined && e.verdict !== f.verdict) return false
  if (f.port !== undefined && e.source.port !== f.port && e.destination.port !== f.port) return false
  if (f.from !== undefined && !peerMatches(e.source, f.from)) return false
  if (f.to !== undefined && !peerMatches(e.destination, f.to)) return false
  return true
}
