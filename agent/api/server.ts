/**
 * The agent's local API: read-only JSON over HTTP/1.1 on a unix socket (`--api-socket`), for the
 * `warden status`, `... list`, `policy selected` and `observe` commands. Off the hot path:
 * node:http, one request at a time per operator.
 *
 *   GET /v1/status                     GET /v1/identities
 *   GET /v1/endpoints                  GET /v1/fqdn
 *   GET /v1/policy/selected?endpoint=namespace/name
 *   GET /v1/events?last=N[&follow=1][&from=&to=&verdict=&type=&port=]
 *
 * /v1/events answers newline-delimited JSON (one event a line), chunked; with follow=1 it stays
 * open and streams. A follower that does not read is cut off once FOLLOW_MAX_BUFFERED bytes wait
 * for it: the agent's memory never depends on how fast a client reads.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { EventRing } from '../observe/ring.js'
import { matches, parseFilter } from '../observe/filter.js'
import { listenUnix } from './socket.js'
import { endpointsReport, fqdnReport, identitiesReport, selectedReport, statusReport, type ReportSources } from './reports.js'

export interface ApiHandlers {
  status (): unknown
  endpoints (): unknown
  identities (): unknown
  fqdn (): unknown
  /** null: no such endpoint */
  selected (endpoint: string): unknown
  ring: EventRing
}

/** Bytes queued for a `follow` client before it is cut off. */
const FOLLOW_MAX_BUFFERED = 1 << 20
/** `last` at most (the ring is smaller anyway). */
const MAX_LAST = 1_000_000

/** The API over the agent's parts (reports.ts builds each answer). */
export async function serveApi (path: string, sources: ReportSources, onError: (err: Error) => void): Promise<ApiServer> {
  return await startApi(path, {
    status: () => statusReport(sources),
    endpoints: () => endpointsReport(sources),
    identities: () => identitiesReport(sources),
    fqdn: () => fqdnReport(sources),
    selected: (ep) => selectedReport(sources, ep),
    ring: sources.ring
  }, onError)
}

export interface ApiServer {
  readonly path: string
  close (): Promise<void>
}

export async function startApi (path: string, h: ApiHandlers, onError: (err: Error) => void): Promise<ApiServer> {
  const followers = new Set<ServerResponse>()
  const srv: Server = createServer((req, res) => {
    try {
      route(req, res, h, followers)
    } catch (err) {
      const e = err as Error & { code?: string }
      if (e.code === 'WARDEN_ERR_API_FILTER') { reply(res, 400, { error: e.message, code: e.code }); return }
      onError(e)
      reply(res, 500, { error: 'internal error', code: 'WARDEN_ERR_API_INTERNAL' })
    }
  })
  // bounded: a handful of operators, requests of one line
  srv.maxHeadersCount = 32
  srv.headersTimeout = 10_000
  srv.requestTimeout = 10_000
  await listenUnix(srv, path)
  return {
    path,
    async close (): Promise<void> {
      for (const r of followers) r.destroy()
      await new Promise<void>((resolve) => srv.close(() => resolve()))
    }
  }
}

function reply (res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body) + '\n'
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

function route (req: IncomingMessage, res: ServerResponse, h: ApiHandlers, followers: Set<ServerResponse>): void {
  if (req.method !== 'GET') { reply(res, 405, { error: 'read-only API: GET only', code: 'WARDEN_ERR_API_METHOD' }); return }
  const url = new URL(req.url ?? '/', 'http://warden')
  switch (url.pathname) {
    case '/v1/status': reply(res, 200, h.status()); return
    case '/v1/endpoints': reply(res, 200, h.endpoints()); return
    case '/v1/identities': reply(res, 200, h.identities()); return
    case '/v1/fqdn': reply(res, 200, h.fqdn()); return
    case '/v1/policy/selected': {
      const ep = url.searchParams.get('endpoint') ?? ''
      const body = ep === '' ? null : h.selected(ep)
      if (body === null) reply(res, 404, { error: ep === '' ? 'endpoint=namespace/name is required' : `no endpoint ${ep} on this node`, code: 'WARDEN_ERR_API_NO_ENDPOINT' })
      else reply(res, 200, body)
      return
    }
    case '/v1/events': events(url.searchParams, res, h.ring, followers); return
    default: reply(res, 404, { error: `no such resource ${url.pathname}`, code: 'WARDEN_ERR_API_NOT_FOUND' })
  }
}

function events (q: URLSearchParams, res: ServerResponse, ring: EventRing, followers: Set<ServerResponse>): void {
  const filter = parseFilter(q)
  const lastText = q.get('last')
  const follow = q.get('follow') === '1'
  let last = follow ? 0 : ring.capacity
  if (lastText !== null) {
    if (!/^\d{1,7}$/.test(lastText) || Number(lastText) > MAX_LAST) throw Object.assign(new Error(`last must be a number from 0 to ${MAX_LAST}, got "${lastText}"`), { code: 'WARDEN_ERR_API_FILTER' })
    last = Number(lastText)
  }
  res.writeHead(200, { 'content-type': 'application/x-ndjson' })
  const keep = (e: Parameters<typeof matches>[0]): boolean => matches(e, filter)
  let text = ''
  for (const e of ring.last(last, keep)) text += JSON.stringify(e) + '\n'
  if (!follow) { res.end(text); return }
  if (text !== '') res.write(text)
  else res.flushHeaders()
  followers.add(res)
  const stop = ring.subscribe((e) => {
    if (!keep(e)) return
    if (res.writableLength > FOLLOW_MAX_BUFFERED) { res.destroy(); return }
    res.write(JSON.stringify(e) + '\n')
  })
  res.on('close', () => { stop(); followers.delete(res) })
}
