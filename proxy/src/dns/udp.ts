/**
 * DNS over UDP: queries from attached (transparent) listening sockets, forwarded from a small
 * pool of upstream sockets with random source ports and random IDs (RFC 5452). An answer is
 * accepted only from the server the query went to (address and port), with the ID of a query
 * in flight on that socket and the same question; anything else is counted and ignored, so a
 * spoofed or late answer teaches nothing and does not cancel the real one.
 */
import * as dgram from 'node:dgram'
import { once } from 'node:events'
import type { DnsCore, Pending } from './proxy.js'
import { plainIpv4 } from './proxy.js'
import { RandomPool } from './ids.js'
import { HEADER_LEN, MAX_MESSAGE, RCODE, errorReply, isResponse, sameQuestion } from './wire.js'
import type { Addr } from './types.js'

interface Upstream {
  sock: dgram.Socket
  /** upstream ID -> query; insertion order = start order (used by sweep). */
  pending: Map<number, Pending>
}

export class UdpForwarder {
  private readonly ups: Upstream[] = []
  private readonly rnd = new RandomPool()

  constructor (private readonly core: DnsCore) {}

  async open (count: number): Promise<void> {
    for (let i = 0; i < count; i++) {
      const sock = dgram.createSocket({ type: 'udp4', recvBufferSize: 1 << 20 })
      const up: Upstream = { sock, pending: new Map() }
      sock.on('message', (msg, rinfo) => this.onAnswer(up, msg, rinfo))
      sock.on('error', err => this.core.log.error({ err }, 'dns: upstream udp socket error'))
      sock.bind(0, '0.0.0.0')
      await once(sock, 'listening')
      this.ups.push(up)
    }
  }

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
    // No send callbacks: without one Node tries a synchronous sendmsg (uv_udp_try_send) and
    // allocates no request; a lost datagram is what UDP clients retry anyway.
    const reply = (out: Buffer): void => { replyFrom.send(out, client.port, client.ip) }
    const p = core.admit(msg, client, server, 'udp', reply)
    if (p === null) return
    // Pick a socket at random, then an ID free on it.
    const up = this.ups[this.rnd.u16() % this.ups.length]
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
    up.sock.send(msg, server.port, server.ip)
  }

  private onAnswer (up: Upstream, msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const core = this.core
    if (msg.length < HEADER_LEN || msg.length > MAX_MESSAGE) { core.counters.spoofedAnswers++; return }
    const id = msg.readUInt16BE(0)
    const p = up.pending.get(id)
    if (p === undefined || plainIpv4(rinfo.address) !== p.server.ip || rinfo.port !== p.server.port ||
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

  /** Drop queries older than `timeoutMs` (oldest first; each map is in start order). */
  sweep (now: number, timeoutMs: number): void {
    for (const up of this.ups) {
      for (const [id, p] of up.pending) {
        if (now - p.started < timeoutMs) break
        up.pending.delete(id)
        this.core.inFlight--
        this.core.timeout(p)
      }
    }
  }

  pendingCount (): number {
    let n = 0
    for (const up of this.ups) n += up.pending.size
    return n
  }

  close (): void {
    for (const up of this.ups) {
      this.core.inFlight -= up.pending.size
      up.pending.clear()
      up.sock.close()
    }
    this.ups.length = 0
  }
}
