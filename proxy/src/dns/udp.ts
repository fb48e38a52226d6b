/**
 * DNS over UDP: queries from attached (transparent) listening sockets, forwarded with random
 * IDs from a small pool of random-port sockets per server (RFC 5452). Each pool socket is
 * connect()ed to its server: the kernel then delivers only datagrams from that address and
 * port (anything else never reaches us), and a send needs neither an address lookup in Node
 * nor a route lookup in the kernel. An answer is accepted only with the ID of a query in flight
 * on that socket and the same question (and, checked again here, from the server's address);
 * anything else is counted and ignored, so a spoofed or late answer teaches nothing and does
 * not cancel the real one.
 *
 * Both sends of a query (upstream, and the reply to the client) go through udp-direct.ts, which
 * calls the socket's handle the way dgram would after its argument checks and dns.lookup.
 */
import * as dgram from 'node:dgram'
import type { DnsCore, Pending } from './proxy.js'
import { plainIpv4 } from './proxy.js'
import { RandomPool } from './ids.js'
import { directSender, type DirectSender } from '../udp-direct.js'
import { HEADER_LEN, MAX_MESSAGE, RCODE, errorReply, isResponse, sameQuestion } from './wire.js'
import type { Addr } from './types.js'

/** Servers with an open pool at most; beyond, an idle pool is closed or the query gets SERVFAIL. */
export const MAX_UPSTREAM_SERVERS = 64
/** A pool without queries in flight for this long is closed (its sockets are file descriptors). */
const IDLE_POOL_MS = 60_000

interface Upstream {
  sock: dgram.Socket
  /** Sends on the socket's handle (udp-direct.ts); null: dgram's send. */
  direct: DirectSender | null
  /** upstream ID -> query; insertion order = start order (used by sweep). */
  pending: Map<number, Pending>
  /** Queries that arrived before connect() finished; sent once it has. */
  waiting: Pending[] | null
}

/** The connected sockets to one server (address and port). */
interface ServerPool {
  ip: string
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
  /** Per reply socket: its DirectSender, or null where dgram's send must be used. */
  private readonly senders = new WeakMap<dgram.Socket, DirectSender | null>()
  private lastReplySock: dgram.Socket | null = null
  private lastSender: DirectSender | null = null

  constructor (private readonly core: DnsCore, private readonly socketsPerServer: number) {}

  /** Serve queries arriving on `listen`. */
  attach (listen: dgram.Socket): void {
    listen.on('message', (msg, rinfo) => this.onQuery(listen, msg, rinfo))
  }

  private onQuery (listen: dgram.Socket, msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const core = this.core
    const client: Addr = { ip: plainIpv4(rinfo.address), port: rinfo.port }
    const server = core.deps.udpOriginalDestination(client.ip, client.port)
    if (server === undefined) {
      // Without the original destination there is no server to ask nor address to answer from.
      core.counters.dropped++
      core.log.warn({ src: `${client.ip}:${client.port}`, transport: 'udp', verdict: 'dropped', reason: 'no-original-destination' }, 'dns query')
      return
    }
    const replyFrom = core.deps.replySocket?.(server.ip, server.port) ?? listen
    const direct = this.senderFor(replyFrom)
    // No send callbacks: Node tries a synchronous sendmsg (uv_udp_try_send) and allocates no
    // request unless the kernel says EAGAIN; a lost datagram is what UDP clients retry anyway.
    const reply = direct !== null
      ? (out: Buffer): void => { direct.sendTo(out, client.port, client.ip) }
      : (out: Buffer): void => { replyFrom.send(out, client.port, client.ip) }
    const p = core.admit(msg, client, server, 'udp', reply)
    if (p === null) return
    const pool = this.poolFor(server, p.started)
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
    up.pending.set(id, p)
    core.inFlight++
    core.counters.forwarded++
    if (up.waiting !== null) up.waiting.push(p); else if (up.direct !== null) up.direct.send(msg); else up.sock.send(msg)
  }

  /** The reply socket's DirectSender (made once per socket), null where dgram must send. */
  private senderFor (sock: dgram.Socket): DirectSender | null {
    if (sock === this.lastReplySock) return this.lastSender
    let s = this.senders.get(sock)
    if (s === undefined) { s = directSender(sock); this.senders.set(sock, s) }
    this.lastReplySock = sock
    this.lastSender = s
    return s
  }

  /** The pool for `server`, opened on first use; null when MAX_UPSTREAM_SERVERS are busy. */
  private poolFor (server: Addr, now: number): ServerPool | null {
    let pool = this.last
    if (pool === null || pool.port !== server.port || pool.ip !== server.ip) {
      const key = server.ip + ':' + server.port
      pool = this.pools.get(key) ?? null
      if (pool === null) {
        if (this.pools.size >= MAX_UPSTREAM_SERVERS && !this.closeIdlePool()) return null
        pool = this.openPool(server.ip, server.port, key)
      }
      this.last = pool
    }
    pool.lastUsed = now
    return pool
  }

  private openPool (ip: string, port: number, key: string): ServerPool {
    const pool: ServerPool = { ip, port, key, ups: [], lastUsed: 0 }
    for (let i = 0; i < this.socketsPerServer; i++) {
      const sock = dgram.createSocket({ type: 'udp4', recvBufferSize: 1 << 20 })
      const up: Upstream = { sock, direct: directSender(sock), pending: new Map(), waiting: [] }
      sock.on('message', (msg, rinfo) => this.onAnswer(pool, up, msg, rinfo))
      sock.on('error', err => this.onSocketError(pool, err))
      // connect() binds to a random port first; sends wait in `waiting` until it is done.
      sock.connect(port, ip, () => {
        const waiting = up.waiting ?? []
        up.waiting = null
        // Those swept meanwhile are gone from `pending`; their client has been told nothing.
        for (const p of waiting) if (up.pending.get(p.id) === p) sock.send(p.query)
      })
      pool.ups.push(up)
    }
    this.pools.set(key, pool)
    return pool
  }

  private onSocketError (pool: ServerPool, err: NodeJS.ErrnoException): void {
    // On a connected socket the kernel reports the server's ICMP errors (port unreachable):
    // the queries time out as they would unconnected; this is not the proxy's fault.
    if (err.code === 'ECONNREFUSED' || err.code === 'EHOSTUNREACH' || err.code === 'ENETUNREACH') {
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

  private onAnswer (pool: ServerPool, up: Upstream, msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const core = this.core
    if (msg.length < HEADER_LEN || msg.length > MAX_MESSAGE) { core.counters.spoofedAnswers++; return }
    const id = msg.readUInt16BE(0)
    const p = up.pending.get(id)
    // The socket is connected, so the source was checked by the kernel; checked again here
    // because it costs two compares and keeps this function correct on its own.
    if (p === undefined || rinfo.port !== pool.port || plainIpv4(rinfo.address) !== pool.ip ||
      !isResponse(msg) || !sameQuestion(p.query, p.q.end, msg)) {
      core.counters.spoofedAnswers++
      if (core.log.isLevelEnabled('debug')) core.log.debug({ from: `${rinfo.address}:${rinfo.port}`, id, known: p !== undefined }, 'dns: unmatched answer ignored')
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
