/**
 * One HTTP/2 client connection: a node:http2 server session on the socket the HTTP/1 side
 * handed over, one H2Exchange per stream, and the limits nghttp2 does not keep by itself.
 *
 * Kept by nghttp2 / node:http2 from the settings the proxy sends (http2/index.ts): concurrent
 * streams (a stream beyond them is refused with RST_STREAM REFUSED_STREAM, and a client that
 * keeps opening them is sent GOAWAY ENHANCE_YOUR_CALM), the header list size (RST_STREAM
 * ENHANCE_YOUR_CALM), the HPACK table size (a larger table update is a COMPRESSION_ERROR),
 * CONTINUATION floods, PING and SETTINGS acknowledgements a client does not read (GOAWAY
 * ENHANCE_YOUR_CALM), and malformed frames (GOAWAY with the RFC's error code).
 *
 * Kept here: streams reset by the client (rapid reset: each one may have cost an upstream
 * stream, so past `maxResetsPerSecond` in one second the connection gets GOAWAY
 * ENHANCE_YOUR_CALM and closes), SETTINGS frames per second (each makes nghttp2 walk and
 * acknowledge its entries), the idle connection timeout (graceful GOAWAY) and the idle stream
 * timeout (RST_STREAM CANCEL, which is also how a zero-window stall ends).
 */
import http2, { type IncomingHttpHeaders, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2'
import type { ProxyContext } from '../http/context.js'
import { AccessLog } from '../http/access-log.js'
import { RequestView, type ConnectionPolicy } from '../http/policy.js'
import { H2Exchange, type ExchangeOwner } from './exchange.js'
import { applyH2HeaderActions, isRefusal, readH2Request } from './request.js'
import { clip, ruleRef } from '../decision.js'
import type { H2UpstreamPool } from './upstream.js'

const { NGHTTP2_ENHANCE_YOUR_CALM, NGHTTP2_FLAG_END_STREAM } = http2.constants

/** What the HTTP/1 side resolved for the connection before handing it over. */
export interface H2ConnInfo {
  policy: ConnectionPolicy
  /** Original destination, `ip:port` (logs). */
  dst: string
  /** The client's port (the event ring's decisions). */
  srcPort: number
  /** Where upstream sessions go, and the pool key's destination part. */
  upIp: string
  upPort: number
  /** Names the destination, and `upSource` when there is one (the HTTP/1 pool's key). */
  upKey: string
  /** The address upstream sessions leave from: the client's when kept, '' for the node's. */
  upSource: string
}

/** Longest quiet time before a connection is probed with a PING (see onQuiet). */
const PROBE_MS = 5000
/** How long a connection that was sent GOAWAY may take to finish its streams. */
const GOAWAY_GRACE_MS = 5000

export class H2Conn implements ExchangeOwner {
  private readonly view = new RequestView()
  private readonly log: AccessLog
  private readonly poolKey: string
  private resetWindowStart = 0
  private resetsInWindow = 0
  private settingsWindowStart = 0
  private settingsInWindow = 0
  private calm = false
  /** Streams open, and when one last opened or closed (the idle timeout counts from there). */
  private streams = 0
  private lastActive = Date.now()
  /** A PING of ours is unanswered (see onQuiet). */
  private probing = false
  private readonly quietMs: number

  constructor (private readonly ctx: ProxyContext, readonly session: ServerHttp2Session, private readonly info: H2ConnInfo,
    private readonly pool: H2UpstreamPool, onClose: (c: H2Conn) => void) {
    this.log = new AccessLog(ctx, info.policy, this.view, info.dst)
    // Upstream sessions are shared per destination, source address (in upKey when kept) AND
    // source identity, as each connection the proxy makes stands for one client identity.
    this.poolKey = info.upKey + '/' + String(info.policy.srcIdentity)
    const c = ctx.counters
    c.h2_connections_total++
    c.h2_connections_active++
    session.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, flags: number, raw: string[]) => {
      try {
        this.onStream(stream, headers, flags, raw)
      } catch (err) {
        // A bug here must cost one stream, never the agent and every connection it serves.
        ctx.log.error({ err }, 'http2: stream failed')
        if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR)
      }
    })
    // nghttp2 has already answered a protocol error with GOAWAY; the session closes after it.
    session.on('error', (err: NodeJS.ErrnoException) => {
      c.h2_session_errors++
      const pol = info.policy
      ctx.log.warn({ code: 'WARDEN_ERR_HTTP2_SESSION', srcIdentity: pol.srcIdentity, src: pol.srcIp, dst: info.dst, reason: err.code, detail: err.message },
        'http2 connection error')
    })
    session.on('frameError', () => { c.h2_session_errors++ })
    session.on('remoteSettings', () => { this.onSettings() })
    // setTimeout's callback runs once; the listener runs at every quiet period.
    this.quietMs = Math.min(ctx.opts.h2IdleTimeoutMs, PROBE_MS)
    session.setTimeout(this.quietMs)
    session.on('timeout', () => { this.onQuiet() })
    // When nghttp2 reports a connection error to node:http2 (a client opening streams past the
    // acknowledged limit, a stream id going backwards, a flood of frames to acknowledge), node
    // destroys the session with GOAWAY INTERNAL_ERROR; the client is owed the RFC's code.
    const destroy = session.destroy.bind(session)
    session.destroy = (err?: Error | null, code?: number) => { destroy(err ?? undefined, code ?? goawayCodeFor(err)) }
    session.once('close', () => {
      c.h2_connections_active--
      onClose(this)
    })
  }

  private onStream (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, flags: number, raw: string[]): void {
    const { ctx } = this
    const c = ctx.counters
    c.h2_requests++
    const x = new H2Exchange(this, stream)
    this.streams++
    this.lastActive = Date.now()
    stream.setTimeout(ctx.opts.h2StreamIdleTimeoutMs, () => { x.idleTimeout() })
    if (this.calm) { x.denyReset('connection-closing'); return }
    const view = this.view
    const fwd = readH2Request(raw, view)
    if (isRefusal(fwd)) {
      x.method = String(headers[':method'] ?? '')
      x.path = String(headers[':path'] ?? '')
      c.h2_rejected++
      x.reply(fwd.status, 'rejected', fwd.reason)
      return
    }
    x.method = view.method
    x.path = view.path
    x.host = view.host
    // The policy is read fresh at each stream's HEADERS: an edit applies to the next stream.
    const pol = this.info.policy
    pol.refresh(ctx.deps.snapshot())
    if (pol.decide(view)) {
      c.h2_allowed++
      x.rule = pol.rule
      if (pol.actions.length > 0) applyH2HeaderActions(fwd, pol.actions)
    } else if (pol.audits()) {
      // audit mode: forwarded, and logged with the reason policy would have denied it
      c.audited++
      x.verdict = 'audit'
      x.reason = pol.reason ?? 'no-l7-table'
    } else {
      c.h2_denied++
      const reason = pol.reason ?? 'no-l7-table'
      if (ctx.opts.denyResponse === 'reset') x.denyReset(reason)
      else x.reply(403, 'denied', reason)
      return
    }
    x.wantsTrailers = fwd.te === 'trailers'
    const lease = this.pool.acquire(this.poolKey, this.info.upIp, this.info.upPort, this.info.upSource, pol.srcIp)
    if ('refused' in lease) {
      // Never from another address than the one kept, nor past the pool's bound or the
      // client's share of it: 503.
      this.upstreamError('connect')
      if (lease.refused === 'full') {
        c.h2_upstream_sessions_full++
        x.unavailable('upstream-sessions-full')
      } else if (lease.refused === 'source-full') {
        c.h2_upstream_sessions_source_full++
        x.unavailable('upstream-sessions-source-full')
      } else {
        ctx.log.warn({ code: lease.err.code, srcIdentity: pol.srcIdentity, src: pol.srcIp, dst: this.info.dst, detail: lease.err.message },
          'http2: cannot bind the upstream session to the client\'s address')
        x.unavailable('upstream-connect')
      }
      return
    }
    x.forward(lease.session, lease.done, fwd, (flags & NGHTTP2_FLAG_END_STREAM) !== 0)
  }

  replyBody (status: number): string {
    if (status === 403) return this.ctx.opts.deny403Body + '\r\n'
    return BODIES[status] ?? 'Error\r\n'
  }

  finished (x: H2Exchange): void {
    this.streams--
    this.lastActive = Date.now()
    this.log.emit(x.method, x.path, x.verdict, x.reason, x.status, x.bytesIn, x.bytesOut, x.startedAt,
      x.verdict === 'allowed' ? x.rule : null, 'HTTP/2', x.grpcStatus)
    const sink = this.ctx.deps.onDecision
    if (sink !== undefined && x.verdict !== '') {
      const pol = this.info.policy
      const rule = x.verdict === 'allowed' ? x.rule : x.verdict === 'rejected' ? null : pol.checkedRule()
      sink({
        type: 'http',
        time: Date.now(),
        srcIp: pol.srcIp,
        srcPort: this.info.srcPort,
        dstIp: pol.dstIp,
        dstPort: pol.dstPort,
        srcIdentity: pol.srcIdentity,
        dstIdentity: pol.dstIdentity,
        verdict: x.verdict,
        reason: x.reason,
        rule: ruleRef(rule),
        http: { method: clip(x.method), path: clip(x.path), host: clip(x.host), status: x.status }
      })
    }
  }

  clientReset (): void {
    this.ctx.counters.h2_client_resets++
    const now = Date.now()
    if (now - this.resetWindowStart >= 1000) { this.resetWindowStart = now; this.resetsInWindow = 0 }
    if (++this.resetsInWindow > this.ctx.opts.h2MaxResetsPerSecond) this.enhanceYourCalm('rapid-reset')
  }

  upstreamError (kind: 'connect' | 'reset' | 'bad-response'): void {
    const c = this.ctx.counters
    if (kind === 'connect') c.h2_upstream_errors_connect++
    else if (kind === 'reset') c.h2_upstream_errors_reset++
    else c.h2_upstream_errors_bad_response++
  }

  private onSettings (): void {
    const now = Date.now()
    if (now - this.settingsWindowStart >= 1000) { this.settingsWindowStart = now; this.settingsInWindow = 0 }
    if (++this.settingsInWindow > this.ctx.opts.h2MaxSettingsPerSecond) this.enhanceYourCalm('settings-flood')
  }

  /** GOAWAY ENHANCE_YOUR_CALM and close: the client's own streams go with it. */
  private enhanceYourCalm (why: string): void {
    if (this.calm) return
    this.calm = true
    this.ctx.counters.h2_goaway_calm++
    const pol = this.info.policy
    this.ctx.log.warn({ code: 'WARDEN_ERR_HTTP2_CALM', srcIdentity: pol.srcIdentity, src: pol.srcIp, dst: this.info.dst, reason: why },
      'http2 connection closed: GOAWAY ENHANCE_YOUR_CALM')
    this.session.destroy(NGHTTP2_ENHANCE_YOUR_CALM as unknown as Error)
  }

  /**
   * No frame either way for a while. Idle long enough, and no stream open: GOAWAY. Otherwise a
   * PING; if the previous one is still unanswered, the connection is closed. That also ends
   * connections nghttp2 gave up on: after a connection error it sends GOAWAY and stops
   * reading, but node:http2 keeps the socket open until the peer closes it.
   */
  private onQuiet (): void {
    const s = this.session
    if (s.destroyed) return
    if (this.probing) { this.destroy(); return }
    if (this.streams === 0 && Date.now() - this.lastActive >= this.ctx.opts.h2IdleTimeoutMs) { this.goaway(); return }
    this.probing = true
    try {
      s.ping(() => { this.probing = false })
    } catch {
      this.destroy()
      return
    }
    // node:http2 re-arms its timer only on stream activity: re-arm it for the answer.
    s.setTimeout(this.quietMs)
  }

  /** Graceful close (idle, agent stopping): GOAWAY NO_ERROR, streams in flight may finish. */
  goaway (): void {
    const s = this.session
    if (s.closed || s.destroyed) return
    // The last stream we took, so the client knows every later one was not processed.
    s.goaway(http2.constants.NGHTTP2_NO_ERROR, s.state.lastProcStreamID ?? 0)
    s.close()
    setTimeout(() => { if (!s.destroyed) s.destroy() }, GOAWAY_GRACE_MS).unref()
  }

  destroy (): void {
    if (!this.session.destroyed) this.session.destroy()
  }
}

/** nghttp2's library errors (nghttp2.h) that node:http2 reports as a session error, by GOAWAY code. */
const NGHTTP2_LIB_ERRORS: Record<number, number> = {
  [-505]: http2.constants.NGHTTP2_PROTOCOL_ERROR, // NGHTTP2_ERR_PROTO
  [-523]: http2.constants.NGHTTP2_COMPRESSION_ERROR, // NGHTTP2_ERR_HEADER_COMP
  [-524]: http2.constants.NGHTTP2_FLOW_CONTROL_ERROR, // NGHTTP2_ERR_FLOW_CONTROL
  [-522]: http2.constants.NGHTTP2_FRAME_SIZE_ERROR, // NGHTTP2_ERR_FRAME_SIZE_ERROR
  [-904]: NGHTTP2_ENHANCE_YOUR_CALM // NGHTTP2_ERR_FLOODED
}

function goawayCodeFor (err: Error | null | undefined): number | undefined {
  // node calls destroy(null) on a session closing normally
  if (err === undefined || err === null || typeof err !== 'object') return undefined
  const e = err as NodeJS.ErrnoException
  if (e.code !== 'ERR_HTTP2_ERROR' || typeof e.errno !== 'number') return undefined
  return NGHTTP2_LIB_ERRORS[e.errno]
}

const BODIES: Record<number, string> = {
  400: 'Bad Request\r\n',
  501: 'Not Implemented\r\n',
  502: 'upstream reset before response headers\r\n',
  503: 'upstream connect error\r\n'
}
