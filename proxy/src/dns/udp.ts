/**
 * DNS over UDP: queries from attached (transparent) listening sockets, forwarded with random
 * IDs from a small pool of random-port sockets per server (RFC 5452). Each pool socket is
 * connect()ed to its server: the kernel then delivers only datagrams from that address and
 * port (anything else never reaches us), and a send needs no route lookup in the kernel. An
 * answer is accepted only with the ID of a query in flight on that socket and the same question
 * (and, checked again here, from the server's address); anything else is counted and ignored,
 * so a spoofed or late answer teaches nothing and does not cancel the real one.
 *
 * Every socket here is a UdpBatchSocket (udp-batch.ts): read with recvmmsg, many datagrams per
 * call, into an area reused by the next read. So a query is copied before it becomes a Pending,
 * and an answer is sent on before the handler returns (the core copies one it holds).
 */
import type { DnsCore } from './proxy.js'
import { RandomPool } from './ids.js'
import { connectUdp, ipv4Num, type Datagram, type UdpBatchSocket, UdpSocketError } from '../udp-batch.js'
import { HEADER_LEN, RCODE, errorReply, isResponse, sameQuestion } from './wire.js'
import type { Addr } from './types.js'
import type { Pending } from './proxy.js'

/** Servers with an open pool at most; beyond, an idle pool is closed or the query gets SERVFAIL. */
export const MAX_UPSTREAM_SERVERS = 64
/** A pool without queries in flight for this long is closed (its sockets are file descriptors). */
const IDLE_POOL_MS = 60_000
/** Receive queue of each upstream socket: a burst of answers waits here, not in the server's retries. */
const UPSTREAM_RCVBUF = 1 << 20

// errno of ICMP errors a connected socket reports: the server is not there (not our fault).
const ECONNREFUSED = 111
const ENETUNREACH = 101
const EHOSTUNREACH = 113

interface Upstream {
  sock: UdpBatchSocket
  /** upstream ID -> query; insertion order = start order (used by sweep). */
  pending: Map<number, Pending>
}

/** The connected sockets to one server (address and port), from one source ('' = the node's). */
interface ServerPool {
  source: string
  ip: string
  ipNum: number
  port: number
  key: string
  ups: Upstream[]
  lastUsed: number
}

export class UdpForwarder {
  private readonly pools = new Map<string, ServerPool>()
  /** The pool of the previous query: most queries go to the same server (kube-dns). */
  private last: ServerPool | null = null
  private readonly rnd = new RandomPool()

  constructor (private readonly core: DnsCore, private readonly socketsPerServer: number) {}

  /** Serve queries arriving on `listen`. */
  attach (listen: UdpBatchSocket): void {
    listen.startReading(d => this.onQuery(listen, d), err => {
      this.core.log.error({ err, socket: listen.label }, 'dns: udp listener error')
    })
  }

  private onQuery (listen: UdpBatchSocket, d: Datagram): void {
    const core = this.core
    const client: Addr = { ip: d.srcIp, port: d.srcPort }
    const server = core.deps.udpOriginalDestination(client.ip, client.port, d.dstPort === 0 ? undefined : { ip: d.dstIp, port: d.dstPort })
    if (server === undefined || server.port === core.opts.proxyPort) {
      // Without the original destination there is no server to ask nor address to answer from.
      core.counters.dropped++
      core.log.warn({ src: `${client.ip}:${client.port}`, transport: 'udp', verdict: 'dropped', reason: 'no-original-destination' }, 'dns query')
      return
    }
    const replyFrom = core.deps.replySocket?.(server.ip, server.port) ?? listen
    const clientNum = d.srcIpNum
    const clientPort = d.srcPort
    // A lost reply is what UDP clients retry anyway; it is counted.
    const reply = (out: Buffer): void => { if (!replyFrom.sendTo(out, clientNum, clientPort)) core.counters.sendErrors++ }
    // The bytes are the receive area's until this returns; the Pending keeps its own copy.
    const msg = Buffer.allocUnsafe(d.data.length)
    d.data.copy(msg)
    const p = core.admit(msg, client, server, 'udp', reply)
    if (p === null) return
    const pool = this.poolFor(server, core.deps.upstreamSource?.(client.ip, server) ?? '', p.started)
    if (pool === null) { core.counters.overload++; reply(errorReply(msg, p.q.end, RCODE.SERVFAIL)); return }
    // Pick a socket at random, then an ID free on it.
    const up = pool.ups[this.rnd.u16() % pool.ups.length]
    let id = this.rnd.u16()
    for (let tries = 0; up.pending.has(id); tries++) {
      if (tries > 16) { core.counters.overload++; reply(errorReply(msg, p.q.end, RCODE.SERVFAIL)); return }
      id = this.rnd.u16()
    }
    p.id = id
    msg.writeUInt16BE(id, 0)
    // The kernel may refuse once with an error an earlier ICMP message left on the socket (the
    // call clears it): try again. Refused twice (a full buffer): SERVFAIL now, rather than
    // holding the query until the upstream timeout.
    if (!up.sock.send(msg) && !up.sock.send(msg)) {
      core.counters.sendErrors++
      reply(errorReply(msg, p.q.end, RCODE.SERVFAIL))
      return
    }
    up.pending.set(id, p)
    core.inFlight++
    core.counters.forwarded++
  }

  /**
   * The pool for `server` from `source` ('' = the node's address), opened on first use; null
   * when MAX_UPSTREAM_SERVERS are busy. A pool that keeps a client's address serves that
   * client's address only.
   */
  private poolFor (server: Addr, source: string, now: number): ServerPool | null {
    let pool = this.last
    if (pool === null || pool.port !== server.port || pool.ip !== server.ip || pool.source !== source) {
      const key = source === '' ? server.ip + ':' + server.port : source + '>' + server.ip + ':' + server.port
      pool = this.pools.get(key) ?? null
      if (pool === null) {
        if (this.pools.size >= MAX_UPSTREAM_SERVERS && !this.closeIdlePool()) return null
        pool = this.openPool(server.ip, server.port, key, source)
        if (pool === null) return null
      }
      this.last = pool
    }
    pool.lastUsed = now
    return pool
  }

  /** The pool's sockets, connected at once (UDP connect only binds and sets the peer); null when that fails. */
  private openPool (ip: string, port: number, key: string, source: string): ServerPool | null {
    const pool: ServerPool = { source, ip, ipNum: ipv4Num(ip), port, key, ups: [], lastUsed: 0 }
    const from = source === '' ? undefined : { ip: source, mark: this.core.opts.upstreamSocketMark }
    try {
      for (let i = 0; i < this.socketsPerServer; i++) {
        const up: Upstream = { sock: null as unknown as UdpBatchSocket, pending: new Map() }
        up.sock = connectUdp(ip, port, UPSTREAM_RCVBUF, {
          onDatagram: d => this.onAnswer(pool, up, d),
          onError: err => this.onSocketError(pool, err)
        }, from)
        pool.ups.push(up)
      }
    } catch (err) {
      for (const up of pool.ups) up.sock.close()
      this.core.counters.upstreamErrors++
      this.core.log.error({ err, server: key }, 'dns: cannot open upstream udp sockets')
      return null
    }
    this.pools.set(key, pool)
    return pool
  }

  private onSocketError (pool: ServerPool, err: unknown): void {
    // On a connected socket the kernel reports the server's ICMP errors (port unreachable):
    // the queries time out as they would unconnected; this is not the proxy's fault.
    if (err instanceof UdpSocketError && (err.errno === ECONNREFUSED || err.errno === EHOSTUNREACH || err.errno === ENETUNREACH)) {
      this.core.counters.upstreamErrors++
      if (this.core.log.isLevelEnabled('debug')) this.core.log.debug({ err, server: pool.key }, 'dns: upstream udp error')
      return
    }
    this.core.log.error({ err, server: pool.key }, 'dns: upstream udp socket error')
  }

  /** Close the least recently used pool without queries in flight; false if there is none. */
  private closeIdlePool (): boolean {
    let victim: ServerPool | null = null
    for (const pool of this.pools.values()) {
      if (pool.ups.every(u => u.pending.size === 0) && (victim === null || pool.lastUsed < victim.lastUsed)) victim = pool
    }
    if (victim === null) return false
    this.closePool(victim)
    return true
  }

  private closePool (pool: ServerPool): void {
    for (const up of pool.ups) {
      this.core.inFlight -= up.pending.size
      up.pending.clear()
      up.sock.close()
    }
    this.pools.delete(pool.key)
    if (this.last === pool) this.last = null
  }

  private onAnswer (pool: ServerPool, up: Upstream, d: Datagram): void {
    const core = this.core
    const msg = d.data
    if (msg.length < HEADER_LEN) { core.counters.spoofedAnswers++; return }
    const id = msg.readUInt16BE(0)
    const p = up.pending.get(id)
    // The socket is connected, so the source was checked by the kernel; checked again here
    // because it costs two compares and keeps this function correct on its own.
    if (p === undefined || d.srcPort !== pool.port || d.srcIpNum !== pool.ipNum ||
      !isResponse(msg) || !sameQuestion(p.query, p.q.end, msg)) {
      core.counters.spoofedAnswers++
      if (core.log.isLevelEnabled('debug')) core.log.debug({ from: `${d.srcIp}:${d.srcPort}`, id, known: p !== undefined }, 'dns: unmatched answer ignored')
      return
    }
    // A malformed answer may come from a spoofer that guessed right: keep waiting for the real one.
    if (!core.complete(p, msg)) return
    up.pending.delete(id)
    core.inFlight--
  }

  /**
   * Drop queries older than `timeoutMs` (oldest first; each map is in start order), and close
   * pools that have been idle for IDLE_POOL_MS.
   */
  sweep (now: number, timeoutMs: number): void {
    for (const pool of this.pools.values()) {
      let busy = false
      for (const up of pool.ups) {
        for (const [id, p] of up.pending) {
          if (now - p.started < timeoutMs) break
          up.pending.delete(id)
          this.core.inFlight--
          this.core.timeout(p)
        }
        if (up.pending.size > 0) busy = true
      }
      if (!busy && now - pool.lastUsed >= IDLE_POOL_MS) this.closePool(pool)
    }
  }

  pendingCount (): number {
    let n = 0
    for (const pool of this.pools.values()) for (const up of pool.ups) n += up.pending.size
    return n
  }

  close (): void {
    for (const pool of [...this.pools.values()]) this.closePool(pool)
  }
}
