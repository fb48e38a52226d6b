/**
 * DNS over TCP (RFC 7766): one accepted client connection carries any number of 2-byte
 * length-prefixed queries, possibly pipelined; answers may come back in any order. Each client
 * connection gets its own upstream connection to the original server, opened on the first
 * allowed query, with fresh IDs; an answer must carry the ID of a query in flight on it and
 * the same question. Bounded: messages are at most 65535 bytes by framing, queries in flight
 * per connection are capped (reading pauses), a client that does not read its answers is cut
 * off, and an idle connection is closed.
 */
import * as net from 'node:net'
import type { DnsCore, Pending } from './proxy.js'
import { plainIpv4 } from './proxy.js'
import { RandomPool } from './ids.js'
import { HEADER_LEN, RCODE, errorReply, isResponse, sameQuestion } from './wire.js'
import type { Addr } from './types.js'
import { transparentUpstreamFd } from '../transparent.js'

/** Answers buffered for a client that does not read, before the connection is dropped. */
const MAX_CLIENT_BACKLOG = 1 << 20

/** Splits a byte stream into length-prefixed messages. */
class Framer {
  private buf: Buffer | null = null

  /** Feed bytes; `onMessage` gets each complete message (a view, valid until the next push). */
  push (chunk: Buffer, onMessage: (msg: Buffer) => void): void {
    let b = this.buf === null ? chunk : Buffer.concat([this.buf, chunk])
    let off = 0
    while (b.length - off >= 2) {
      const len = b.readUInt16BE(off)
      if (b.length - off - 2 < len) break
      onMessage(b.subarray(off + 2, off + 2 + len))
      off += 2 + len
    }
    b = b.subarray(off)
    // Copy the (< 64 KiB) rest so one small leftover does not pin a big chunk.
    this.buf = b.length === 0 ? null : Buffer.from(b)
  }
}

function frame (msg: Buffer): Buffer {
  const out = Buffer.allocUnsafe(msg.length + 2)
  out.writeUInt16BE(msg.length, 0)
  msg.copy(out, 2)
  return out
}

export class TcpConnection {
  readonly pending = new Map<number, Pending>()
  private readonly framer = new Framer()
  private upstream: net.Socket | null = null
  private upFramer = new Framer()
  private closed = false
  private paused = false

  constructor (
    private readonly core: DnsCore,
    private readonly socket: net.Socket,
    private readonly client: Addr,
    private readonly server: Addr,
    private readonly rnd: RandomPool,
    private readonly onClose: (c: TcpConnection) => void
  ) {
    socket.on('data', chunk => this.framer.push(chunk, msg => this.onQuery(Buffer.from(msg))))
    socket.on('error', err => { if (core.log.isLevelEnabled('debug')) core.log.debug({ err }, 'dns: tcp client error') })
    socket.on('close', () => this.close())
    // 'timeout' fires once per idle period: with queries in flight, arm it again (they end by
    // answer or by the upstream timeout), so a silent connection is always closed eventually.
    socket.on('timeout', () => { if (this.pending.size === 0) socket.destroy(); else socket.setTimeout(core.opts.tcpIdleTimeoutMs) })
    socket.setTimeout(core.opts.tcpIdleTimeoutMs)
  }

  private send (msg: Buffer): void {
    if (this.closed) return
    this.socket.write(frame(msg))
    if (this.socket.writableLength > MAX_CLIENT_BACKLOG) this.socket.destroy()
  }

  private onQuery (msg: Buffer): void {
    if (this.closed) return
    const p = this.core.admit(msg, this.client, this.server, 'tcp', out => this.send(out))
    if (p === null) return
    let id = this.rnd.u16()
    while (this.pending.has(id)) id = this.rnd.u16() // at most maxTcpPendingPerConnection are taken
    p.id = id
    msg.writeUInt16BE(id, 0)
    this.pending.set(id, p)
    this.core.inFlight++
    this.core.counters.forwarded++
    this.ensureUpstream().write(frame(msg))
    if (this.pending.size >= this.core.opts.maxTcpPendingPerConnection && !this.paused) {
      this.paused = true
      this.socket.pause()
    }
  }

  private ensureUpstream (): net.Socket {
    if (this.upstream !== null) return this.upstream
    const up = this.connectUpstream()
    this.upFramer = new Framer()
    up.on('data', chunk => this.upFramer.push(chunk, msg => this.onAnswer(up, Buffer.from(msg))))
    up.on('error', err => {
      this.core.counters.upstreamErrors++
      this.core.log.warn({ err, server: `${this.server.ip}:${this.server.port}` }, 'dns: tcp upstream error')
    })
    up.on('close', () => {
      if (this.upstream === up) this.upstream = null
      this.failPending()
    })
    this.upstream = up
    return up
  }

  /** To the server, from the client's address when deps.upstreamSource keeps it. */
  private connectUpstream (): net.Socket {
    const { ip, port } = this.server
    const source = this.core.deps.upstreamSource?.(this.client.ip, this.server)
    if (source === undefined) return net.connect({ host: ip, port })
    let fd: number
    try {
      fd = transparentUpstreamFd(source, this.core.opts.upstreamSocketMark)
    } catch (err) {
      // not from the node's address instead: the server would judge another identity
      const failed = new net.Socket()
      process.nextTick(() => failed.destroy(err as Error))
      return failed
    }
    return new net.Socket({ fd, readable: true, writable: true }).connect({ host: ip, port })
  }

  private onAnswer (up: net.Socket, msg: Buffer): void {
    if (up !== this.upstream) return
    const p = msg.length >= HEADER_LEN ? this.pending.get(msg.readUInt16BE(0)) : undefined
    if (p === undefined || !isResponse(msg) || !sameQuestion(p.query, p.q.end, msg)) {
      this.core.counters.spoofedAnswers++
      return
    }
    this.finish(p)
    // On a connection only the server can answer: a malformed answer fails the query.
    if (!this.core.complete(p, msg)) this.sendServfail(p)
  }

  private finish (p: Pending): void {
    this.pending.delete(p.id)
    this.core.inFlight--
    if (this.paused && this.pending.size < this.core.opts.maxTcpPendingPerConnection) {
      this.paused = false
      this.socket.resume()
    }
  }

  private sendServfail (p: Pending): void {
    const out = errorReply(p.query, p.q.end, RCODE.SERVFAIL)
    out.writeUInt16BE(p.clientId, 0)
    this.send(out)
  }

  /** The upstream connection ended: queries still in flight get SERVFAIL. */
  private failPending (): void {
    for (const p of [...this.pending.values()]) {
      this.finish(p)
      this.core.timeout(p, 'upstream-closed')
      this.sendServfail(p)
    }
  }

  sweep (now: number, timeoutMs: number): void {
    for (const p of this.pending.values()) {
      if (now - p.started < timeoutMs) break
      this.finish(p)
      this.core.timeout(p)
    }
  }

  close (): void {
    if (this.closed) return
    this.closed = true
    this.core.inFlight -= this.pending.size
    this.pending.clear()
    this.upstream?.destroy()
    this.upstream = null
    this.socket.destroy()
    this.onClose(this)
  }
}

/** Accept a connection: the client is the peer, the server its original destination. */
export function clientAndServer (core: DnsCore, socket: net.Socket): { client: Addr, server: Addr } | null {
  const orig = core.deps.tcpOriginalDestination?.(socket) ??
    (socket.localAddress === undefined || socket.localPort === undefined ? undefined : { ip: plainIpv4(socket.localAddress), port: socket.localPort })
  if (orig === undefined || socket.remoteAddress === undefined || socket.remotePort === undefined) return null
  return { client: { ip: plainIpv4(socket.remoteAddress), port: socket.remotePort }, server: orig }
}
