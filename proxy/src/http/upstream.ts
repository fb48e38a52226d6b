/**
 * Upstream connections and their pool. One upstream connection serves one exchange at a time
 * (the client side holds pipelined requests back, so responses can never be mismatched);
 * between exchanges it sits in a bounded idle list per destination (and source address, when the
 * connection keeps its client's), reused by any client with that key. The idle lists are bounded
 * in all too, the connection idle longest making room: otherwise a client allowed to reach many
 * destinations could leave a full list behind for each, and make the proxy hold sockets without
 * limit (an idle connection is only a saved handshake: closing one never refuses anybody).
 *
 * Responses are framed with llhttp: the head is forwarded as received (from its status line to
 * the first CRLFCRLF, which the strict parser guarantees is the head's end), a Content-Length or
 * EOF-framed body as the raw bytes llhttp accepted, a chunked body re-chunked from what llhttp
 * delivered. So the client gets exactly the message llhttp parsed, never bytes past its end (a
 * server sending extra bytes is dropped). Head and identity body bytes of one read go to the
 * client as ONE subarray write: bench/micro/response-write.ts measured a corked head + body
 * writev about 10% dearer per response than a single write.
 */
import net from 'node:net'
import { connect, keep, relay } from './reads.js'
import { SocketWriter } from './writes.js'
import { setSocketMark, socketFd } from '../libc.js'
import { transparentUpstreamFd } from '../transparent.js'
import { PAUSE, Parser, SKIP_BODY, UPGRADE, type ParserHandler, type ParseError } from './llhttp.js'

const CRLFCRLF = Buffer.from('\r\n\r\n', 'latin1')
const LAST_CHUNK = Buffer.from('0\r\n\r\n', 'latin1')
const CRLF = Buffer.from('\r\n', 'latin1')
/** A Content-Length this module frames itself (at most 15 digits: an exact double). */
const DIGITS = /^\d{1,15}$/

/** The first byte at or after `from` that is not CR or LF. */
function skipEmptyLines (buf: Buffer, from: number): number {
  while (from < buf.length && (buf[from] === 0x0d || buf[from] === 0x0a)) from++
  return from
}

export type UpstreamErrorKind = 'connect' | 'connect-timeout' | 'reset' | 'bad-response'

/**
 * Implemented by the client connection that currently owns the upstream connection. No
 * sockets cross this interface: backpressure is explicit both ways. The upstream connection
 * calls onUpstreamDrain when the request bytes went out, and stops reading responses when
 * flushToClient says the client is not keeping up, until the owner calls resumeReading.
 */
export interface UpstreamOwner {
  /** A response head was accepted (its bytes follow through `sendToClient`). */
  onResponseHead (status: number): void
  /** Response bytes for the client, in order (head, body, framing); `bytes` is the owner's to keep. */
  sendToClient (bytes: Buffer): void
  /** The end of one upstream read: send what sendToClient got. false = the client is not keeping up. */
  flushToClient (): boolean
  /** `length` body bytes of the response (after de-chunking), for the access log. */
  onResponseBody (length: number): void
  /** A final response is complete; `keepAlive` is llhttp's verdict on reusing the connection. */
  onResponseComplete (keepAlive: boolean): void
  /** The request bytes written so far have all gone to the kernel: send more. */
  onUpstreamDrain (): void
  /** 101 or CONNECT 2xx: from now on raw bytes; `rest` is what followed the head. */
  onTunnel (rest: Buffer): void
  onUpstreamError (kind: UpstreamErrorKind, anyResponseBytes: boolean): void
}

export class UpstreamConn implements ParserHandler {
  readonly socket: net.Socket
  /** Request bytes to the upstream (writes.ts). */
  readonly out: SocketWriter
  owner: UpstreamOwner | null = null
  /** Already carried an exchange (a failure on it may be a stale keep-alive: retryable). */
  reused = false
  idleSince = 0
  private readonly parser: Parser
  private connected = false
  private connectTimer: NodeJS.Timeout | null = null
  private dead = false
  private isHead = false
  private isConnect = false
  /** The request asked to switch protocols (Upgrade, not CONNECT): the one a 101 may answer. */
  private isUpgrade = false
  private chunked = false
  private informational = false
  /** llhttp's keep-alive verdict for the current response (Connection header, version, framing). */
  private keepAlive = true
  private anyBytes = false
  /** A final response completed during the current data event: any further message is bogus. */
  private completedInChunk = false
  private tunnel = false
  /** After detachForTunnel: the client socket that upstream bytes are relayed to. */
  private tunnelPeer: net.Socket | null = null
  private inHead = false
  private headParts: Buffer[] = []
  /** Bytes in headParts. */
  private headBytes = 0
  private cur: Buffer = CRLF
  private curPos = 0
  /** Raw bytes of `cur` accepted by llhttp and not yet written to the client: [pendStart, pendEnd). */
  private pendStart = -1
  private pendEnd = -1
  /** Reading stopped until the owner's client drains (resumeReading). */
  private readPaused = false
  /**
   * Identity body bytes of the current response still to forward, when the response is framed
   * here rather than through llhttp's onBody (see onHeadersComplete); -1 otherwise.
   */
  private bodyLeft = -1

  /** `source`: the address to connect from ('' = the node's, chosen by the kernel). */
  constructor (readonly pool: UpstreamPool, readonly key: string, ip: string, port: number, connectTimeoutMs: number,
    private readonly maxHeaderBytes: number, mark: number, source: string) {
    this.parser = new Parser('response', maxHeaderBytes, this)
    let fd = -1
    let refused: Error | null = null
    try {
      if (source !== '') fd = transparentUpstreamFd(source, mark)
    } catch (err) {
      refused = err as Error // no CAP_NET_ADMIN, or an address it cannot bind
    }
    // A source that cannot be kept fails the connection (503), rather than leaving from the
    // node's address, which the destination would judge as another identity.
    const s = refused === null ? connect(ip, port, (chunk) => { this.onData(chunk) }, fd) : new net.Socket()
    this.socket = s
    this.out = new SocketWriter(s)
    this.connectTimer = setTimeout(() => { this.fail('connect-timeout') }, connectTimeoutMs)
    s.on('connect', () => {
      this.connected = true
      if (this.connectTimer !== null) { clearTimeout(this.connectTimer); this.connectTimer = null }
      // Set once connected: the descriptor exists only from the connect on, and the SYN must
      // take the datapath's full path anyway (it creates the conntrack entry).
      if (mark !== 0) setSocketMark(socketFd(s), mark)
    })
    s.on('drain', () => { this.owner?.onUpstreamDrain() })
    s.on('end', () => { this.onEnd() })
    s.on('error', () => { this.fail(this.connected ? 'reset' : 'connect') })
    s.on('close', () => { this.fail(this.connected ? 'reset' : 'connect') })
    if (refused !== null) s.destroy(refused)
  }

  /** Start an exchange for `owner`. */
  begin (owner: UpstreamOwner, isHead: boolean, isConnect: boolean, isUpgrade: boolean): void {
    this.owner = owner
    this.resumeReading() // paused for the previous owner's slow client
    this.isHead = isHead
    this.isConnect = isConnect
    this.isUpgrade = isUpgrade
    this.anyBytes = false
    this.chunked = false
    this.informational = false
    this.bodyLeft = -1
  }

  get alive (): boolean { return !this.dead }

  /** `chunk` is valid only during this call (reads.ts): what goes to the client is copied. */
  private onData (chunk: Buffer): void {
    if (this.tunnelPeer !== null) { relay(chunk, this.socket, this.tunnelPeer); return }
    if (this.tunnel) return // a tunnel being handed over: the owner calls detachForTunnel
    const owner = this.owner
    if (owner === null) { this.destroy(); return } // bytes on an idle connection: not ours to interpret
    this.anyBytes = true
    this.completedInChunk = false
    this.cur = chunk
    this.curPos = 0
    this.pendStart = -1
    if (this.bodyLeft > 0) this.forwardBody(owner)
    const r = this.parser.execute(chunk)
    if (!this.dead && this.inHead && this.curPos < chunk.length) this.holdHeadPart(this.curPos === 0 ? chunk : chunk.subarray(this.curPos))
    this.flushPending()
    // The client is slow: read nothing more from the upstream until it drains (resumeReading).
    if (!owner.flushToClient() && this.owner === owner && !this.dead && !this.readPaused) {
      this.readPaused = true
      this.socket.pause()
    }
    if (typeof r === 'number') {
      if (this.tunnel) owner.onTunnel(chunk.subarray(r)) // copied by the owner
    } else {
      this.fail('bad-response', r)
    }
  }

  /**
   * Keep the part of a head this read ended in. llhttp's maxHeaderSize does not count every
   * byte of a head (white space before a field value is skipped uncounted, without limit), so
   * the raw bytes held are bounded here, by the same number.
   */
  private holdHeadPart (part: Buffer): void {
    this.headBytes += part.length
    if (this.headBytes > this.maxHeaderBytes) { this.fail('bad-response'); return }
    this.headParts.push(keep(part))
  }

  /** The owner's client took what it was sent: read the upstream again. */
  resumeReading (): void {
    if (!this.readPaused) return
    this.readPaused = false
    if (!this.dead) this.socket.resume()
  }

  /** Mark cur[from, to) for the client, merged with the pending range when contiguous. */
  private forward (from: number, to: number): void {
    if (this.pendStart !== -1 && this.pendEnd === from) { this.pendEnd = to; return }
    this.flushPending()
    this.pendStart = from
    this.pendEnd = to
  }

  private flushPending (): void {
    if (this.pendStart === -1) return
    const from = this.pendStart
    this.pendStart = -1
    const owner = this.owner
    if (owner !== null) owner.sendToClient(keep(this.cur.subarray(from, this.pendEnd)))
  }

  private onEnd (): void {
    if (this.owner !== null && !this.dead && !this.tunnel) {
      // EOF-framed body completes here (llhttp's finish); anything else is a reset.
      const owner = this.owner
      const err = this.parser.finish()
      owner.flushToClient()
      if (err !== null) this.fail('reset', err)
    }
    if (!this.dead) this.destroy()
  }

  onMessageBegin (): void {
    // A server never answers a request it has not received yet: bytes past the end of the
    // response in the same read are a protocol violation (response splitting), not a response.
    if (this.completedInChunk) { this.fail('bad-response'); return }
    this.inHead = true
  }

  onHeadersComplete (_major: number, _minor: number, headers: string[], _method: number, _url: string,
    status: number, upgrade: boolean, keepAlive: boolean): number {
    this.inHead = false
    this.keepAlive = keepAlive
    const owner = this.owner
    if (owner === null) return 0
    // llhttp takes 000-099 for a final status with a body; RFC 9110 §15 has none below 100,
    // and a client may read such a head as anything. Never relayed.
    if (status < 100) { this.fail('bad-response'); return PAUSE }
    // A switch answers only an upgrade request, and only as llhttp reads one (Upgrade and
    // Connection: upgrade; without them it still stops parsing, and the connection would go
    // back to the pool no longer speaking HTTP). Anything else is not relayed.
    if (status === 101 && (!upgrade || !this.isUpgrade)) { this.fail('bad-response'); return PAUSE }
    let te = false
    let clCount = 0
    let cl = ''
    this.chunked = false
    for (let i = 0; i < headers.length; i += 2) {
      const n = headers[i]
      if (n.length === 17 && n.toLowerCase() === 'transfer-encoding') {
        // llhttp ignores an empty list and frames by Content-Length or the close; a client
        // may not. Such a head is never relayed (as on the request side).
        if (headers[i + 1] === '') { this.fail('bad-response'); return PAUSE }
        te = true
        this.chunked = /(?:^|,)\s*chunked\s*$/i.test(headers[i + 1])
      } else if (n.length === 14 && n.toLowerCase() === 'content-length') {
        clCount++
        cl = headers[i + 1]
      }
    }
    // Find this head: from its status line (llhttp skips the empty lines before one, and a
    // CRLFCRLF among them is not the head's end) to the first CRLFCRLF after it (strict llhttp:
    // CRLF only). Its raw size is bounded whether or not it spanned reads (see holdHeadPart).
    if (this.headParts.length === 0) {
      const start = skipEmptyLines(this.cur, this.curPos)
      const end = this.cur.indexOf(CRLFCRLF, start) + 4
      if (end - start > this.maxHeaderBytes) { this.fail('bad-response'); return PAUSE }
      this.forward(start, end)
      this.curPos = end
    } else {
      const prev = Buffer.concat(this.headParts)
      this.headParts = []
      this.headBytes = 0
      const all = Buffer.concat([prev, this.cur])
      const start = skipEmptyLines(all, 0)
      const end = all.indexOf(CRLFCRLF, start) + 4
      if (end - start > this.maxHeaderBytes) { this.fail('bad-response'); return PAUSE }
      this.flushPending()
      owner.sendToClient(all.subarray(start, end))
      this.curPos = end - prev.length
    }
    this.informational = status < 200 && status !== 101
    owner.onResponseHead(status)
    if (this.informational) return 0
    if (status === 101) { this.tunnel = true; return 0 }
    if (this.isConnect && status >= 200 && status < 300) { this.tunnel = true; return UPGRADE }
    // No body, whatever the head says (RFC 9112 6.3; llhttp reads none): a `Transfer-Encoding:
    // chunked` on it (allowed on a HEAD answer) must not get a last chunk.
    if (this.isHead || status === 204 || status === 304) this.chunked = false
    if (this.isHead) return SKIP_BODY
    // The common response -- a final status with a body, one Content-Length, no Transfer-Encoding
    // -- is framed here: its body is exactly that many bytes after the head (RFC 9112 6.3,
    // llhttp's own rule for it), forwarded straight from the reads without llhttp's per-piece
    // copy. Anything else (chunked, EOF-framed, 204/304, odd values) keeps llhttp's onBody.
    // onMessageComplete checks that llhttp ended the message exactly where this count did.
    if (!te && clCount === 1 && status >= 200 && status !== 204 && status !== 304 && DIGITS.test(cl)) {
      this.parser.bodyCallback(false)
      this.bodyLeft = Number(cl)
      this.forwardBody(owner)
    } else {
      this.parser.bodyCallback(true)
    }
    return 0
  }

  /** Forward the identity body bytes of the current read (framed by bodyLeft). */
  private forwardBody (owner: UpstreamOwner): void {
    const n = Math.min(this.bodyLeft, this.cur.length - this.curPos)
    if (n <= 0) return
    this.forward(this.curPos, this.curPos + n)
    this.curPos += n
    this.bodyLeft -= n
    owner.onResponseBody(n)
  }

  onBody (chunk: Buffer): void {
    const owner = this.owner
    if (owner === null) return
    if (this.chunked) {
      this.flushPending() // the head, still pending
      owner.sendToClient(Buffer.from(chunk.length.toString(16) + '\r\n', 'latin1'))
      owner.sendToClient(chunk)
      owner.sendToClient(CRLF)
    } else {
      // Identity body: llhttp's bytes are the raw bytes right after the head (or the previous
      // body piece), so forward the read's own bytes, not llhttp's copy.
      this.forward(this.curPos, this.curPos + chunk.length)
      this.curPos += chunk.length
    }
    owner.onResponseBody(chunk.length)
  }

  onMessageComplete (): void {
    const owner = this.owner
    if (owner === null || this.informational || this.tunnel) return
    if (this.bodyLeft !== -1) {
      // Framed here: llhttp must have ended the message exactly where the count did.
      if (this.bodyLeft !== 0) { this.fail('bad-response'); return }
      this.bodyLeft = -1
    }
    this.flushPending()
    if (this.chunked) owner.sendToClient(LAST_CHUNK) // trailers are not forwarded
    this.completedInChunk = true
    // llhttp's keep-alive view of the response (Connection header, HTTP/1.0, EOF framing).
    owner.onResponseComplete(this.keepAlive)
  }

  /** Write request bytes; false = backpressure (caller pauses its client). */
  write (data: Buffer | string): boolean {
    return this.out.write(data)
  }

  private fail (kind: UpstreamErrorKind, _err?: ParseError): void {
    if (this.dead) return
    const owner = this.owner
    const any = this.anyBytes
    this.owner = null // nothing more reaches the client from this connection
    this.destroy()
    if (owner !== null && !this.tunnel) owner.onUpstreamError(kind, any)
  }

  /** Close for good (not reusable). */
  destroy (): void {
    if (this.dead) return
    this.dead = true
    if (this.connectTimer !== null) { clearTimeout(this.connectTimer); this.connectTimer = null }
    this.pool.forget(this)
    this.socket.destroy()
    this.parser.destroy()
  }

  /**
   * Hand over to a tunnel: stop parsing; from now on upstream bytes are relayed to `client`
   * (the caller relays the other way). Returns the upstream socket.
   */
  detachForTunnel (client: net.Socket): net.Socket {
    this.resumeReading() // the tunnel relay does its own backpressure from here on
    this.dead = true
    this.tunnelPeer = client
    this.socket.removeAllListeners('end')
    this.socket.removeAllListeners('close')
    this.socket.removeAllListeners('drain')
    this.socket.on('end', () => { client.end() })
    this.parser.destroy()
    this.pool.forget(this)
    return this.socket
  }
}

/** Idle keep-alive connections per key (destination `ip:port`, and the source address when the client's is kept), bounded. */
export class UpstreamPool {
  private readonly idle = new Map<string, UpstreamConn[]>()
  /** Every idle connection, longest idle first (a Set keeps insertion order). */
  private readonly idleOrder = new Set<UpstreamConn>()
  private readonly all = new Set<UpstreamConn>()

  constructor (readonly maxIdlePerDestination: number, readonly connectTimeoutMs: number,
    readonly maxHeaderBytes: number, readonly idleTimeoutMs: number, readonly socketMark = 0,
    readonly maxIdle = Infinity) {}

  /**
   * An idle connection of `key` or a new one to ip:port from `source` ('' = the node's
   * address). The key must name the source when there is one: a connection that keeps one
   * client's address is never lent to another client.
   */
  acquire (key: string, ip: string, port: number, source = ''): UpstreamConn {
    const list = this.idle.get(key)
    while (list !== undefined && list.length > 0) {
      const c = list.pop() as UpstreamConn
      this.idleOrder.delete(c)
      if (c.alive) { c.reused = true; return c }
    }
    return this.acquireFresh(key, ip, port, source)
  }

  /** A new connection, never a pooled one (for a retry after a stale keep-alive). */
  acquireFresh (key: string, ip: string, port: number, source = ''): UpstreamConn {
    const c = new UpstreamConn(this, key, ip, port, this.connectTimeoutMs, this.maxHeaderBytes, this.socketMark, source)
    this.all.add(c)
    return c
  }

  /** Back to the idle list after a complete, keep-alive exchange; otherwise closed. */
  release (c: UpstreamConn): void {
    c.owner = null
    if (!c.alive) return
    c.resumeReading() // idle: read, so that a close from the server is seen
    let list = this.idle.get(c.key)
    if (list === undefined) { list = []; this.idle.set(c.key, list) }
    if (list.length >= this.maxIdlePerDestination) { c.destroy(); return }
    if (this.idleOrder.size >= this.maxIdle) {
      for (const oldest of this.idleOrder) { oldest.destroy(); break } // forget() unlists it
    }
    c.idleSince = Date.now()
    list.push(c)
    this.idleOrder.add(c)
  }

  forget (c: UpstreamConn): void {
    this.all.delete(c)
    this.idleOrder.delete(c)
    const list = this.idle.get(c.key)
    if (list === undefined) return
    const i = list.indexOf(c)
    if (i !== -1) list.splice(i, 1)
    if (list.length === 0) this.idle.delete(c.key)
  }

  /** Close idle connections older than the idle timeout (called by the proxy's sweeper). */
  sweep (now: number): void {
    // Longest idle first: stop at the first that may stay.
    for (const c of this.idleOrder) {
      if (now - c.idleSince <= this.idleTimeoutMs) break
      c.destroy()
    }
  }

  get idleCount (): number { return this.idleOrder.size }
  get openCount (): number { return this.all.size }

  closeAll (): void {
    for (const c of [...this.all]) c.destroy()
    this.idle.clear()
    this.idleOrder.clear()
  }
}
