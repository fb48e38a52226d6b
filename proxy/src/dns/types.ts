/** The DNS proxy's public types: what the agent injects and what it gets back. */
import type * as net from 'node:net'
import type { Logger } from 'pino'
import type { LearnedName, Snapshot } from '../../../policy-store/src/types.js'
import type { UdpBatchSocket } from '../udp-batch.js'
import type { DecisionSink } from '../decision.js'
import type { PersistedCache } from './cache.js'

export interface Addr { ip: string, port: number }

/** Everything the proxy needs from outside, injected so tests run without a kernel. */
export interface DnsProxyDeps {
  /** The current policy snapshot; read once per query. */
  snapshot (): Snapshot
  /** Identity of an IPv4 address from the ipcache (world when unknown). */
  lookupIdentity (ipv4: string): number
  /**
   * Original destination of a redirected UDP datagram. `received` is what the datagram itself
   * says (IP_ORIGDSTADDR on the listener; undefined when the socket does not ask): on a
   * transparent listener that is the answer. Undefined: no server, the query is dropped.
   */
  udpOriginalDestination (srcIp: string, srcPort: number, received: Addr | undefined): Addr | undefined
  /** Original destination of a redirected TCP connection; default: its local address/port. */
  tcpOriginalDestination? (socket: net.Socket): Addr
  /**
   * The socket that sends UDP answers FROM the server's address (production: a transparent
   * socket bound to it); default: the listening socket the query arrived on.
   */
  replySocket? (serverIp: string, serverPort: number): UdpBatchSocket
  /**
   * Receives the WHOLE current learned set; resolves when the kernel has it (the agent calls
   * store.setLearnedNames and applies the datapath diff). Answers that bring new IPs for a
   * name some toFQDNs selector matches are held until then, at most `holdMaxMs`.
   */
  learn (names: readonly LearnedName[]): Promise<void>
  /**
   * The address a query is forwarded from: the client's, so that the server sees and judges
   * the client (needs IP_TRANSPARENT and a datapath that hands the answers, addressed to the
   * client, to the proxy's socket; see upstreamSocketMark), or undefined for the node's
   * (default). Asked once per query.
   */
  upstreamSource? (clientIp: string, server: Addr): string | undefined
  /** Does connection tracking have a live connection to this IP? (expired IP -> zombie) */
  hasConnection (ipv4: string): boolean
  logger: Logger
  /** Each query's decision, for the agent's event ring (`warden observe`). */
  onDecision?: DecisionSink
}

export interface DnsProxyOptions {
  /** Floor of an IP's lifetime in seconds (Cilium --tofqdns-min-ttl). Default 0. */
  minTtlSec?: number
  /** Cap of an IP's lifetime in seconds. Default: none. */
  maxTtlSec?: number
  /** Per endpoint, per name (Cilium --tofqdns-endpoint-max-ip-per-hostname). Default 1000. */
  maxIpsPerName?: number
  /** Names with live IPs kept per endpoint; beyond, those expiring first are evicted. Default 10000. */
  maxNamesPerEndpoint?: number
  /** Zombies kept per endpoint (Cilium --tofqdns-max-deferred-connection-deletes). Default 10000. */
  maxZombiesPerEndpoint?: number
  /** Where the cache is persisted (`dns-cache.json`); no persistence when absent. */
  stateDir?: string
  /** Answer to a denied query. Default 'refused' (Cilium's default). */
  rejectCode?: 'refused' | 'nxdomain'
  /** An allowed query without an answer by then is dropped, no reply. Default 10000 (Cilium ~10 s). */
  upstreamTimeoutMs?: number
  /** Max time an answer is held for the kernel update. Default 100 (Cilium). */
  holdMaxMs?: number
  /** How often expiry and zombies are checked. Default 1000. */
  gcIntervalMs?: number
  /**
   * Every learned IP (a zombie too) is reported to learn() as expiring at least this long after
   * each push, a lease renewed at half-time; the proxy's own expiry removes it. Default 60000.
   */
  zombieGraceMs?: number
  /** Forwarded queries in flight, all transports. Beyond: SERVFAIL. Default 10000. */
  maxPending?: number
  /**
   * UDP sockets (random source ports) per upstream server, opened on its first query; per
   * client address and server when the client's address is kept (deps.upstreamSource). Default 8.
   */
  upstreamSockets?: number
  /** SO_MARK of the upstream sockets that keep a client's address (the datapath's proxy mark). Default 0. */
  upstreamSocketMark?: number
  /**
   * The port of the transparent listeners. A query whose original destination is that port
   * was sent to the proxy itself, not redirected (a host process, a scan): there is no server
   * to ask, and a reply socket bound there would take the port's traffic from the listener. It
   * is dropped, on both transports. Default: none.
   */
  proxyPort?: number
  /** Queries in flight per TCP connection; beyond, reading pauses. Default 32. */
  maxTcpPendingPerConnection?: number
  /** A TCP connection with nothing in flight is closed after this. Default 10000. */
  tcpIdleTimeoutMs?: number
  /** Clock (ms since the epoch); for tests. */
  now?: () => number
}

export interface DnsProxy {
  /** Serve queries arriving on this (transparent) UDP socket; the caller still owns (closes) it. */
  attachUdp (sock: UdpBatchSocket): void
  /** Serve one accepted (transparent) TCP connection; several queries per connection. */
  handleTcpConnection (socket: net.Socket): void
  /** The node-wide learned set, as last pushed (or about to be pushed) to `learn`. */
  learned (): LearnedName[]
  /** The FQDN cache per endpoint, zombies included (for `warden fqdn list`); a copy. */
  cache (): PersistedCache['entries']
  /** Counters (monotonic) and gauges. */
  metrics (): Record<string, number>
  /** Stop timers and sockets, persist the cache. Does not close attached listening sockets. */
  close (): Promise<void>
}
