/**
 * Types shared by the proxy's modules: dependencies, options and the per-process context each
 * connection reads (options, pool, prebuilt replies, counters, logger).
 */
import type net from 'node:net'
import type pino from 'pino'
import type { Snapshot } from '../../../policy-store/src/types.js'
import type { DecisionSink } from '../decision.js'
import type { Replies } from './replies.js'
import type { LineWriter } from '../log-line.js'
import type { UpstreamPool } from './upstream.js'
import type { H2ConnInfo } from '../http2/index.js'

/** What the proxy needs from the agent (injected so tests run without a kernel). */
export interface HttpProxyDeps {
  /** The current policy; read once per request, at headers-complete. */
  snapshot (): Snapshot
  /** Identity of an IPv4 address (the ipcache); called once per connection for each side. 0 = unknown (treated as world). */
  lookupIdentity (ipv4: string): number
  /** Where the client meant to go. Default: the accepted socket's local address and port. */
  originalDestination? (socket: net.Socket): { ip: string, port: number }
  /**
   * The address to dial for an original destination (once per connection). Default: the
   * destination itself. Policy, identities and logs always use the original destination; this
   * only changes where the bytes go (tests point it at a local backend on an ephemeral port).
   */
  upstreamAddress? (dst: { ip: string, port: number }): { ip: string, port: number }
  /**
   * The address the upstream connection leaves from (once per connection): the client's, so
   * that the destination sees and judges the client, or undefined for the node's (default).
   * Keeping it takes IP_TRANSPARENT and a datapath that hands the replies, addressed to the
   * client, to the proxy's socket: the agent keeps it where its programs see those replies.
   */
  upstreamSource? (clientIp: string, dst: { ip: string, port: number }): string | undefined
  logger: pino.Logger
  /** Each exchange's decision, for the agent's event ring (`warden observe`). */
  onDecision?: DecisionSink
}

export interface HttpProxyOptions {
  /** `403` (default): Cilium's 403 reply; `reset`: TCP RST. */
  denyResponse: '403' | 'reset'
  /** Body of the 403, without the CRLF we append (Cilium's --http-403-msg). Default `Access denied`. */
  deny403Body?: string
  /** Request line plus headers, in bytes (431 beyond). Default 16384. */
  maxHeaderBytes?: number
  /** Header fields per request (431 beyond). Default 100. */
  maxHeaders?: number
  /** From a request's first byte to the end of its head. Default 10000. */
  headersTimeoutMs?: number
  /** Quiet keep-alive connection between requests. Default 60000. */
  idleTimeoutMs?: number
  /** Longest gap between body bytes of a request. Default 30000. */
  bodyTimeoutMs?: number
  /** Client connections handled at once; more are reset at accept. Default 10000. */
  maxConnections?: number
  /**
   * Of those, the connections one client address may hold (HTTP/1 and HTTP/2 together); more
   * from it are reset at accept while other addresses still connect. Default an eighth of
   * maxConnections (at least 1); at most maxConnections.
   */
  maxConnectionsPerSource?: number
  /** Default 2000 (Cilium's --proxy-connect-timeout). */
  upstreamConnectTimeoutMs?: number
  /**
   * From the end of a forwarded request to the upstream's final response head; then 504 and
   * both connections closed. Default 3600000 (1 h): Cilium's --http-request-timeout (Envoy's
   * route timeout, which there bounds the whole response), so nothing that works behind Cilium
   * times out behind warden. Memory is bounded by maxConnections, not by this; lower it to
   * free stuck exchanges sooner.
   */
  upstreamResponseTimeoutMs?: number
  /** Idle keep-alive upstream connections kept per destination. Default 64. */
  upstreamPoolSize?: number
  /** Idle keep-alive upstream connections kept in all; past it the one idle longest is closed. Default 4096. */
  upstreamMaxIdle?: number
  /** Idle upstream connections are closed after this. Default 60000 (Cilium's --proxy-idle-timeout-seconds). */
  upstreamIdleTimeoutMs?: number
  /**
   * SO_MARK for upstream connections once connected; 0 (default) sets none. The agent passes
   * the datapath's proxy mark, so that their segments skip conntrack on the workload's veth
   * (redirect-bpf/bpf/l7p.h, L7P_MARK_PROXY). Best effort: without it they take the full path.
   */
  upstreamSocketMark?: number
  /** Proxy connections that open with the HTTP/2 preface as HTTP/2 (h2c). Default true. */
  http2?: boolean
  /** SETTINGS_MAX_CONCURRENT_STREAMS per client connection. Default 100. */
  h2MaxConcurrentStreams?: number
  /** SETTINGS_MAX_HEADER_LIST_SIZE: a stream's decoded header list, in bytes (RFC 9113's count). Default 16384. */
  h2MaxHeaderListSize?: number
  /** SETTINGS_HEADER_TABLE_SIZE: the HPACK dynamic table a client may use toward us. Default 4096. */
  h2HeaderTableSize?: number
  /** SETTINGS_INITIAL_WINDOW_SIZE on both sides: what a peer may send per stream before we read. Default 65535. */
  h2InitialWindowSize?: number
  /** A stream with no frame either way for this long is reset (CANCEL). Default 300000 (Envoy's stream_idle_timeout). */
  h2StreamIdleTimeoutMs?: number
  /** A connection with no frame for this long gets GOAWAY. Default 60000 (as the HTTP/1 idle timeout). */
  h2IdleTimeoutMs?: number
  /** Streams a client may reset in one second before GOAWAY ENHANCE_YOUR_CALM (rapid reset). Default 200. */
  h2MaxResetsPerSecond?: number
  /** SETTINGS frames a client may send in one second before GOAWAY ENHANCE_YOUR_CALM. Default 100. */
  h2MaxSettingsPerSecond?: number
  /**
   * HTTP/2 sessions to backends open at once (one per destination, source address and source
   * identity); past it the session idle longest is closed, or with none idle the stream gets
   * 503. Default 1024.
   */
  h2MaxUpstreamSessions?: number
  /**
   * Of those, the sessions one client address may have opened and still hold; past it the
   * client's own session idle longest is closed, or with none idle its stream gets 503. Default
   * an eighth of h2MaxUpstreamSessions (at least 1); at most h2MaxUpstreamSessions.
   */
  h2MaxUpstreamSessionsPerSource?: number
  /** node:http2's maxSessionMemory per client connection, in MB. Default 10. */
  h2MaxSessionMemoryMb?: number
}

export type ResolvedOptions = Required<HttpProxyOptions>

/** The HTTP and HTTP/2 limits `warden run` has flags for (the agent passes them to every worker). */
export type Http2Limits = Partial<Pick<HttpProxyOptions, 'maxConnectionsPerSource' | 'h2MaxConcurrentStreams' | 'h2MaxHeaderListSize' | 'h2HeaderTableSize' |
'h2InitialWindowSize' | 'h2StreamIdleTimeoutMs' | 'h2IdleTimeoutMs' | 'h2MaxResetsPerSecond' | 'h2MaxSettingsPerSecond' |
'h2MaxUpstreamSessions' | 'h2MaxUpstreamSessionsPerSource'>>

export const DEFAULTS: Omit<ResolvedOptions, 'denyResponse' | 'maxConnectionsPerSource' | 'h2MaxUpstreamSessionsPerSource'> = {
  deny403Body: 'Access denied',
  maxHeaderBytes: 16384,
  maxHeaders: 100,
  headersTimeoutMs: 10_000,
  idleTimeoutMs: 60_000,
  bodyTimeoutMs: 30_000,
  maxConnections: 10_000,
  upstreamConnectTimeoutMs: 2_000,
  upstreamResponseTimeoutMs: 3_600_000,
  upstreamPoolSize: 64,
  upstreamMaxIdle: 4096,
  upstreamIdleTimeoutMs: 60_000,
  upstreamSocketMark: 0,
  http2: true,
  h2MaxConcurrentStreams: 100,
  h2MaxHeaderListSize: 16384,
  h2HeaderTableSize: 4096,
  h2InitialWindowSize: 65535,
  h2StreamIdleTimeoutMs: 300_000,
  h2IdleTimeoutMs: 60_000,
  h2MaxResetsPerSecond: 200,
  h2MaxSettingsPerSecond: 100,
  h2MaxUpstreamSessions: 1024,
  h2MaxSessionMemoryMb: 10
}

/** Values of the HTTP proxy's `metrics()` that go up and down (the rest only grow). */
export const HTTP_GAUGES = ['connections_active', 'upstream_open', 'upstream_idle', 'write_pending_bytes',
  'h2_connections_active', 'h2_upstream_sessions'] as const

/** Counters; flat numbers so that `metrics()` is a cheap copy. */
export class Counters {
  requests = 0
  allowed = 0
  denied_no_l7_table = 0
  denied_ingress_no_rule_match = 0
  denied_egress_no_rule_match = 0
  /** Requests policy would deny, forwarded because the deciding endpoint audits. */
  audited = 0
  rejected_bad_request = 0
  rejected_header_too_large = 0
  rejected_timeout = 0
  connections_total = 0
  connections_active = 0
  connections_refused = 0
  /** Connections reset at accept because their client address held its share (maxConnectionsPerSource). */
  connections_refused_source = 0
  upstream_errors_connect = 0
  upstream_errors_connect_timeout = 0
  upstream_errors_reset = 0
  upstream_errors_bad_response = 0
  upstream_errors_response_timeout = 0
  upstream_retries = 0
  // HTTP/2 (the counters above are HTTP/1's): connections, streams and their outcomes.
  h2_connections_total = 0
  h2_connections_active = 0
  h2_requests = 0
  h2_allowed = 0
  h2_denied = 0
  h2_rejected = 0
  h2_client_resets = 0
  h2_goaway_calm = 0
  h2_session_errors = 0
  h2_upstream_errors_connect = 0
  h2_upstream_errors_reset = 0
  h2_upstream_errors_bad_response = 0
  h2_upstream_sessions_full = 0
  h2_upstream_sessions_source_full = 0
}

export interface ProxyContext {
  readonly deps: HttpProxyDeps
  readonly opts: ResolvedOptions
  readonly pool: UpstreamPool
  readonly replies: Replies
  readonly counters: Counters
  readonly log: pino.Logger
  /** The access-line writer (proxy/src/log-line.ts), or null when the logger needs pino's own path (mixin, hooks, formatters). */
  readonly lines: LineWriter | null
  /** The HTTP/2 side, or null when HTTP/2 is off. */
  readonly h2: { adopt (socket: net.Socket, info: H2ConnInfo): void } | null
  /** A client connection is gone (socket closed). */
  onClosed (conn: object): void
}
