/**
 * warden's HTTP/2 proxy (h2c, prior knowledge, as gRPC clients speak it) on the same port as
 * the HTTP/1 proxy: the HTTP/1 connection hands over a socket whose first bytes are the
 * HTTP/2 preface (http/connection.ts), with its policy and destinations already resolved.
 * node:http2 (nghttp2) is the engine on both sides; each stream is decided by the same rule
 * matching and path normalisation as an HTTP/1 request and logged with the same line.
 */
import http2, { type ServerHttp2Session } from 'node:http2'
import type net from 'node:net'
import type { ProxyContext, ResolvedOptions } from '../http/context.js'
import { H2Conn, type H2ConnInfo } from './connection.js'
import { H2UpstreamPool } from './upstream.js'

export type { H2ConnInfo } from './connection.js'

export interface H2Proxy {
  /** Take over a socket (its preface bytes replayed by the socket itself). */
  adopt (socket: net.Socket, info: H2ConnInfo): void
  /** HTTP/2 client connections open. */
  readonly size: number
  readonly upstreamSessions: number
  close (): void
}

/** The settings the proxy announces to clients, from the options. */
export function serverSettings (o: ResolvedOptions): http2.Settings {
  return {
    maxConcurrentStreams: o.h2MaxConcurrentStreams,
    maxHeaderListSize: o.h2MaxHeaderListSize,
    headerTableSize: o.h2HeaderTableSize,
    initialWindowSize: o.h2InitialWindowSize,
    enablePush: false
  }
}

export function createH2Proxy (ctx: ProxyContext): H2Proxy {
  const o = ctx.opts
  const pool = new H2UpstreamPool({
    connectTimeoutMs: o.upstreamConnectTimeoutMs,
    idleTimeoutMs: o.upstreamIdleTimeoutMs,
    maxSessions: o.h2MaxUpstreamSessions,
    maxSessionsPerSource: o.h2MaxUpstreamSessionsPerSource,
    mark: o.upstreamSocketMark,
    initialWindowSize: o.h2InitialWindowSize,
    maxHeaderListSize: o.h2MaxHeaderListSize
  })
  // Never listens: it only turns sockets into server sessions ('connection' below).
  const server = http2.createServer({
    settings: serverSettings(o),
    // Header fields per request, as HTTP/1's maxHeaders, plus the four pseudo-headers.
    maxHeaderListPairs: o.maxHeaders + 4,
    // A session's buffered frames and HPACK state; past it new streams are refused.
    maxSessionMemory: o.h2MaxSessionMemoryMb,
    // Streams refused (over the concurrency limit) and invalid frames a client may cause
    // before GOAWAY ENHANCE_YOUR_CALM.
    maxSessionRejectedStreams: 100,
    maxSessionInvalidFrames: 100
  })
  const conns = new Set<H2Conn>()
  let pending: ServerHttp2Session | null = null
  server.on('session', (s: ServerHttp2Session) => { pending = s })
  return {
    adopt (socket: net.Socket, info: H2ConnInfo): void {
      pending = null
      try {
        server.emit('connection', socket)
        const session = pending as ServerHttp2Session | null
        pending = null
        if (session === null) { socket.destroy(); return }
        conns.add(new H2Conn(ctx, session, info, pool, (c) => { conns.delete(c) }))
      } catch (err) {
        ctx.log.error({ err }, 'http2: cannot take connection')
        socket.destroy()
      }
    },
    get size (): number { return conns.size },
    get upstreamSessions (): number { return pool.size },
    close (): void {
      for (const c of conns) c.destroy()
      pool.closeAll()
    }
  }
}
