/**
 * HTTP proxy throughput on loopback with autocannon: `direct` (client -> backend, the baseline),
 * `allowed` (GET /healthz through the proxy, seed billing policy, method + path rule) and
 * `denied` (GET /api/v1/charge, answered 403 by the proxy). The proxy and a minimal raw-socket
 * backend run in two child processes, autocannon in this one (3 busy threads on a 2-core
 * machine: autocannon's own ceiling shows in `direct`). The access log is on (pino to /dev/null, async), as in production.
 *
 * Build, then run: `npx tsc -p tsconfig.build.json && node dist/bench/http-proxy.js`
 * Knobs (environment): CONNECTIONS (10), PIPELINING (1), DURATION seconds (10), WARMUP (2).
 * This is not the redirect path (no tc/eBPF): it measures the proxy itself.
 */
import { fork } from 'node:child_process'
import net from 'node:net'
import os from 'node:os'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import pino from 'pino'
import RE2 from 're2'
import { createHttpProxy } from '../proxy/src/http/index.js'
import { DIR, PROTO, l7Key, type HttpPolicy, type Snapshot, type StringMatcher } from '../policy-store/src/types.js'

const MONITORING = 1003

function matcher (source: string): StringMatcher {
  const re = new RE2('^(?:' + source + ')$', 'u')
  return { source, test: (v: string) => re.test(v) }
}

function seedSnapshot (port: number): Snapshot {
  const rule = (i: number, method: string, path: string): HttpPolicy => ({
    allowAll: false,
    rules: [{ method: matcher(method), path: matcher(path), host: null, headers: [], httpIndex: 0, rule: { file: 'billing-policy.yaml', line: 1, kind: 'CiliumNetworkPolicy', policy: 'default/billing-l7-policy', spec: 0, section: 'ingress', index: i } }]
  })
  const byIdentity = new Map<number, HttpPolicy>([[1001, rule(0, 'POST', '/api/v1/charge')], [1002, rule(1, 'GET', '/api/v1/invoices/.*')], [MONITORING, rule(2, 'GET', '/healthz')]])
  return {
    version: 1,
    createdAt: Date.now(),
    endpoints: [{ id: 1, name: 'billing-service', namespace: 'default', labels: { app: 'billing-service' }, identityLabels: ['k8s:app=billing-service'], identity: 1004, ipv4: '127.0.0.1', interface: 'lo', line: 1 }],
    identities: new Map([[MONITORING, ['k8s:system=monitoring']]]),
    ipcache: [],
    kernel: [],
    http: new Map([[l7Key(1, DIR.INGRESS, port), { endpointId: 1, direction: DIR.INGRESS, protocol: PROTO.TCP, port, byIdentity, anyIdentity: null }]]),
    dns: new Map(),
    fqdnSelectors: []
  }
}

/** Child 1: a raw keep-alive backend (fixed 200 per request head). */
async function serveBackend (): Promise<void> {
  const RESP = Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok')
  const backend = net.createServer(s => {
    s.setNoDelay(true)
    s.on('error', () => { s.destroy() })
    let tail = ''
    s.on('data', (d: Buffer) => {
      const text = tail + d.toString('latin1')
      let n = 0
      let i = text.indexOf('\r\n\r\n')
      let last = 0
      while (i !== -1) { n++; last = i + 4; i = text.indexOf('\r\n\r\n', last) }
      tail = text.slice(last)
      if (n === 1) s.write(RESP)
      else if (n > 1) s.write(Buffer.concat(Array(n).fill(RESP)))
    })
  })
  await new Promise<void>(resolve => backend.listen(0, '127.0.0.1', resolve))
  process.send?.({ backend: (backend.address() as net.AddressInfo).port })
}

/** Child 2: the proxy, in its own process (one core), in front of the backend. */
async function serveProxy (bport: number): Promise<void> {
  const snap = seedSnapshot(bport)
  const proxy = createHttpProxy({
    snapshot: () => snap,
    lookupIdentity: () => MONITORING, // every bench client is 127.0.0.1: give it the monitoring identity
    originalDestination: () => ({ ip: '127.0.0.1', port: bport }),
    logger: pino({ level: 'info' }, pino.destination({ dest: '/dev/null', sync: false }))
  }, { denyResponse: '403' })
  const front = net.createServer({ allowHalfOpen: true }, s => proxy.handleConnection(s))
  await new Promise<void>(resolve => front.listen(0, '127.0.0.1', resolve))
  process.send?.({ proxy: (front.address() as net.AddressInfo).port })
  process.on('message', (m) => { if (m === 'metrics') process.send?.({ metrics: proxy.metrics() }) })
}

async function main (): Promise<void> {
  const require = createRequire(import.meta.url)
  const autocannon = require('autocannon') as (o: object) => Promise<any>
  const connections = Number(process.env.CONNECTIONS ?? 10)
  const pipelining = Number(process.env.PIPELINING ?? 1)
  const duration = Number(process.env.DURATION ?? 10)
  const warmup = Number(process.env.WARMUP ?? 2)
  console.log(`node ${process.version}, ${os.cpus()[0]?.model ?? '?'} x${os.cpus().length}; connections=${connections} pipelining=${pipelining} duration=${duration}s`)
  const be = fork(fileURLToPath(import.meta.url), ['serve-backend'])
  const { backend } = await new Promise<{ backend: number }>(resolve => be.once('message', m => resolve(m as any)))
  const child = fork(fileURLToPath(import.meta.url), ['serve-proxy', String(backend)], { execArgv: process.env.PROFILE === '1' ? ['--cpu-prof', '--cpu-prof-dir=bench/results'] : [] })
  const { proxy } = await new Promise<{ proxy: number }>(resolve => child.once('message', m => resolve(m as any)))
  const ports = { backend, proxy }
  const scenarios: Array<[string, number, string, number]> = [
    ['direct', ports.backend, '/healthz', 200],
    ['allowed', ports.proxy, '/healthz', 200],
    ['denied', ports.proxy, '/api/v1/charge', 403]
  ]
  for (const [name, port, path, want] of scenarios) {
    const opts = { url: `http://127.0.0.1:${port}${path}`, connections, pipelining, headers: { host: 'billing:8080' } }
    await autocannon({ ...opts, duration: warmup })
    const r = await autocannon({ ...opts, duration })
    const statusOk = want === 200 ? r['2xx'] : r['4xx']
    console.log(`${name.padEnd(8)} ${Math.round(r.requests.average).toString().padStart(7)} req/s  p50 ${r.latency.p50} ms  p99 ${r.latency.p99} ms  ` +
      `expected-status ${statusOk}/${r.requests.total}  errors ${r.errors} non2xx ${r.non2xx}`)
  }
  child.send('metrics')
  const m = await new Promise<any>(resolve => child.once('message', resolve))
  console.log('proxy counters', JSON.stringify(m.metrics))
  child.kill('SIGINT')
  be.kill('SIGINT')
}

const mode = process.argv[2]
if (mode === 'serve-backend' || mode === 'serve-proxy') process.on('SIGINT', () => process.exit(0))
if (mode === 'serve-backend') void serveBackend()
else if (mode === 'serve-proxy') void serveProxy(Number(process.argv[3]))
else void main()
