/**
 * The agent's HTTP proxy workers (`--http-workers N`): N - 1 worker threads beside the main
 * thread's own proxy, each with a listener in the proxy port's SO_REUSEPORT group (issue 4: one
 * worker per core on the same transparent port). The main thread keeps everything else: the
 * policy store, the datapath, the DNS proxy, the metrics endpoint and the one writer of stdout.
 */
import { Worker } from 'node:worker_threads'
import type { Logger } from 'pino'
import type { Snapshot } from '../../policy-store/src/types.js'
import { httpSnapshotToWire } from '../../proxy/src/http/snapshot-wire.js'
import type { FromWorker, HttpWorkerData, ToWorker } from './messages.js'

export interface HttpWorkersOptions {
  /** Worker threads to start (the main thread's proxy is not counted here). */
  count: number
  proxyPort: number
  bpffs: string
  denyResponse: '403' | 'reset'
  logLevel: string
  snapshot: Snapshot
  logger: Logger
  /** Where the workers' encoded log lines go (the main thread's destination). */
  writeLog: (batch: Uint8Array) => void
  /** How long a worker may take to start (listen) or to stop; default 10 s. */
  timeoutMs?: number
}

interface Running {
  worker: Worker
  metrics: Record<string, number>
  closed: Promise<void>
}

/** The worker's module: the .js beside this file when built, the .ts under tap's TypeScript loader. */
function entry (): URL {
  return new URL(import.meta.url.endsWith('.ts') ? './http-worker.ts' : './http-worker.js', import.meta.url)
}

export class HttpWorkers {
  private constructor (private readonly running: Running[], private readonly timeoutMs: number) {}

  static async start (opts: HttpWorkersOptions): Promise<HttpWorkers> {
    const timeoutMs = opts.timeoutMs ?? 10_000
    const snapshot = httpSnapshotToWire(opts.snapshot)
    const running: Running[] = []
    const pool = new HttpWorkers(running, timeoutMs)
    try {
      for (let i = 1; i <= opts.count; i++) {
        const data: HttpWorkerData = { index: i, proxyPort: opts.proxyPort, bpffs: opts.bpffs, denyResponse: opts.denyResponse, logLevel: opts.logLevel, snapshot }
        const worker = new Worker(entry(), { workerData: data })
        const r: Running = { worker, metrics: {}, closed: new Promise((resolve) => worker.once('exit', () => resolve())) }
        running.push(r)
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`HTTP proxy worker ${i} did not start in ${timeoutMs} ms`)), timeoutMs)
          worker.on('message', (m: FromWorker) => {
            if (m.type === 'ready') { clearTimeout(timer); resolve() } else if (m.type === 'log') opts.writeLog(m.batch)
            else if (m.type === 'metrics') r.metrics = m.metrics
          })
          worker.once('error', (err) => { clearTimeout(timer); reject(err) })
          worker.once('exit', (code) => { clearTimeout(timer); reject(new Error(`HTTP proxy worker ${i} exited (${code}) before it was ready`)) })
        })
        // after start, a worker that dies is logged; its connections are gone, the others serve
        worker.on('error', (err) => opts.logger.error({ err, worker: i }, 'HTTP proxy worker failed'))
        worker.on('exit', (code) => { if (code !== 0) opts.logger.error({ worker: i, code }, 'HTTP proxy worker exited') })
      }
    } catch (err) {
      await pool.close()
      throw err
    }
    return pool
  }

  get size (): number { return this.running.length }

  /** Every worker enforces `snap` from its next request on. */
  update (snap: Snapshot): void {
    const m: ToWorker = { type: 'snapshot', snapshot: httpSnapshotToWire(snap) }
    for (const r of this.running) r.worker.postMessage(m)
  }

  /** The workers' HTTP counters summed (each as of its last report, at most a second old). */
  metrics (): Record<string, number> {
    const sum: Record<string, number> = {}
    for (const r of this.running) for (const [k, v] of Object.entries(r.metrics)) sum[k] = (sum[k] ?? 0) + v
    return sum
  }

  /** Close every worker's listener and connections, then end the threads (after `timeoutMs` at the latest). */
  async close (): Promise<void> {
    await Promise.all(this.running.map(async (r) => {
      const done = new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), this.timeoutMs)
        r.worker.on('message', (m: FromWorker) => { if (m.type === 'closed') { clearTimeout(timer); resolve(true) } })
        void r.closed.then(() => { clearTimeout(timer); resolve(true) })
      })
      r.worker.postMessage({ type: 'close' } satisfies ToWorker)
      await done
      // its lines and last counters have arrived by now ('closed' comes after them)
      await r.worker.terminate()
    }))
  }
}
