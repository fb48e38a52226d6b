/**
 * The access log: one line per exchange, enough for an operator to tell from that line alone
 * who talked to whom (source identity, endpoint and labels; destination address and endpoint),
 * on which rule (allowed) or why not (denied, rejected, upstream failure), and what came of it
 * (status, bytes each way, duration).
 *
 * Allowed exchanges log at info, every other outcome at warn. The line is pino JSON; with a
 * plain logger it is built by concatenation (proxy/src/log-line.ts), byte for byte what pino
 * would write.
 */
import type pino from 'pino'
import { bindingsOf, jsonString, LEVEL, millis3 } from '../log-line.js'
import type { RuleRef, Snapshot } from '../../../policy-store/src/types.js'
import type { ProxyContext } from './context.js'
import type { ConnectionPolicy, RequestView } from './policy.js'
import { clip, ruleRef, type DecisionSink } from '../decision.js'

const MSG_HTTP_REQUEST = jsonString('http request')

/**
 * How an exchange ended: forwarded, refused by policy, refused as malformed/over a limit, or
 * forwarded although policy would refuse it (the deciding endpoint audits).
 */
export type Verdict = '' | 'allowed' | 'denied' | 'rejected' | 'audit'

/** The fields of one exchange's line, and the connection's cached loggers. */
export class AccessLog {
  verdict: Verdict = ''
  /** Empty for a plain allowed exchange; otherwise the deny reason, refusal or upstream failure. */
  reason = ''
  /** The header actions the request triggered (`LOG x-a,ADD x-b`), '' when none. */
  headerActions = ''
  /** Status sent to the client (0: none, e.g. a reset). */
  status = 0
  bytesIn = 0
  bytesOut = 0
  startedAt = 0
  /**
   * Logger with this connection's source and destination as bindings, which pino serialises
   * once instead of per line (bench/micro/access-log.ts: about a third of the line's cost).
   * Rebuilt when the snapshot (endpoints, labels) changes.
   */
  private connLog: pino.Logger | null = null
  private connLogSnap: Snapshot | null = null
  /** Child of connLog with the last deciding rule bound (keep-alive clients repeat rules): another ~1.2 us per line saved. */
  private ruleLog: pino.Logger | null = null
  private ruleLogRef: RuleRef | null = null
  /** What pino serialised for connLog's and ruleLog's bindings (log-line.ts writes them as they are). */
  private connBindings = ''
  private ruleBindings = ''

  constructor (private readonly ctx: ProxyContext, private readonly policy: ConnectionPolicy,
    private readonly view: RequestView, private readonly dst: string, readonly srcPort = 0) {}

  /** A new exchange starts now. */
  begin (): void {
    this.verdict = ''
    this.reason = ''
    this.headerActions = ''
    this.status = 0
    this.bytesIn = 0
    this.bytesOut = 0
    this.startedAt = performance.now()
  }

  /** Write the exchange's line. */
  write (): void {
    if (this.ctx.deps.onDecision !== undefined) this.report(this.ctx.deps.onDecision)
    this.emit(this.view.method, this.view.path, this.verdict, this.reason, this.status, this.bytesIn, this.bytesOut,
      this.startedAt, this.policy.rule, '', '')
  }

  /**
   * Write one line. HTTP/2 streams run side by side on one connection, so their fields come as
   * arguments rather than from this object's (which serve the connection's one HTTP/1
   * exchange at a time); `protocol` and `grpcStatus` are left out of the line when empty, so an
   * HTTP/1 line keeps its fields.
   */
  emit (method: string, path: string, verdict: Verdict, reason: string, status: number, bytesIn: number, bytesOut: number,
    startedAt: number, rule: RuleRef | null, protocol: string, grpcStatus: string): void {
    const { ctx } = this
    const allowedOk = verdict === 'allowed' && reason === ''
    if (!ctx.log.isLevelEnabled(allowedOk ? 'info' : 'warn')) return
    const pol = this.policy
    const snap = pol.snapshot
    let log = this.connLog
    if (log === null || this.connLogSnap !== snap) {
      const src = pol.srcEndpoint
      const dst = pol.dstEndpoint
      log = ctx.log.child({
        srcIdentity: pol.srcIdentity,
        src: src === undefined ? pol.srcIp : src.namespace + '/' + src.name,
        srcLabels: snap?.identities.get(pol.srcIdentity),
        dst: this.dst,
        dstEndpoint: dst === undefined ? undefined : dst.namespace + '/' + dst.name
      })
      this.connLog = log
      this.connLogSnap = snap
      this.connBindings = bindingsOf(log)
      this.ruleLog = null
    }
    let bindings = this.connBindings
    if (verdict === 'allowed' && rule !== null) {
      if (this.ruleLog === null || this.ruleLogRef !== rule) {
        this.ruleLog = log.child({ rule: { file: rule.file, line: rule.line, policy: rule.policy, section: rule.section, index: rule.index } })
        this.ruleLogRef = rule
        this.ruleBindings = bindingsOf(this.ruleLog)
      }
      log = this.ruleLog
      bindings = this.ruleBindings
    }
    const elapsed = performance.now() - startedAt
    const lines = ctx.lines
    if (lines !== null) {
      // Same line as the pino call below, built by concatenation (proxy/src/log-line.ts).
      lines.write(allowedOk ? LEVEL.info : LEVEL.warn, bindings,
        (protocol === '' ? '' : ',"protocol":' + jsonString(protocol)) +
        ',"method":' + jsonString(method) + ',"path":' + jsonString(path) +
        ',"verdict":"' + verdict + '"' + (reason === '' ? '' : ',"reason":' + jsonString(reason)) +
        (this.headerActions === '' ? '' : ',"headerActions":' + jsonString(this.headerActions)) +
        ',"status":' + String(status) + (grpcStatus === '' ? '' : ',"grpcStatus":' + jsonString(grpcStatus)) +
        ',"bytesIn":' + String(bytesIn) + ',"bytesOut":' + String(bytesOut) +
        ',"durationMs":' + millis3(elapsed), MSG_HTTP_REQUEST)
      return
    }
    const rec = {
      protocol: protocol === '' ? undefined : protocol,
      method,
      path,
      verdict,
      reason: reason === '' ? undefined : reason,
      headerActions: this.headerActions === '' ? undefined : this.headerActions,
      status,
      grpcStatus: grpcStatus === '' ? undefined : grpcStatus,
      bytesIn,
      bytesOut,
      durationMs: Math.round(elapsed * 1000) / 1000
    }
    if (allowedOk) log.info(rec, 'http request')
    else log.warn(rec, 'http request')
  }

  /** The exchange's decision, for the agent's event ring. */
  private report (sink: DecisionSink): void {
    const pol = this.policy
    const v = this.verdict
    if (v === '') return
    const rule = v === 'allowed' ? pol.rule : v === 'rejected' ? null : pol.checkedRule()
    const view = this.view
    sink({
      type: 'http',
      time: Date.now(),
      srcIp: pol.srcIp,
      srcPort: this.srcPort,
      dstIp: pol.dstIp,
      dstPort: pol.dstPort,
      srcIdentity: pol.srcIdentity,
      dstIdentity: pol.dstIdentity,
      verdict: v,
      reason: this.reason,
      rule: ruleRef(rule),
      http: { method: clip(view.method), path: clip(view.path), host: clip(view.host), status: this.status }
    })
  }
}
