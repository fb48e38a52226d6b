/**
 * Kernel flow events to pino lines, rate-limited: a port scan or a flood of drops must not turn
 * the agent's log into the bottleneck. Up to `perSecond` lines each second; the rest are counted
 * and reported in one summary line per second in which something was suppressed.
 */
import type { Logger } from 'pino'
import type { FlowEvent } from '../redirect-bpf/src/index.js'

export class FlowLogLimiter {
  private readonly log: Logger
  private readonly perSecond: number
  private budget: number
  private suppressed: number
  private readonly timer: NodeJS.Timeout

  constructor (log: Logger, perSecond: number) {
    this.log = log
    this.perSecond = perSecond
    this.budget = perSecond
    this.suppressed = 0
    this.timer = setInterval(() => this.tick(), 1000)
    this.timer.unref()
  }

  /** Log one event; drops and audits go at warn so an operator sees them at the default level. */
  logEvent (ev: FlowEvent): void {
    if (this.budget <= 0) { this.suppressed++; return }
    this.budget--
    // pino writes its own `time` (when the line was written): the packet's goes as `packetTime`
    const { time, ...rest } = ev
    const rec = { ...rest, packetTime: time }
    if (ev.verdict === 'dropped') this.log.warn(rec, 'flow dropped')
    else if (ev.verdict === 'audit') this.log.warn(rec, 'flow audit') // would have been dropped
    else this.log.info(rec, 'flow')
  }

  private tick (): void {
    if (this.suppressed > 0) this.log.warn({ suppressed: this.suppressed }, 'flow log rate limit: lines suppressed')
    this.suppressed = 0
    this.budget = this.perSecond
  }

  close (): void { clearInterval(this.timer) }
}
