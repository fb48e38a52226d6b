/**
 * warden's L7 HTTP proxy: the Envoy replacement. The agent accepts connections on the
 * transparent listener and hands each socket to `handleConnection`; the proxy parses request
 * heads with llhttp, decides each request against the current `Snapshot`, forwards allowed ones
 * over pooled keep-alive upstream connections and answers denied ones like Cilium (403 or RST).
 *
 * Listener requirement: create it with `SERVER_OPTIONS` (reads.ts): `allowHalfOpen`, so that a
 * client that half-closes after sending its requests still gets every response, and
 * `pauseOnConnect`, so that the proxy can re-open each socket with reads into its own buffer.
 */
import { fastLineOk, LineWriter } from '../log-line.js'
import { ClientConn, stripMapped } from './connection.js'
import { Counters, DEFAULTS, type HttpProxyDeps, type HttpProxyOptions, type ProxyContext, type ResolvedOptions } from './context.js'
import { RESERVED } from '../../../policy-store/src/types.js'
import { Replies } from './replies.js'
import { SourceShare } from './source-share.js'
import { UpstreamPool } from './upstream.js'
import { writeStats } from './writes.js'
import { createH2Proxy, type H2Proxy } from '../http2/index.js'
import type net from 'node:net'

export type { Http2Limits, HttpProxyDeps, HttpProxyOptions } from './context.js'
export { normalizeTarget } from './normalize.js'
export { HTTP_GAUGES } from './context.js'
export { SERVER_OPTIONS } from './reads.js'

export interface HttpProxy {
  /** Take over an accepted client socket (original destination = its local address by default). */
  handleConnection (socket: net.Socket): void
  /**
   * Counters: `requests`, `allowed`, `denied_<reason>` (no_l7_table, ingress_no_rule_match,
   * egress_no_rule_match), `rejected_<kind>`, `upstream_errors_<kind>`, `connections_active`,
   * `connections_total`, `connections_refused`, `connections_refused_source`, `upstream_open`, `upstream_idle`, `write_pending_bytes`
   * (bytes the proxy holds for peers that read slowly; process-wide); HTTP/2's as `h2_<name>`
   * (context.ts, Counters), `h2_upstream_sessions`.
   */
  metrics (): Record<string, number>
  /** Stop timers and close every client and upstream connection. */
  close (): Promise<void>
}

export function createHttpProxy (deps: HttpProxyDeps, options: HttpProxyOptions): HttpProxy {
  const given = stripUndefined(options)
  const maxSessions = given.h2MaxUpstreamSessions ?? DEFAULTS.h2MaxUpstreamSessions
  const maxConnections = given.maxConnections ?? DEFAULTS.maxConnections
  const opts: ResolvedOptions = {
    ...DEFAULTS,
    // One client address's share of the connections: an eighth unless said, so that one pod
    // holding its share leaves the rest to every other tenant on the node.
    maxConnectionsPerSource: Math.max(1, Math.floor(maxConnections / 8)),
    // One client's share of the HTTP/2 upstream sessions: an eighth unless said, so that one
    // client holding its share leaves the rest of the pool to the others.
    h2MaxUpstreamSessionsPerSource: Math.max(1, Math.floor(maxSessions / 8)),
    ...given,
    denyResponse: options.denyResponse ?? '403'
  }
  if (opts.denyResponse !== '403' && opts.denyResponse !== 'reset') {
    throw Object.assign(new Error(`denyResponse must be '403' or 'reset', got ${String(opts.denyResponse)}`), { code: 'WARDEN_ERR_HTTP_OPTIONS' })
  }
  const share = opts.h2MaxUpstreamSessionsPerSource
  if (!Number.isInteger(share) || share < 1 || share > opts.h2MaxUpstreamSessions) {
    throw Object.assign(new Error(`h2MaxUpstreamSessionsPerSource must be a whole number from 1 to h2MaxUpstreamSessions (${opts.h2MaxUpstreamSessions}), got ${String(share)}`),
      { code: 'WARDEN_ERR_HTTP_OPTIONS' })
  }
  const perSource = opts.maxConnectionsPerSource
  if (!Number.isInteger(perSource) || perSource < 1 || perSource > opts.maxConnections) {
    throw Object.assign(new Error(`maxConnectionsPerSource must be a whole number from 1 to maxConnections (${opts.maxConnections}), got ${String(perSource)}`),
      { code: 'WARDEN_ERR_HTTP_OPTIONS' })
  }
  const shares = new SourceShare(perSource)
  const conns = new Set<ClientConn>()
  const counters = new Counters()
  const pool = new UpstreamPool(opts.upstreamPoolSize, opts.upstreamConnectTimeoutMs, opts.maxHeaderBytes, opts.upstreamIdleTimeoutMs, opts.upstreamSocketMark,
    opts.upstreamMaxIdle)
  let h2: H2Proxy | null = null
  const ctx: ProxyContext = {
    // A connection handed to HTTP/2 keeps its client's share until that socket, the last of the
    // connection's (reads.ts re-opens the descriptor at each step), closes.
    h2: opts.http2
      ? {
          adopt: (s, info) => {
            s.once('close', () => { shares.release(info.policy.srcIp) })
            h2?.adopt(s, info)
          }
        }
      : null,
    deps,
    opts,
    pool,
    replies: new Replies(opts.deny403Body),
    counters,
    log: deps.logger,
    lines: fastLineOk(deps.logger) ? new LineWriter(deps.logger) : null,
    onClosed: (c) => {
      const conn = c as ClientConn
      conns.delete(conn)
      if (!conn.handedToH2) shares.release(conn.policy.srcIp)
    }
  }

  if (opts.http2) h2 = createH2Proxy(ctx)

  // One sweeper for every deadline (headers, body, idle, pooled upstreams): a slowloris client
  // cannot hold a socket, and no timer is created or re-armed per request.
  const shortest = Math.min(opts.headersTimeoutMs, opts.bodyTimeoutMs, opts.idleTimeoutMs, opts.upstreamIdleTimeoutMs, opts.upstreamResponseTimeoutMs)
  const period = Math.max(10, Math.min(1000, Math.floor(shortest / 4)))
  const sweeper = setInterval(() => {
    const now = Date.now()
    for (const c of conns) {
      if (c.deadline !== 0 && now >= c.deadline) c.onDeadline()
      if (c.responseDeadline !== 0 && now >= c.responseDeadline) c.onResponseTimeout()
    }
    pool.sweep(now)
  }, period)
  sweeper.unref()

  function logSourceRefused (src: string): void {
    deps.logger.warn({ code: 'WARDEN_ERR_HTTP_SOURCE_SHARE', src, srcIdentity: deps.lookupIdentity(src) || RESERVED.WORLD, held: shares.count(src), limit: perSource },
      'http proxy: client address holds its share of connections; new ones are reset at accept (logged at most once per interval per address)')
  }

  return {
    handleConnection (socket: net.Socket): void {
      counters.connections_total++
      if (conns.size + (h2?.size ?? 0) >= opts.maxConnections) {
        counters.connections_refused++
        socket.resetAndDestroy()
        return
      }
      const src = stripMapped(socket.remoteAddress)
      if (!shares.take(src)) {
        counters.connections_refused_source++
        if (shares.shouldLog(src, Date.now())) logSourceRefused(src)
        socket.resetAndDestroy()
        return
      }
      counters.connections_active++
      try {
        conns.add(new ClientConn(socket, ctx))
      } catch (err) {
        counters.connections_active--
        shares.release(src)
        deps.logger.error({ err }, 'http proxy: cannot take connection')
        socket.destroy()
      }
    },
    metrics (): Record<string, number> {
      return {
        ...counters,
        upstream_open: pool.openCount,
        upstream_idle: pool.idleCount,
        write_pending_bytes: writeStats.pendingBytes,
        h2_upstream_sessions: h2?.upstreamSessions ?? 0
      }
    },
    // Everything here is torn down synchronously; the promise is the interface's.
    close (): Promise<void> {
      clearInterval(sweeper)
      for (const c of conns) c.destroy()
      pool.closeAll()
      h2?.close()
      return Promise.resolve()
    }
  }
}

function stripUndefined<T extends object> (o: T): Partial<T> {
  const out: Partial<T> = {}
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v
  return out
}
