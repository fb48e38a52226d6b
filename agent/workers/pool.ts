/**
 * The agent's HTTP proxy workers (`--http-workers N`): N - 1 worker threads beside the main
 * thread's own proxy, each with a listener in the proxy port's SO_REUSEPORT group (one worker per
 * core on the same transparent port, the kernel spreading connections). The main thread keeps everything else: the
 * policy store, the datapath, the DNS proxy, the metrics endpoint and the one writer of stdout.
 * A worker that dies is started again (after a second); meanwhile the others take its share.
 */
import { Worker } from 'node:worker_threads'
import type { Logger } from 'pino'
import type { Snapshot } from '../../policy-store/src/types.js'
import { httpSnapshotToWire, type HttpSnapshotWire } from './snapshot-wire.js'
import type { FromWorker, HttpWorkerData, ToWorker } from './messages.js'
import { HTTP_GAUGES, type Http2Limits } from '../../proxy/src/http/context.js'
import type { L7Decision } from '../../proxy/src/decision.js'

const GAUGES: ReadonlySet<string> = new Set(HTTP_GAUGES)

/**
 * The workers' counters summed. Each worker reports its own totals; one that dies takes them
 * along and a restarted one counts from 0, so a dead worker's last counters are kept as a base
 * and the sum never steps back (Prometheus would read a step back as a reset). Its gauges are
 * dropped: its connections are gone with it.
 */
export class WorkerCounters {
  private readonly live = new Map<number, Record<string, number>>()
  private readonly retired: Record<string, number> = {}
  /** Threads retired: a report that arrives after (none should) would count twice. */
  private readonly gone = new Set<number>()

  constructor (private readonly gauges: ReadonlySet<string> = GAUGES) {}

  /** The totals of thread `threadId` as it last reported them. */
  report (threadId: number, metrics: Record<string, number>): void {
    if (!this.gone.has(threadId)) this.live.set(threadId, metrics)
  }

  /** Thread `threadId` is gone: keep its counters, forget its gauges. */
  retire (threadId: number): void {
    this.gone.add(threadId)
    const m = this.live.get(threadId)
    if (m === undefined) return
    for (const [k, v] of Object.entries(m)) if (!this.gauges.has(k)) this.retired[k] = (this.retired[k] ?? 0) + v
    this.live.delete(threadId)
  }

  sum (): Record<string, number> {
    const out: Record<string, number> = { ...this.retired }
    for (const m of this.live.values()) for (const [k, v] of Object.entries(m)) out[k] = (out[k] ?? 0) + v
    return out
  }
}

export interface HttpWorkersOptions {
  /** Worker threads to start (the main thread's proxy is not counted here). */
  count: number
  proxyPort: number
  bpffs: string
  denyResponse: '403' | 'reset'
  /** The agent has an uplink: every upstream connection keeps its client's address (upstream-source.ts). Default false. */
  hasUplinks?: boolean
  /** HTTP/2 limits for every worker's proxy (none: the proxy's defaults). */
  http2?: Http2Limits
  logLevel: string
  snapshot: Snapshot
  logger: Logger
  /** Where the workers' encoded log lines go (the main thread's destination). */
  writeLog: (batch: Uint8Array) => void
  /** Where the workers' HTTP decisions go (the agent's event ring). */
  onDecisions?: (batch: L7Decision[]) => void
  /** How long a worker may take to start (listen) or to stop; default 10 s. */
  timeoutMs?: number
  /** Wait before starting a worker that died again; default 1 s. */
  restartMs?: number
  /** Worker `index` (1..) runs and enforces policy `version`: once listening, then after each snapshot it applied. */
  onEnforced?: (index: number, version: number) => void
  /** Worker `index` stopped running (its thread exited). */
  onStopped?: (index: number) => void
}

interface Slot {
  index: number
  worker: Worker | null
}

/** The worker's module: the .js beside this file when built, the .ts under tap's TypeScript loader. */
function entry (): URL {
  return new URL(import.meta.url.endsWith('.ts') ? './http-worker.ts' : './http-worker.js', import.meta.url)
}

export class HttpWorkers {
  private readonly slots: Slot[] = []
  private snapshot: HttpSnapshotWire
  /** The snapshot whose HTTP tables, endpoints and identities the workers have. */
  private sentFrom: Snapshot | undefined
  private closing = false
  private readonly timers = new Set<NodeJS.Timeout>()
  private readonly counters = new WorkerCounters()

  private constructor (private readonly opts: HttpWorkersOptions) {
    this.snapshot = httpSnapshotToWire(opts.snapshot)
    this.sentFrom = opts.snapshot
  }

  /** Starts every worker and resolves once each listens; rejects (having stopped them) if one does not. */
  static async start (opts: HttpWorkersOptions): Promise<HttpWorkers> {
    const pool = new HttpWorkers(opts)
    try {
      for (let i = 1; i <= opts.count; i++) {
        const slot: Slot = { index: i, worker: null }
        pool.slots.push(slot)
        await pool.run(slot)
      }
    } catch (err) {
      await pool.close()
      throw err
    }
    return pool
  }

  get size (): number { return this.slots.length }

  /** The running threads by worker index (null while one is being started again). */
  get threads (): ReadonlyArray<Worker | null> { return this.slots.map((s) => s.worker) }

  private async run (slot: Slot): Promise<void> {
    const o = this.opts
    const timeoutMs = o.timeoutMs ?? 10_000
    const data: HttpWorkerData = { index: slot.index, proxyPort: o.proxyPort, bpffs: o.bpffs, denyResponse: o.denyResponse, hasUplinks: o.hasUplinks ?? false, http2: o.http2 ?? {}, logLevel: o.logLevel, snapshot: this.snapshot }
    const worker = new Worker(entry(), { workerData: data })
    slot.worker = worker
    const tid = worker.threadId // -1 once it has exited
    let ready = false
    worker.on('message', (m: FromWorker) => {
      if (m.type === 'log') {
        o.writeLog(m.batch)
        worker.postMessage({ type: 'log-ack', bytes: m.batch.byteLength } satisfies ToWorker)
      }
      else if (m.type === 'metrics') this.counters.report(tid, m.metrics)
      else if (m.type === 'policy') o.onEnforced?.(slot.index, m.version)
      else if (m.type === 'decisions') o.onDecisions?.(m.batch)
    })
    worker.on('error', (err) => { if (ready) o.logger.error({ err, worker: slot.index }, 'HTTP proxy worker failed') })
    worker.once('exit', (code) => {
      if (slot.worker === worker) slot.worker = null
      this.counters.retire(tid)
      if (ready) o.onStopped?.(slot.index)
      if (!ready || this.closing) return
      o.logger.error({ worker: slot.index, code }, 'HTTP proxy worker exited; starting it again')
      const timer = setTimeout(() => {
        this.timers.delete(timer)
        if (this.closing) return
        this.run(slot).catch((err) => o.logger.error({ err, worker: slot.index }, 'HTTP proxy worker did not start again'))
      }, o.restartMs ?? 1000)
      this.timers.add(timer)
    })
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`HTTP proxy worker ${slot.index} did not start in ${timeoutMs} ms`)), timeoutMs)
      worker.on('message', (m: FromWorker) => {
        if (m.type !== 'ready') return
        ready = true
        clearTimeout(timer)
        o.onEnforced?.(slot.index, m.version)
        resolve()
      })
      worker.once('error', (err) => { clearTimeout(timer); reject(err) })
      worker.once('exit', (code) => { clearTimeout(timer); reject(new Error(`HTTP proxy worker ${slot.index} exited (${code}) before it was ready`)) })
    })
    // a snapshot may have arrived while it was starting
    if (data.snapshot !== this.snapshot) worker.postMessage({ type: 'snapshot', snapshot: this.snapshot } satisfies ToWorker)
  }

  /** Every worker enforces `snap` from its next request on. */
  update (snap: Snapshot): void {
    const last = this.sentFrom
    if (last !== undefined && last.http === snap.http && last.endpoints === snap.endpoints && last.identities === snap.identities) {
      // Nothing a worker enforces changed (another node's address, a kernel-only entry): the
      // version only, not the identities and tables again.
      this.snapshot = { ...this.snapshot, version: snap.version, createdAt: snap.createdAt }
      const v: ToWorker = { type: 'version', version: snap.version, createdAt: snap.createdAt }
      for (const s of this.slots) s.worker?.postMessage(v)
      return
    }
    this.sentFrom = snap
    this.snapshot = httpSnapshotToWire(snap)
    const m: ToWorker = { type: 'snapshot', snapshot: this.snapshot }
    for (const s of this.slots) s.worker?.postMessage(m)
  }

  /** The workers' HTTP counters summed (each as of its last report, at most a second old), dead workers' included. */
  metrics (): Record<string, number> {
    return this.counters.sum()
  }

  /** Close every worker's listener and connections, then end the threads (after `timeoutMs` at the latest). */
  async close (): Promise<void> {
    this.closing = true
    for (const t of this.timers) clearTimeout(t)
    this.timers.clear()
    const timeoutMs = this.opts.timeoutMs ?? 10_000
    await Promise.all(this.slots.map(async (s) => {
      const w = s.worker
      if (w === null) return
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs)
        w.on('message', (m: FromWorker) => { if (m.type === 'closed') { clearTimeout(timer); resolve() } })
        w.once('exit', () => { clearTimeout(timer); resolve() })
        w.postMessage({ type: 'close' } satisfies ToWorker)
      })
      // its lines and last counters have arrived by now ('closed' comes after them)
      await w.terminate()
    }))
  }
}
