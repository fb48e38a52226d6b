/**
 * Cost of the HTTP proxy's access-log line (one per request), in CPU time of the whole
 * process (so sonic-boom's thread-pool writes count): the record as connection.ts builds it, via
 * (a) the module logger with every field per line, (b) a per-connection child logger whose
 * bindings (source, destination, labels) pino serialises once, (c) plus the deciding rule bound
 * in a further child; and destinations: sonic-boom as the agent configures it today (async,
 * minLength 4096), sonic-boom minLength 0, and agent/log-destination.ts.
 *
 * Build, then run: `node dist/bench/micro/access-log.js` (N=100000 lines per case, ROUNDS=5, to /dev/null).
 */
import { openSync } from 'node:fs'
import pino from 'pino'
import { batchedDestination } from '../../agent/log-destination.js'

const N = Number(process.env.N ?? 100_000)

function cpuNs (t0: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(t0)
  return (d.user + d.system) * 1000
}

const labels = ['k8s:app=prometheus', 'k8s:io.kubernetes.pod.namespace=default', 'k8s:system=monitoring']
const rule = { file: 'billing-policy.yaml', line: 37, policy: 'default/billing-l7-policy', section: 'ingress', index: 2 }

interface Dest { write (s: string): unknown, flush (cb: () => void): void, end (): void }

const best = new Map<string, number>()

async function run (label: string, dest: Dest, perConnection: boolean, ruleBound = false): Promise<void> {
  const root = pino({ level: 'info', base: { component: 'warden' } }, dest as pino.DestinationStream).child({ module: 'http-proxy' })
  const conn = root.child({ srcIdentity: 1003, src: 'default/prometheus', srcLabels: labels, dst: '127.0.0.10:8080', dstEndpoint: 'default/billing-service' })
  const connRule = conn.child({ rule })
  const t0 = process.cpuUsage()
  for (let i = 0; i < N; i++) {
    if (ruleBound) {
      connRule.info({ method: 'GET', path: '/healthz', verdict: 'allowed', reason: undefined, status: 200, bytesIn: 0, bytesOut: 2, durationMs: 0.123 }, 'http request')
    } else if (perConnection) {
      conn.info({ method: 'GET', path: '/healthz', verdict: 'allowed', rule, reason: undefined, status: 200, bytesIn: 0, bytesOut: 2, durationMs: 0.123 }, 'http request')
    } else {
      root.info({ srcIdentity: 1003, src: 'default/prometheus', srcLabels: labels, dst: '127.0.0.10:8080', dstEndpoint: 'default/billing-service', method: 'GET', path: '/healthz', verdict: 'allowed', rule, reason: undefined, status: 200, bytesIn: 0, bytesOut: 2, durationMs: 0.123 }, 'http request')
    }
    // Let the event loop run now and then, as the proxy does between reads, so async writes proceed.
    if ((i & 63) === 63) await new Promise(resolve => setImmediate(resolve))
  }
  await new Promise<void>(resolve => { dest.flush(() => resolve()) })
  const ns = cpuNs(t0) / N
  best.set(label, Math.min(ns, best.get(label) ?? Infinity))
  dest.end()
}

const sonic = (o: { sync: boolean, minLength: number }): Dest => pino.destination({ dest: '/dev/null', ...o })
const noop: Dest = { write () {}, flush (cb) { cb() }, end () {} }
// The machine is shared: alternate the cases and keep each one's best run.
for (let r = 0; r < Number(process.env.ROUNDS ?? 5); r++) {
  await run('no destination (pino serialisation only), all fields', noop, false)
  await run('no destination (pino serialisation only), per-conn child', noop, true)
  await run('no destination (pino serialisation only), per-conn+rule child', noop, true, true)
  await run('sonic-boom async minLength 4096 (agent today), all fields', sonic({ sync: false, minLength: 4096 }), false)
  await run('sonic-boom async minLength 4096, per-connection child', sonic({ sync: false, minLength: 4096 }), true)
  await run('sonic-boom async minLength 0, per-connection child', sonic({ sync: false, minLength: 0 }), true)
  await run('batchedDestination 16 KiB sync, per-conn child', batchedDestination(openSync('/dev/null', 'w'), { sync: true }), true)
  await run('batchedDestination 16 KiB async (default), per-conn child', batchedDestination(openSync('/dev/null', 'w')), true)
  await run('batchedDestination 16 KiB async, per-conn+rule child', batchedDestination(openSync('/dev/null', 'w')), true, true)
}
for (const [label, ns] of best) console.log(`${label.padEnd(62)} ${ns.toFixed(0).padStart(6)} ns/line (best of rounds)`)
