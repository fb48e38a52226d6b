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
  /** Idle upstream connections are closed after this. Default 60000 (Cilium's --proxy-idle-timeout-seconds). */
  upstreamIdleTimeoutMs?: number
  /**
   * SO_MARK for upstream connections once connected; 0 (default) sets none. The agent passes
   * the datapath's proxy mark, so that their segments skip conntrack on the workload's veth
   * (redirect-bpf/bpf/l7p.h, L7P_MARK_PROXY). Best effort: without it they take the full path.
   */
  upstreamSocketMark?: number
}

export type ResolvedOptions = Required<HttpProxyOptions>

export const DEFAULTS: Omit<ResolvedOptions, 'denyResponse'> = {
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
  upstreamIdleTimeoutMs: 60_000,
  upstreamSocketMark: 0
}

/** Values of the HTTP proxy's `metrics()` that go up and down (the rest only grow). */
export const HTTP_GAUGES = ['connections_active', 'upstream_open', 'upstream_idle', 'write_pending_bytes'] as const

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
  upstream_errors_connect = 0
  upstream_errors_connect_timeout = 0
  upstream_errors_reset = 0
  upstream_errors_bad_response = 0
  upstream_errors_response_timeout = 0
  upstream_retries = 0
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
  /** A client connection is gone (socket closed). */
  onClosed (conn: object): void
}
