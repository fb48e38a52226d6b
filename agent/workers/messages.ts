/** What the agent and its HTTP proxy workers say to each other (worker_threads messages). */
import type { HttpSnapshotWire } from './snapshot-wire.js'
import type { L7Decision } from '../../proxy/src/decision.js'
import type { Http2Limits } from '../../proxy/src/http/index.js'

/** Everything a worker needs to start (`workerData`). */
export interface HttpWorkerData {
  /** 1.. (the main thread's own proxy is 0): in every log line as `worker`. */
  index: number
  proxyPort: number
  bpffs: string
  denyResponse: '403' | 'reset'
  hasUplinks: boolean
  http2: Http2Limits
  logLevel: string
  snapshot: HttpSnapshotWire
}

export type ToWorker =
  | { type: 'snapshot', snapshot: HttpSnapshotWire }
  /** A new snapshot whose HTTP tables, endpoints and identities are the last ones sent. */
  | { type: 'version', version: number, createdAt: number }
  /** The main thread took a log batch of this many bytes (PortDestination's bound). */
  | { type: 'log-ack', bytes: number }
  | { type: 'close' }

export type FromWorker =
  /** Listening, enforcing the snapshot of its workerData (or a later one) at `version`. */
  | { type: 'ready', version: number }
  /** The policy version it enforces, sent once a snapshot or version message is applied. */
  | { type: 'policy', version: number }
  /** Encoded log lines, whole (PortDestination). */
  | { type: 'log', batch: Uint8Array }
  /** The worker's HTTP proxy counters, every second and once more when closing. */
  | { type: 'metrics', metrics: Record<string, number> }
  /** The worker's HTTP decisions since the last batch, for the agent's event ring (bounded per batch). */
  | { type: 'decisions', batch: L7Decision[] }
  | { type: 'closed' }
