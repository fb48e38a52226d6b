/**
 * One client connection: parse request heads with llhttp, decide each request against the
 * current snapshot, forward allowed ones to a pooled upstream connection, answer denied ones
 * locally, and return responses in request order.
 *
 * Ordering model: one exchange at a time. When a pipelined request's head completes while an
 * earlier exchange is still running, the parser is paused right after that head (llhttp
 * HPE_PAUSED), the client socket stops being read, and the held head is decided and forwarded
 * only once the earlier response is complete. Memory per connection is therefore one socket
 * read (64 KiB) plus one head, whatever the client sends.
 *
 * The request goes upstream in the canonical form request-head.ts builds from what llhttp
 * parsed (normalised target, hop-by-hop fields removed, framing written by the proxy), and the
 * body is framed by that decision alone, so the upstream sees exactly the message the policy
 * judged: no byte llhttp did not accept is ever forwarded.
 *
 * Backpressure is explicit: a refused write to the upstream pauses the client socket until
 * the upstream connection reports a drain; a client that does not read its responses pauses
 * the upstream connection (UpstreamOwner.flushToClient) until the client drains. Each exchange
 * answered locally goes through localReply; its line is written by access-log.ts.
 */
import type net from 'node:net'
import { adoptAccepted, keep, relay, reopenPlain } from './reads.js'
import { SocketWriter } from './writes.js'
import { isPaused, METHODS, PAUSE, Parser, type ParseError, type ParserHandler } from './llhttp.js'
import { canonicalRequest, ForwardRequest, Framing, type ParsedRequestHead } from './request-head.js'
import { ConnectionPolicy, RequestView } from './policy.js'
import { applyHeaderActions } from './header-actions.js'
import type { ReplyKind } from './replies.js'
import type { UpstreamConn, UpstreamErrorKind, UpstreamOwner } from './upstream.js'
import { type ProxyContext } from './context.js'
import { AccessLog, type Verdict } from './access-log.js'
import { RESERVED } from '../../../policy-store/src/types.js'
import { H2_PREFACE_MATCH, matchPreface } from '../http2/preface.js'

const CRLF = '\r\n'
const LAST_CHUNK = '0\r\n\r\n'

/**
 * Where the exchange in progress stands. One exchange at a time: a pipelined head waits
 * (held) until the state is IDLE again. The order matters: from ANSWERED_EARLY on, a final
 * response head went to the client and no local reply is possible any more.
 */
const enum Exchange {
  /** No exchange: waiting for (or parsing) the next request head. */
  IDLE,
  /** Denied, answered, connection kept: the request's rest is read and dropped. */
  DENIED,
  /** Forwarded; the request is still going upstream; no final response head yet. */
  SENDING,
  /** The whole request went upstream; waiting for the final response head. */
  WAITING,
  /** The final response head went to the client before the request's end (an early answer). */
  ANSWERED_EARLY,
  /** The whole request went upstream and the final response head went to the client. */
  RESPONDING
}

/** Where the client connection stands; it only moves forward. */
const enum Conn {
  OPEN,
  /** Close once the exchange in progress is answered; no new request is started. */
  CLOSING,
  /** No more HTTP on this connection (closed, reset, or turned into a tunnel). */
  CLOSED,
  /** The socket closed and the counters are settled. */
  GONE
}

/** Local reply: reset the connection instead of answering. */
const RESET = 0
/** What a deadline means when it passes. */
const enum Deadline { NONE, IDLE, HEAD, BODY, LINGER }
/** After our last response on a closing connection, how long the client may keep its side open. */
const LINGER_MS = 2000
/** An empty read: lets llhttp run the callbacks it paused before (see nextHeld). */
const NO_BYTES = Buffer.alloc(0)
/** Why the client socket is paused (a bit each; resumed when all clear). */
const PAUSED_PIPELINE = 1
const PAUSED_UPSTREAM = 2
const PAUSED_TUNNEL = 4
const PAUSED_CLIENT_DRAIN = 8

/** An address as the proxy names it: IPv4-mapped IPv6 as plain IPv4. */
export function stripMapped (ip: string | undefined): string {
  if (ip === undefined) return ''
  return ip.startsWith('::ffff:') ? ip.slice(7) : ip
}

export class ClientConn implements ParserHandler, UpstreamOwner {
  private readonly parser: Parser
  readonly policy: ConnectionPolicy
  private readonly view = new RequestView()
  private readonly dstKey: string
  /** Where the upstream connection goes (`upstreamAddress(dst)`), and its pool key. */
  private readonly upIp: string
  private readonly upPort: number
  private readonly upKey: string
  /** The address the upstream connection leaves from ('' = the node's: deps.upstreamSource). */
  private readonly upSource: string
  /** How far this connection is from its end (only ever moves forward: see closeTo). */
  private conn: Conn = Conn.OPEN
  private clientEnded = false
  private pausedMask = 0
  deadline = 0
  deadlineKind: Deadline = Deadline.NONE
  /** When the upstream must have sent the final response head (0 = not waiting); see upstreamResponseTimeoutMs. */
  responseDeadline = 0

  // The exchange in progress (stable shape: every field assigned here).
  private state: Exchange = Exchange.IDLE
  /** The request being forwarded, in the canonical form the upstream gets. */
  private readonly req = new ForwardRequest()
  /** Body bytes llhttp may still deliver for a Content-Length request (checked against its framing). */
  private bodyLeft = 0
  /** An allowed upgrade or CONNECT: after its head, client bytes are tunnel payload. */
  private upgradeReq = false
  private upstream: UpstreamConn | null = null
  private retryHead: string | null = null
  private held: ParsedRequestHead | null = null
  private remainder: Buffer | null = null
  private tunnelBuf: Buffer[] = []
  /** After a 101 / CONNECT 2xx: the upstream socket that client bytes are relayed to. */
  private tunnelPeer: net.Socket | null = null
  private fatal: ReplyKind | 0 = 0
  private fatalReason = ''
  /** The exchange's access-log line. */
  private readonly log: AccessLog
  /** Writes relayed from the upstream during its current read (see sendToClient). */
  private relayWrites = 0
  /**
   * The first bytes still decide the protocol (an HTTP/2 proxy is configured): a client that
   * opens with the HTTP/2 connection preface is handed to it (handOffH2) before llhttp sees a
   * byte. `prefaceHeld` keeps a preface cut short by a read, under the head deadline.
   */
  private sniffing: boolean
  private prefaceHeld: Buffer | null = null
  /** The connection went on as HTTP/2: its socket now belongs to the HTTP/2 proxy. */
  handedToH2 = false

  readonly socket: net.Socket
  /** Writes to the client (writes.ts: straight to the handle while the kernel takes them). */
  readonly out: SocketWriter

  /** `accepted` comes from a server made with reads.ts's SERVER_OPTIONS; it is re-opened with onread. */
  constructor (accepted: net.Socket, private readonly ctx: ProxyContext) {
    const { deps, opts } = ctx
    // Everything that may throw happens before the socket is re-opened, so that a failure
    // leaves only `accepted` for the caller to close. Both have the same addresses.
    const dst = deps.originalDestination?.(accepted) ?? { ip: stripMapped(accepted.localAddress), port: accepted.localPort ?? 0 }
    const srcIp = stripMapped(accepted.remoteAddress)
    this.dstKey = dst.ip + ':' + String(dst.port)
    const up = deps.upstreamAddress?.(dst) ?? dst
    this.upIp = up.ip
    this.upPort = up.port
    this.upSource = deps.upstreamSource?.(srcIp, dst) ?? ''
    const upKey = up === dst ? this.dstKey : up.ip + ':' + String(up.port)
    this.upKey = this.upSource === '' ? upKey : this.upSource + '>' + upKey
    // Unknown peers are world, never "any": fail closed, as Cilium's datapath does.
    const srcId = deps.lookupIdentity(srcIp) || RESERVED.WORLD
    const dstId = deps.lookupIdentity(dst.ip) || RESERVED.WORLD
    this.policy = new ConnectionPolicy(srcIp, dst.ip, dst.port, srcId, dstId)
    this.log = new AccessLog(ctx, this.policy, this.view, this.dstKey, accepted.remotePort ?? 0)
    const socket = adoptAccepted(accepted, (chunk) => { this.onData(chunk) })
    this.socket = socket
    this.out = new SocketWriter(socket)
    this.parser = new Parser('request', opts.maxHeaderBytes, this)
    this.sniffing = ctx.h2 !== null
    socket.setNoDelay(true)
    socket.on('drain', () => { this.onClientDrain() })
    socket.on('end', () => { this.onClientEnd() })
    socket.on('error', () => { this.socket.destroy() })
    socket.on('close', () => { this.teardown() })
    this.setDeadline(Deadline.IDLE, opts.idleTimeoutMs)
  }

  // ---- client bytes -------------------------------------------------------------------------

  /** `chunk` is valid only during this call (reads.ts): whatever is kept is copied. */
  private onData (chunk: Buffer): void {
    if (this.tunnelPeer !== null) { relay(chunk, this.socket, this.tunnelPeer); return }
    if (this.conn >= Conn.CLOSED || (this.conn === Conn.CLOSING && this.state === Exchange.IDLE)) return
    if (this.upgradeReq) { this.holdTunnelBytes(chunk); return }
    if (this.sniffing && this.sniff(chunk)) return
    this.execute(chunk)
  }

  /** true: the bytes were taken here (held, handed to HTTP/2, or parsed with the held ones). */
  private sniff (chunk: Buffer): boolean {
    const held = this.prefaceHeld
    const data = held === null ? chunk : Buffer.concat([held, chunk])
    const m = matchPreface(data)
    if (m === H2_PREFACE_MATCH.MORE) {
      this.prefaceHeld = keep(data)
      this.setDeadline(Deadline.HEAD, this.ctx.opts.headersTimeoutMs)
      return true
    }
    this.sniffing = false
    this.prefaceHeld = null
    if (m === H2_PREFACE_MATCH.H2) { this.handOffH2(held === null ? keep(data) : data); return true }
    if (held === null) return false
    this.setDeadline(Deadline.IDLE, this.ctx.opts.idleTimeoutMs)
    this.execute(data)
    return true
  }

  /** The connection is HTTP/2: no HTTP/1 exchange ever ran on it; the HTTP/2 proxy takes the socket. */
  private handOffH2 (bytes: Buffer): void {
    const h2 = this.ctx.h2
    if (h2 === null) return
    this.closeTo(Conn.CLOSED)
    this.setDeadline(Deadline.NONE, 0)
    let plain: net.Socket
    try {
      plain = reopenPlain(this.socket, bytes)
    } catch (err) {
      this.ctx.log.error({ err }, 'http proxy: cannot hand a connection to HTTP/2')
      this.socket.destroy()
      return
    }
    this.handedToH2 = true
    h2.adopt(plain, { policy: this.policy, dst: this.dstKey, srcPort: this.log.srcPort, upIp: this.upIp, upPort: this.upPort, upKey: this.upKey, upSource: this.upSource })
  }

  private execute (chunk: Buffer): void {
    // No corking around the parse: each write to the upstream reports backpressure itself
    // (onBody pauses the client on the first refused write).
    const r = this.parser.execute(chunk)
    if (this.conn >= Conn.CLOSED) return
    if (typeof r === 'number') {
      // An upgrade/CONNECT request: llhttp stops after it; the rest is tunnel payload.
      if (this.upgradeReq && r < chunk.length) this.holdTunnelBytes(chunk.subarray(r))
      return
    }
    if (isPaused(r)) {
      if (this.conn >= Conn.CLOSING) return // a local reply ends the connection: ignore the rest
      this.remainder = r.bytesParsed < chunk.length ? keep(chunk.subarray(r.bytesParsed)) : null
      if (this.held !== null) this.pause(PAUSED_PIPELINE)
      return
    }
    this.onParseError(r)
  }

  private holdTunnelBytes (chunk: Buffer): void {
    this.tunnelBuf.push(keep(chunk))
    this.pause(PAUSED_TUNNEL)
  }

  private onClientEnd (): void {
    if (this.tunnelPeer !== null) { this.tunnelPeer.end(); return }
    if (this.conn >= Conn.CLOSING && this.state === Exchange.IDLE) { this.socket.destroy(); return }
    // Half-close from the client: answer what it sent (pipelined included), then close.
    // Needs a listener with allowHalfOpen: true; otherwise Node closes our side at once.
    if (this.state !== Exchange.IDLE || this.held !== null) { this.clientEnded = true; return }
    this.endClient()
  }

  // ---- llhttp callbacks (request side) -------------------------------------------------------

  onMessageBegin (): void {
    this.setDeadline(Deadline.HEAD, this.ctx.opts.headersTimeoutMs)
  }

  onHeadersComplete (major: number, minor: number, headers: string[], method: number, url: string,
    _status: number, upgrade: boolean, keepAlive: boolean): number {
    const parsed: ParsedRequestHead = { major, minor, headers, method: METHODS[method] ?? '', url, upgrade, keepAlive }
    if (this.state !== Exchange.IDLE) {
      // Pipelined: hold this head until the exchange in progress is answered.
      this.held = parsed
      this.setDeadline(Deadline.NONE, 0)
      return PAUSE
    }
    return this.startRequest(parsed)
  }

  onBody (chunk: Buffer): void {
    if (this.conn >= Conn.CLOSED) return
    this.log.bytesIn += chunk.length
    this.setDeadline(Deadline.BODY, this.ctx.opts.bodyTimeoutMs)
    const up = this.upstream
    if (this.state === Exchange.DENIED || up === null) return // denied: the body is read and dropped, never forwarded
    // The body goes out framed as the forwarded head says; llhttp must agree with that framing.
    const framing = this.req.framing
    let ok: boolean
    if (framing === Framing.CHUNKED) {
      up.out.cork() // size line, data and CRLF in one writev
      up.write(chunk.length.toString(16) + CRLF)
      up.write(chunk)
      up.write(CRLF)
      ok = up.out.uncork()
    } else if (framing === Framing.LENGTH && chunk.length <= this.bodyLeft) {
      this.bodyLeft -= chunk.length
      ok = up.write(chunk)
    } else {
      this.framingMismatch()
      return
    }
    // The upstream is not taking the body as fast as the client sends it: stop reading the
    // client (the rest of this read is still parsed and queued: one read at most) until the
    // upstream connection says it drained (onUpstreamDrain).
    if (!ok) this.pause(PAUSED_UPSTREAM)
  }

  onMessageComplete (_trailers: string[]): void {
    if (this.conn >= Conn.CLOSED || this.state === Exchange.IDLE) return
    this.setDeadline(Deadline.NONE, 0)
    if (this.state === Exchange.DENIED) { this.finishExchange(); return }
    this.state = this.state === Exchange.ANSWERED_EARLY ? Exchange.RESPONDING : Exchange.WAITING
    const up = this.upstream
    if (up !== null && this.bodyLeft !== 0) { this.framingMismatch(); return }
    // Trailers are not forwarded: the policy never saw them, and a backend that merged one
    // named like a framing field into the head would read the message differently.
    if (up !== null && this.req.framing === Framing.CHUNKED) up.write(LAST_CHUNK)
    if (this.req.hasBody) this.retryHead = null
    // The request is all out: the upstream now has upstreamResponseTimeoutMs to start answering.
    if (this.state === Exchange.WAITING && up !== null) this.responseDeadline = Date.now() + this.ctx.opts.upstreamResponseTimeoutMs
  }

  /**
   * llhttp delivered a body that does not fit the framing the forwarded head announced. The
   * request-head rules leave no request where the two differ; should one appear, the upstream
   * connection holds a broken message and is dropped, and nothing more is read from the client.
   */
  private framingMismatch (): void {
    this.upstream?.destroy()
    this.upstream = null
    if (this.state >= Exchange.ANSWERED_EARLY) { this.destroy(); return }
    this.reject(400, 'body-framing-mismatch')
    this.closeTo(Conn.CLOSED)
  }

  // ---- one request ---------------------------------------------------------------------------

  private startRequest (parsed: ParsedRequestHead): number {
    const { ctx } = this
    ctx.counters.requests++
    this.state = Exchange.SENDING
    this.upgradeReq = false
    this.log.begin()
    this.bodyLeft = 0
    const req = this.req
    const refused = canonicalRequest(parsed, ctx.opts.maxHeaders, req)
    const view = this.view
    view.method = req.method
    view.path = req.path
    view.host = req.host
    view.headers = req.headers
    if (refused !== null) return this.reject(refused.status, refused.reason)

    // The policy is read fresh for every request (a swap applies to the next head); it judges
    // the canonical request, the one that is forwarded.
    const pol = this.policy
    pol.refresh(ctx.deps.snapshot())
    if (pol.decide(view)) {
      ctx.counters.allowed++
      this.log.verdict = 'allowed'
      if (pol.actions.length > 0) {
        this.log.headerActions = applyHeaderActions(req, pol.actions)
        view.headers = req.headers
      }
    } else if (pol.audits()) {
      // audit mode: forwarded, and logged with the reason policy would have denied it
      ctx.counters.audited++
      this.log.verdict = 'audit'
      this.log.reason = pol.reason ?? 'no-l7-table'
    } else {
      return this.deny(req.hasBody, req.upgrade)
    }
    this.bodyLeft = req.framing === Framing.LENGTH ? req.length : 0
    this.upgradeReq = req.upgrade
    this.retryHead = req.head
    this.sendUpstream(req.head, false)
    if (req.hasBody) this.setDeadline(Deadline.BODY, ctx.opts.bodyTimeoutMs)
    else this.setDeadline(Deadline.NONE, 0)
    return 0
  }

  private sendUpstream (head: string, fresh: boolean): void {
    const up = fresh
      ? this.ctx.pool.acquireFresh(this.upKey, this.upIp, this.upPort, this.upSource)
      : this.ctx.pool.acquire(this.upKey, this.upIp, this.upPort, this.upSource)
    this.upstream = up
    const m = this.req.method
    up.begin(this, m === 'HEAD', m === 'CONNECT', this.req.upgrade && m !== 'CONNECT')
    if (!up.write(head)) this.pause(PAUSED_UPSTREAM)
  }

  private deny (hasBody: boolean, upgrade: boolean): number {
    const { ctx } = this
    const reason = this.policy.reason ?? 'no-l7-table'
    if (reason === 'no-l7-table') ctx.counters.denied_no_l7_table++
    else if (reason === 'ingress-no-rule-match') ctx.counters.denied_ingress_no_rule_match++
    else ctx.counters.denied_egress_no_rule_match++
    this.state = Exchange.DENIED
    if (ctx.opts.denyResponse === 'reset') return this.localReply(RESET, 'denied', reason, true)
    // Keep the connection when the whole request is already known (no body follows);
    // otherwise close after the reply, as Envoy does for a reply before the request's end.
    return this.localReply(403, 'denied', reason, hasBody || upgrade || !this.req.keepAlive)
  }

  /** Refuse a request that is malformed or over a limit: reply, log, close. Never forwarded. */
  private reject (kind: ReplyKind, reason: string): number {
    const c = this.ctx.counters
    if (kind === 431) c.rejected_header_too_large++
    else if (kind === 408) c.rejected_timeout++
    else c.rejected_bad_request++
    return this.localReply(kind, 'rejected', reason, true)
  }

  /**
   * The one local answer, for every exchange the proxy answers itself (denied, refused,
   * upstream failed or too slow): the reply (or a TCP reset), the access-log line with its
   * verdict and reason, and the connection closed after the reply or kept for the next
   * request. Returns what a parser callback returns: PAUSE when nothing more is to be parsed.
   * A kept connection's exchange ends at the request's message complete (logged then).
   */
  private localReply (status: ReplyKind | typeof RESET, verdict: Verdict, reason: string, close: boolean): number {
    const log = this.log
    log.verdict = verdict
    log.reason = reason
    if (status === RESET) {
      log.status = 0
      log.write()
      this.state = Exchange.IDLE
      this.closeTo(Conn.CLOSED)
      this.socket.resetAndDestroy() // TCP RST, as Cilium's proxy does for an L4-level deny
      return PAUSE
    }
    log.status = status
    this.writeClient(this.ctx.replies.get(status, close))
    if (!close) return 0
    log.write()
    this.state = Exchange.IDLE
    this.closeTo(Conn.CLOSING)
    this.endClient()
    return PAUSE
  }

  private onParseError (err: ParseError): void {
    const kind: ReplyKind = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400
    const reason = err.code.toLowerCase().replace(/^hpe_/, 'llhttp-').replace(/_/g, '-')
    if (this.state === Exchange.SENDING || this.state === Exchange.ANSWERED_EARLY) {
      // Broken body of a request being forwarded: the upstream got part of it, drop it.
      this.upstream?.destroy()
      this.upstream = null
      if (this.state === Exchange.SENDING) { this.reject(kind, reason); return }
      this.destroy()
      return
    }
    if (this.state !== Exchange.IDLE) {
      // A pipelined head is malformed while an earlier exchange runs: answer after it.
      this.fatal = kind
      this.fatalReason = reason
      this.pause(PAUSED_PIPELINE)
      return
    }
    this.beginWithoutRequest()
    this.reject(kind, reason)
  }

  // ---- upstream callbacks --------------------------------------------------------------------

  onUpstreamDrain (): void {
    this.unpause(PAUSED_UPSTREAM)
  }

  onResponseHead (status: number): void {
    if (status >= 200 || status === 101) {
      if (this.state === Exchange.SENDING) this.state = Exchange.ANSWERED_EARLY
      else if (this.state === Exchange.WAITING) this.state = Exchange.RESPONDING
      this.responseDeadline = 0
      this.log.status = status
    }
  }

  sendToClient (bytes: Buffer): void {
    // Most upstream reads produce ONE write (head and identity body coalesced by the upstream
    // side); from a second write on (chunked framing, a head split across reads) they are
    // gathered and leave in one writev at flushToClient. Corking up front would cost every
    // single-write response a trip through the writev path.
    if (++this.relayWrites === 2) this.out.cork()
    this.out.write(bytes)
  }

  flushToClient (): boolean {
    const n = this.relayWrites
    this.relayWrites = 0
    return n >= 2 ? this.out.uncork() : !this.out.needDrain
  }

  onResponseBody (length: number): void {
    this.log.bytesOut += length
  }

  onResponseComplete (keepAlive: boolean): void {
    this.responseDeadline = 0
    const up = this.upstream
    this.upstream = null
    const requestDone = this.state === Exchange.RESPONDING
    if (up !== null) {
      if (keepAlive && requestDone) this.ctx.pool.release(up)
      else up.destroy()
    }
    if (!requestDone) {
      // Answered before the request body ended (e.g. an early 413): the rest of the body has
      // nowhere to go, so the connection ends here.
      this.closeTo(Conn.CLOSING)
    }
    // After an Upgrade/CONNECT that the server did not accept, llhttp will not parse further.
    if (!keepAlive || !this.req.keepAlive || this.upgradeReq) this.closeTo(Conn.CLOSING)
    this.finishExchange()
  }

  onTunnel (rest: Buffer): void {
    const up = this.upstream
    if (up === null) return
    this.upstream = null
    const peer = up.detachForTunnel(this.socket)
    this.log.write()
    const s = this.socket
    if (rest.length > 0) s.write(keep(rest))
    for (const b of this.tunnelBuf) peer.write(b)
    this.tunnelBuf = []
    this.setDeadline(Deadline.NONE, 0)
    this.closeTo(Conn.CLOSED) // no more HTTP on this connection; it stays counted until it closes
    this.tunnelPeer = peer
    peer.on('error', () => { s.destroy() })
    peer.on('close', () => { s.destroy() })
    s.on('close', () => { peer.destroy() })
    this.pausedMask = 0
    s.resume()
  }

  onUpstreamError (kind: UpstreamErrorKind, anyResponseBytes: boolean): void {
    if (this.conn >= Conn.CLOSED) return
    const deadline = this.responseDeadline
    this.responseDeadline = 0
    const c = this.ctx.counters
    if (kind === 'connect') c.upstream_errors_connect++
    else if (kind === 'connect-timeout') c.upstream_errors_connect_timeout++
    else if (kind === 'reset') c.upstream_errors_reset++
    else c.upstream_errors_bad_response++
    const up = this.upstream
    this.upstream = null
    // A kept-alive connection the server closed under us: safe to replay a body-less request
    // on a fresh connection (Envoy retries these too).
    if (up !== null && up.reused && !anyResponseBytes && this.retryHead !== null && this.state === Exchange.WAITING && kind === 'reset') {
      c.upstream_retries++
      this.responseDeadline = deadline // the retry runs on the same clock (as Envoy's route timeout)
      this.sendUpstream(this.retryHead, true)
      return
    }
    if (this.state >= Exchange.ANSWERED_EARLY) { this.destroy(); return }
    this.localReply(kind === 'connect' || kind === 'connect-timeout' ? 503 : 502, 'allowed', 'upstream-' + kind, true)
  }

  // ---- exchange end, pipelining ---------------------------------------------------------------

  private finishExchange (): void {
    // A body write still waiting for the upstream to drain no longer holds the client back.
    this.unpause(PAUSED_UPSTREAM)
    this.log.write()
    this.state = Exchange.IDLE
    this.retryHead = null
    if (this.conn >= Conn.CLOSING) { this.endClient(); return }
    if (this.fatal !== 0) {
      const k = this.fatal
      this.fatal = 0
      this.beginWithoutRequest()
      this.reject(k, this.fatalReason)
      return
    }
    // A pipelined head already begun keeps its head deadline (onMessageBegin set it).
    if (this.deadlineKind !== Deadline.HEAD) this.setDeadline(Deadline.IDLE, this.ctx.opts.idleTimeoutMs)
    if (this.out.needDrain) {
      // The client is not reading its responses: read nothing more from it until it does.
      this.pause(PAUSED_CLIENT_DRAIN)
      return
    }
    this.nextHeld()
  }

  /** The client took everything written to it. */
  private onClientDrain (): void {
    this.upstream?.resumeReading()
    if ((this.pausedMask & PAUSED_CLIENT_DRAIN) === 0) return
    this.unpause(PAUSED_CLIENT_DRAIN)
    if (this.conn < Conn.CLOSED) this.nextHeld()
  }

  /** Start the pipelined request held back while the previous exchange ran. */
  private nextHeld (): void {
    const held = this.held
    if (held === null) {
      if (this.clientEnded) this.endClient()
      return
    }
    this.held = null
    const r = this.startRequest(held)
    if (this.conn >= Conn.CLOSING || r === PAUSE) return
    this.parser.resume()
    const rest = this.remainder
    this.remainder = null
    // Also when no byte followed the head: llhttp finishes the paused message (its message
    // complete, for a request without a body) only inside an execute. Without it the last
    // request of a pipelined burst never completed, and the connection was closed after its
    // response as if its body had been cut short.
    this.execute(rest ?? NO_BYTES)
    if (this.conn >= Conn.CLOSED) return
    if (this.held === null) this.unpause(PAUSED_PIPELINE)
    if (this.clientEnded && this.state === Exchange.IDLE && this.held === null) this.endClient()
  }

  // ---- helpers --------------------------------------------------------------------------------

  private closeTo (c: Conn): void {
    if (this.conn < c) this.conn = c
  }

  /** An exchange for a refusal that has no parsed request (a malformed head, a timeout). */
  private beginWithoutRequest (): void {
    this.view.method = ''
    this.view.path = ''
    this.log.begin()
  }

  /** Send FIN after what is queued; the socket is destroyed when the client closes or lingers too long. */
  private endClient (): void {
    this.socket.end()
    this.setDeadline(Deadline.LINGER, LINGER_MS)
  }

  private writeClient (b: Buffer): void {
    this.out.write(b)
  }

  private pause (bit: number): void {
    if (this.pausedMask === 0) this.socket.pause()
    this.pausedMask |= bit
  }

  private unpause (bit: number): void {
    if ((this.pausedMask & bit) === 0) return
    this.pausedMask &= ~bit
    if (this.pausedMask === 0 && this.conn < Conn.CLOSED) this.socket.resume()
  }

  private setDeadline (kind: Deadline, ms: number): void {
    this.deadlineKind = kind
    this.deadline = kind === Deadline.NONE ? 0 : Date.now() + ms
  }

  /** Called by the proxy's sweeper when `deadline` has passed. */
  onDeadline (): void {
    if (this.conn === Conn.GONE) return
    if (this.conn >= Conn.CLOSED && this.deadlineKind !== Deadline.LINGER) return
    const kind = this.deadlineKind
    this.setDeadline(Deadline.NONE, 0)
    if (kind === Deadline.LINGER) { this.destroy(); return }
    if (kind === Deadline.IDLE) { this.closeTo(Conn.CLOSED); this.endClient(); return }
    if (kind === Deadline.HEAD && this.state === Exchange.IDLE) {
      this.beginWithoutRequest()
      this.reject(408, 'headers-timeout')
      return
    }
    if (kind === Deadline.HEAD) {
      // A pipelined head, begun while an exchange runs, did not complete in time: the exchange
      // is not at fault; it finishes, then this head is answered 408 and the connection ends.
      this.fatal = 408
      this.fatalReason = 'headers-timeout'
      this.pause(PAUSED_PIPELINE)
      return
    }
    // Body too slow: the upstream holds part of a request; drop both sides. Counted once: by
    // reject() when the client still gets its 408, here when the response had begun.
    this.upstream?.destroy()
    this.upstream = null
    if (this.state === Exchange.SENDING || this.state === Exchange.DENIED) { this.reject(408, 'body-timeout'); return }
    this.ctx.counters.rejected_timeout++
    this.destroy()
  }

  /**
   * Called by the proxy's sweeper when the upstream has not started its response within
   * upstreamResponseTimeoutMs of the request's end: 504, the upstream connection is destroyed
   * (it still owes a response, so it can never be reused), the client connection closes.
   */
  onResponseTimeout (): void {
    this.responseDeadline = 0
    if (this.conn >= Conn.CLOSED || this.state !== Exchange.WAITING) return
    this.ctx.counters.upstream_errors_response_timeout++
    if (this.upstream !== null) { this.upstream.destroy(); this.upstream = null }
    this.localReply(504, 'allowed', 'upstream-response-timeout', true)
  }

  /** Close now, both sides (the pool never gets a connection in an unknown state). */
  destroy (): void {
    this.closeTo(Conn.CLOSED)
    this.responseDeadline = 0
    if (this.upstream !== null) { this.upstream.destroy(); this.upstream = null }
    this.socket.destroy()
  }

  /** On the socket's 'close' (always asynchronous, so never inside a parser callback). */
  private teardown (): void {
    if (this.conn === Conn.GONE) return
    this.conn = Conn.GONE
    if (this.upstream !== null) { this.upstream.destroy(); this.upstream = null }
    this.ctx.counters.connections_active--
    this.ctx.onClosed(this)
    this.parser.destroy()
  }
}
