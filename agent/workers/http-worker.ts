/**
 * One HTTP proxy worker (a worker thread): its own transparent listener on the proxy port, in
 * the SO_REUSEPORT group of the main thread's, so the kernel spreads the connections that the
 * datapath assigns to the port over every worker (bpf_sk_assign selects within the group). It
 * enforces the snapshots the agent sends (HTTP part only, snapshot-wire.ts), looks identities up
 * in the pinned ipcache itself, and sends its log lines and counters to the main thread.
 */
import { parentPort, workerData } from 'node:worker_threads'
import pino from 'pino'
import { createHttpProxy, SERVER_OPTIONS } from '../../proxy/src/http/index.js'
import { httpSnapshotFromWire } from './snapshot-wire.js'
import type { L7Decision } from '../../proxy/src/decision.js'
import { listenTransparentTcp } from '../../proxy/src/transparent.js'
import { openIpcacheReader, PROXY_SOCKET_MARK } from '../../redirect-bpf/src/index.js'
import { PortDestination } from './log.js'
import { upstreamSource } from '../upstream-source.js'
import type { FromWorker, HttpWorkerData, ToWorker } from './messages.js'

const port = parentPort
if (port === null) throw new Error('http-worker.ts runs as a worker thread')
const data = workerData as HttpWorkerData
const send = (m: FromWorker, transfer?: ArrayBuffer[]): void => { port.postMessage(m, transfer) }

const dest = new PortDestination((batch) => { send({ type: 'log', batch }, [batch.buffer as ArrayBuffer]) })
const logger = pino({ level: data.logLevel, base: { component: 'warden', worker: data.index } }, dest)
let { snapshot: active, matchers } = httpSnapshotFromWire(data.snapshot)
const ipcache = openIpcacheReader(data.bpffs)
// Decisions go to the agent's event ring in batches, one message per 100 ms at most; beyond
// DECISIONS_MAX a batch drops the rest (the access log still has every exchange).
const DECISIONS_MAX = 1024
let decisions: L7Decision[] = []
let decisionsDropped = 0
let decisionTimer: NodeJS.Timeout | null = null
const flushDecisions = (): void => {
  decisionTimer = null
  if (decisions.length === 0) return
  send({ type: 'decisions', batch: decisions })
  decisions = []
}
const http = createHttpProxy({
  snapshot: () => active,
  lookupIdentity: ipcache.lookupIdentity,
  upstreamSource: upstreamSource(data.hasUplinks, () => active),
  onDecision: (d) => {
    if (decisions.length < DECISIONS_MAX) decisions.push(d); else decisionsDropped++
    decisionTimer ??= setTimeout(flushDecisions, 100)
  },
  logger: logger.child({ module: 'http-proxy' })
}, { ...data.http2, denyResponse: data.denyResponse, upstreamSocketMark: PROXY_SOCKET_MARK })
const server = await listenTransparentTcp(data.proxyPort, '0.0.0.0', 511, SERVER_OPTIONS, PROXY_SOCKET_MARK)
server.on('connection', (socket) => http.handleConnection(socket))
const metrics = (): Record<string, number> => ({ ...http.metrics(), log_dropped: dest.dropped, decisions_dropped: decisionsDropped })
const ticker = setInterval(() => { send({ type: 'metrics', metrics: metrics() }) }, 1000)

port.on('message', (m: ToWorker) => {
  if (m.type === 'log-ack') {
    dest.acked(m.bytes)
    return
  }
  if (m.type === 'snapshot') {
    ({ snapshot: active, matchers } = httpSnapshotFromWire(m.snapshot, matchers))
    send({ type: 'policy', version: active.version })
    return
  }
  if (m.type === 'version') {
    active = Object.freeze({ ...active, version: m.version, createdAt: m.createdAt })
    send({ type: 'policy', version: active.version })
    return
  }
  clearInterval(ticker)
  if (decisionTimer !== null) clearTimeout(decisionTimer)
  flushDecisions()
  server.close()
  http.close().then(() => {
    ipcache.close()
    send({ type: 'metrics', metrics: metrics() })
    dest.end()
    send({ type: 'closed' })
    port.close()
  }, (err: Error) => { logger.error({ err }, 'closing the worker failed') })
})
logger.child({ module: 'http-proxy' }).debug({ port: data.proxyPort }, 'worker listening')
send({ type: 'ready', version: active.version })
