/**
 * HTTP/2 fixtures for the proxy tests (loopback, no kernel): an h2c backend built on
 * node:http2 that records each stream, and a node:http2 client bound to one of the fixture's
 * source addresses (test/helpers/http-proxy.ts) so the proxy resolves its identity.
 */
import http2, { type ClientHttp2Session, type IncomingHttpHeaders, type OutgoingHttpHeaders, type ServerHttp2Stream } from 'node:http2'
import net from 'node:net'
import type { Tap } from './http-proxy.js'

export interface H2Backend {
  port: number
  /** Streams received: pseudo-headers and fields as the backend saw them, and the body. */
  streams: Array<{ headers: IncomingHttpHeaders, body: Buffer }>
  /** Streams that the proxy reset (rstCode non-zero at close). */
  resets: number[]
  server: http2.Http2Server
}

export type H2Handler = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, body: Buffer) => void

/** Default: 200 with `backend saw METHOD PATH`, after reading the whole request body. */
export async function startH2Backend (t: Tap, handler?: H2Handler, streaming?: (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => void): Promise<H2Backend> {
  const b: H2Backend = { port: 0, streams: [], resets: [], server: http2.createServer() }
  const sessions = new Set<http2.ServerHttp2Session>()
  b.server.on('session', (s) => { sessions.add(s); s.on('close', () => sessions.delete(s)) })
  b.server.on('stream', (stream, headers) => {
    stream.on('error', () => {})
    stream.on('close', () => { if (stream.rstCode !== 0) b.resets.push(stream.rstCode) })
    if (streaming !== undefined) { streaming(stream, headers); return }
    const chunks: Buffer[] = []
    stream.on('data', (d: Buffer) => chunks.push(d))
    stream.on('end', () => {
      const body = Buffer.concat(chunks)
      b.streams.push({ headers, body })
      if (handler !== undefined) { handler(stream, headers, body); return }
      if (stream.closed) return
      stream.respond({ ':status': 200, 'content-type': 'text/plain' })
      stream.end(`backend saw ${String(headers[':method'])} ${String(headers[':path'])}`)
    })
  })
  await new Promise<void>(resolve => b.server.listen(0, '127.0.0.1', resolve))
  b.port = (b.server.address() as net.AddressInfo).port
  t.teardown(async () => {
    for (const s of sessions) s.destroy()
    await new Promise<void>(resolve => b.server.close(() => resolve()))
  })
  return b
}

/** A node:http2 client session to the proxy from `localAddress`. */
export function h2Client (t: Tap, port: number, localAddress: string, settings: http2.Settings = {}): ClientHttp2Session {
  const c = http2.connect(`http://billing:${port}`, {
    createConnection: () => net.connect({ host: '127.0.0.1', port, localAddress }),
    settings
  })
  c.on('error', () => {})
  t.teardown(() => { c.destroy() })
  return c
}

export interface H2Response {
  status: number
  headers: IncomingHttpHeaders
  trailers: IncomingHttpHeaders | null
  body: Buffer
  /** RST_STREAM code at close (0: closed cleanly). */
  rstCode: number
}

/** One request; resolves when the stream closes, whatever the ending. */
export async function h2Request (c: ClientHttp2Session, headers: OutgoingHttpHeaders, body?: Buffer | string): Promise<H2Response> {
  return await new Promise((resolve) => {
    const req = c.request({ ':authority': 'billing:8080', ...headers }, { endStream: body === undefined })
    const out: H2Response = { status: 0, headers: {}, trailers: null, body: Buffer.alloc(0), rstCode: 0 }
    const chunks: Buffer[] = []
    req.on('error', () => {})
    req.on('response', (h) => { out.status = Number(h[':status']); out.headers = h })
    req.on('trailers', (h: IncomingHttpHeaders) => { out.trailers = h })
    req.on('data', (d: Buffer) => chunks.push(d))
    req.on('close', () => { out.body = Buffer.concat(chunks); out.rstCode = req.rstCode ?? 0; resolve(out) })
    if (body !== undefined) req.end(body)
  })
}

/** A stream left open by its backend: its first data, and its status once it closes. */
export interface HeldStream { first: Promise<string>, done: Promise<number> }

/** GET `path` from billing on `c`, read as it comes; `extra` headers (e.g. one the backend holds streams on). */
export function heldGet (c: ClientHttp2Session, path: string, extra: OutgoingHttpHeaders = {}): HeldStream {
  const req = c.request({ ':authority': 'billing:8080', ':method': 'GET', ':path': path, ...extra })
  req.on('error', () => {})
  let status = 0
  req.on('response', (h) => { status = Number(h[':status']) })
  const first = new Promise<string>((resolve) => { req.once('data', (d: Buffer) => resolve(d.toString())); req.once('close', () => resolve('')) })
  const done = new Promise<number>((resolve) => { req.on('close', () => resolve(status)) })
  req.resume()
  return { first, done }
}
