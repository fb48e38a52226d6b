/**
 * One HTTP/2 stream through the proxy: decided like an HTTP/1 request, then either answered
 * locally (403, a 4xx refusal, or RST_STREAM) or relayed over a pooled upstream session.
 *
 * Relay, both ways, with backpressure: a DATA frame read from one side is written to the other;
 * when that write is refused the reading side is paused, so node:http2 stops returning window
 * to that peer (it sends WINDOW_UPDATE only for bytes JS consumed) and the peer stops after its
 * window. What one stream holds is therefore bounded by the windows and a stream buffer, never
 * by what a peer sends. Request trailers are not forwarded (no policy judges them, as for
 * HTTP/1); response trailers are (gRPC's status travels in them).
 *
 * Ends: the upstream resetting its stream resets ours with the same code, and the other way
 * round; an upstream that fails before its response head gives a local 502/503, as HTTP/1.
 */
import http2, { type ClientHttp2Stream, type IncomingHttpHeaders, type OutgoingHttpHeaders, type ServerHttp2Stream } from 'node:http2'
import type { RuleRef } from '../../../policy-store/src/types.js'
import type { Verdict } from '../http/access-log.js'
import { UPSTREAM_CONNECT_TIMEOUT } from './upstream.js'

const {
  NGHTTP2_NO_ERROR, NGHTTP2_CANCEL, NGHTTP2_REFUSED_STREAM, NGHTTP2_FLAG_END_STREAM
} = http2.constants

/** What an exchange needs from its client connection. */
export interface ExchangeOwner {
  /** The body of local 4xx/5xx replies, by status; 403 is the configured deny message. */
  replyBody (status: number): string
  /** A stream over: its line goes to the access log. */
  finished (x: H2Exchange): void
  /** The client reset a stream the proxy had not finished (rapid-reset accounting). */
  clientReset (): void
  upstreamError (kind: 'connect' | 'reset' | 'bad-response'): void
}

/** Where the exchange stands; it only moves forward. */
const enum State { DECIDING, REPLIED, FORWARDED, RESPONDING, DONE }

export class H2Exchange {
  verdict: Verdict = ''
  reason = ''
  /** `:authority` as decided (the event ring's decisions). */
  host = ''
  status = 0
  grpcStatus = ''
  bytesIn = 0
  bytesOut = 0
  readonly startedAt = performance.now()
  method = ''
  path = ''
  rule: RuleRef | null = null
  private state = State.DECIDING
  private up: ClientHttp2Stream | null = null
  private upDone: (() => void) | null = null
  private upError: NodeJS.ErrnoException | null = null
  private trailers: IncomingHttpHeaders | null = null
  /**
   * The client said `te: trailers` (every gRPC client does): response trailers are relayed. To
   * any other client they are not (RFC 9110 §6.5.1 lets a recipient drop them), which spares
   * each plain response the trailing HEADERS frame that ending a stream kept open for them costs.
   */
  wantsTrailers = false
  /** We reset the client's stream (deny reset, idle timeout, propagation): not the client's doing. */
  private resetByUs = false

  constructor (private readonly owner: ExchangeOwner, readonly stream: ServerHttp2Stream) {
    // Stream errors also end in 'close', where the exchange is settled; without a listener
    // Node would throw them.
    stream.on('error', ignore)
    stream.on('close', () => { this.onClientClose() })
  }

  /** Answer locally with `status` and a short text body; the request body is not read. */
  reply (status: number, verdict: Verdict, reason: string): void {
    const s = this.stream
    this.verdict = verdict
    if (reason !== '') this.reason = reason
    if (s.destroyed || s.closed) return
    if (s.headersSent) { this.resetClient(NGHTTP2_CANCEL); return }
    this.state = State.REPLIED
    const body = this.owner.replyBody(status)
    this.status = status
    s.respond({ ':status': status, 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) })
    s.end(body)
    // A request body still coming has nowhere to go: once the reply is out, ask the client to
    // stop sending it, without error (RFC 9113 §8.1). Node sends queued DATA before the RST.
    if (!s.readableEnded) {
      s.once('finish', () => { if (!s.closed && !s.readableEnded) { this.resetByUs = true; s.close(NGHTTP2_NO_ERROR) } })
      s.resume()
    }
  }

  /** `--deny-response reset`: RST_STREAM CANCEL, the connection stays. */
  denyReset (reason: string): void {
    this.verdict = 'denied'
    this.reason = reason
    this.state = State.REPLIED
    this.resetClient(NGHTTP2_CANCEL)
  }

  /** No upstream session to be had (the source address not bindable, the pool full): 503. */
  unavailable (reason: string): void {
    this.reply(503, this.verdict === '' ? 'allowed' : this.verdict, reason)
  }

  /** Open the upstream stream and relay both ways. `endStream`: the request has no body. */
  forward (session: http2.ClientHttp2Session, done: () => void, headers: OutgoingHttpHeaders, endStream: boolean): void {
    if (this.verdict === '') this.verdict = 'allowed' // an audited stream stays 'audit'
    this.upDone = done
    let up: ClientHttp2Stream
    try {
      up = session.request(headers, { endStream })
    } catch (err) {
      done()
      this.upDone = null
      const code = (err as NodeJS.ErrnoException).code ?? ''
      // A field node:http2 will not send (an invalid value for it) vs. a session already going away.
      if (code.startsWith('ERR_HTTP2_HEADER') || code === 'ERR_HTTP2_INVALID_HEADER_VALUE' || code === 'ERR_INVALID_HTTP_TOKEN') this.reply(400, 'rejected', 'bad-header')
      else { this.owner.upstreamError('connect'); this.reply(503, 'allowed', 'upstream-connect') }
      return
    }
    this.up = up
    this.state = State.FORWARDED
    const s = this.stream
    up.on('error', (err: NodeJS.ErrnoException) => { this.upError = err })
    up.on('response', (h, flags) => { this.onResponse(h, flags) })
    up.on('trailers', (h: IncomingHttpHeaders) => {
      this.trailers = h
      const g = h['grpc-status']
      if (typeof g === 'string') this.grpcStatus = g
    })
    up.on('data', (d: Buffer) => {
      this.bytesOut += d.length
      if (!s.destroyed && !s.write(d)) up.pause()
    })
    up.on('end', () => { if (!s.destroyed && !s.writableEnded) s.end() })
    up.on('close', () => { this.onUpstreamClose() })
    s.on('drain', () => { up.resume() })
    s.on('wantTrailers', () => {
      // No trailers from the upstream: an empty trailing block ends the stream (node's default).
      const t = this.trailers
      if (s.destroyed || s.closed) return
      try {
        s.sendTrailers(t === null ? {} : stripPseudo(t))
      } catch {
        // trailers node:http2 will not send: the stream ends in a reset rather than without them
        this.owner.upstreamError('bad-response')
        this.reason = 'upstream-bad-response'
        this.resetClient(NGHTTP2_CANCEL)
      }
    })
    if (!endStream) {
      s.on('data', (d: Buffer) => {
        this.bytesIn += d.length
        if (!up.destroyed && !up.write(d)) s.pause()
      })
      up.on('drain', () => { s.resume() })
      s.on('end', () => { if (!up.destroyed && !up.writableEnded) up.end() })
    }
  }

  private onResponse (h: IncomingHttpHeaders, flags: number): void {
    const s = this.stream
    if (s.destroyed || s.closed) return
    this.state = State.RESPONDING
    const status = Number(h[':status'])
    this.status = status
    const g = h['grpc-status'] // a gRPC "trailers-only" reply carries it in the head
    if (typeof g === 'string') this.grpcStatus = g
    const out = stripPseudo(h)
    out[':status'] = status
    try {
      if ((flags & NGHTTP2_FLAG_END_STREAM) !== 0) s.respond(out, { endStream: true })
      else s.respond(out, { waitForTrailers: this.wantsTrailers })
    } catch {
      // A head node:http2 will not send on (it validated it on the upstream side already).
      this.owner.upstreamError('bad-response')
      this.reason = 'upstream-bad-response'
      this.up?.close(NGHTTP2_CANCEL)
      this.resetClient(NGHTTP2_CANCEL)
    }
  }

  private onUpstreamClose (): void {
    const up = this.up
    if (up === null) return
    if (this.upDone !== null) { this.upDone(); this.upDone = null }
    const s = this.stream
    if (s.destroyed || s.closed || this.state === State.DONE) return
    const code = up.rstCode ?? NGHTTP2_NO_ERROR
    const err = this.upError
    if (err === null && code === NGHTTP2_NO_ERROR) return // a complete response; 'end' ended ours
    if (err !== null && err.code === 'ERR_HTTP2_STREAM_ERROR') {
      // The upstream reset its stream: so is the client's, with the same code (REFUSED_STREAM
      // tells the client that nothing was processed and it may retry).
      this.reason = 'upstream-reset'
      this.owner.upstreamError('reset')
      this.resetClient(code)
      return
    }
    if (!s.headersSent) {
      // No response head: the session failed (connect refused or timed out, GOAWAY, reset).
      const connect = err !== null && isConnectError(err)
      this.owner.upstreamError(connect ? 'connect' : 'reset')
      if (code === NGHTTP2_REFUSED_STREAM) { this.reason = 'upstream-refused'; this.resetClient(NGHTTP2_REFUSED_STREAM); return }
      this.reply(connect ? 503 : 502, 'allowed', connect ? 'upstream-connect' : 'upstream-reset')
      return
    }
    this.owner.upstreamError('reset')
    this.reason = 'upstream-reset'
    this.resetClient(code === NGHTTP2_NO_ERROR ? NGHTTP2_CANCEL : code)
  }

  /** The stream was idle too long (a peer not reading, a window kept at zero, a silent upstream). */
  idleTimeout (): void {
    if (this.state === State.DONE) return
    if (this.reason === '') this.reason = 'stream-idle-timeout'
    if (this.verdict === '') this.verdict = 'rejected'
    this.up?.close(NGHTTP2_CANCEL)
    this.resetClient(NGHTTP2_CANCEL)
  }

  private resetClient (code: number): void {
    const s = this.stream
    if (s.destroyed || s.closed) return
    this.resetByUs = true
    s.close(code)
  }

  private onClientClose (): void {
    if (this.state === State.DONE) return
    const s = this.stream
    const code = s.rstCode ?? NGHTTP2_NO_ERROR
    const up = this.up
    if (!this.resetByUs && code !== NGHTTP2_NO_ERROR) {
      // The client reset the stream: the upstream stream goes with it, with the same code.
      this.owner.clientReset()
      if (this.reason === '') this.reason = 'client-reset'
      if (up !== null && !up.closed) up.close(code)
    } else if (up !== null && !up.closed && !up.readableEnded) {
      // Closed on our side (a local reply after all, a timeout): the upstream answer has no taker.
      up.close(NGHTTP2_CANCEL)
    }
    this.state = State.DONE
    if (this.verdict === '') this.verdict = 'rejected'
    this.owner.finished(this)
  }
}

/** Stream errors are settled at 'close'; a listener keeps node from throwing them. */
function ignore (): void {}

/** The session never connected: a pending stream fails with the connect error as its cause. */
function isConnectError (err: NodeJS.ErrnoException): boolean {
  const e = (err.cause ?? err) as NodeJS.ErrnoException
  return e.syscall === 'connect' || e.message === UPSTREAM_CONNECT_TIMEOUT
}

/** Header fields without the pseudo-headers (which are the proxy's to write on each side). */
function stripPseudo (h: IncomingHttpHeaders): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {}
  for (const k in h) if (k.charCodeAt(0) !== 0x3a) out[k] = h[k]
  return out
}
