/**
 * HTTP proxy throughput on loopback with autocannon: `direct` (client -> backend, the baseline),
 * `allowed` (GET /healthz through the proxy, seed billing policy, method + path rule) and
 * `denied` (GET /api/v1/charge, answered 403 by the proxy) and `sketch` (a raw forwarder, the
 * floor: see sketchProxy; not run unless named in SCENARIOS). The proxy and a minimal raw-socket
 * backend run in two child processes, autocannon in this one. The access log is on (pino to
 * /dev/null, buffered as the agent does it).
 *
 * The policy is the seed's demo/policies/billing-policy.yaml compiled by the policy store's
 * `loadSnapshot`, with prometheus (the monitoring identity) on 127.0.0.1 (where autocannon
 * connects from) and billing-service on 127.0.0.10:8080 (the original destination; the bytes go
 * to the backend's ephemeral port through the `upstreamAddress` seam).
 *
 * On a shared, loaded machine wall-clock req/s means little, so besides req/s this prints
 * requests per proxy CPU-second (the proxy process's user+system time over the measured
 * interval): the number to compare between versions.
 *
 * Build, then run from the repository root: `npx tsc -p tsconfig.build.json && node dist/bench/http-proxy.js`
 * Knobs (environment): CONNECTIONS (10), PIPELINING (1), DURATION seconds (10), WARMUP (2),
 * SCENARIOS (direct,allowed,denied,latency; `latency` = the added p50 per hop: one connection, one
 * request in flight, hrtime-timed, LATENCY_N requests each way, also through HAProxy with the same rules
 * when it is installed, LATENCY_HAPROXY=0 to skip it),
 * REPEAT (1: runs of each scenario, compare the best on a noisy machine), LOG=0 (no access log: its cost),
 * LOGDEST (batched, the agent's: agent/log-destination.ts, LOGMIN bytes per batch; batched-sync; sonic: pino.destination), PROFILE=1 (--cpu-prof of the proxy into PROFILE_DIR, default the temp dir).
 * This is not the redirect path (no tc/eBPF): it measures the proxy itself.
 */
import { fork } from 'node:child_process'
import { existsSync, openSync } from 'node:fs'
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import { join, resolve as resolvePath } from 'node:path'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import type Autocannon from 'autocannon'
import pino from 'pino'
import { createHttpProxy, SERVER_OPTIONS } from '../proxy/src/http/index.js'
import type { NativeParserCtor } from '../proxy/src/http/llhttp.js'
import { batchedDestination } from '../agent/log-destination.js'
import { haproxyConfig } from './peer-config.js'
import { Proc, waitForTcp } from './procs.js'
import { rulesFromSnapshot } from './peer-rules.js'
import { loadSnapshot, lookupIpcache, MemoryIdentityAllocator, formatPolicyError, type Snapshot } from '../policy-store/src/index.js'

const BILLING_PORT = 8080
const ENDPOINTS = `endpoints:
  - {name: billing-service, labels: {app: billing-service, class: sensitive}, ipv4: 127.0.0.10, interface: wdb-billing}
  - {name: checkout-service, labels: {app: checkout-service}, ipv4: 127.0.0.2, interface: wdb-checkout}
  - {name: auditing-service, labels: {app: auditing-service}, ipv4: 127.0.0.3, interface: wdb-auditing}
  - {name: prometheus, labels: {app: prometheus, system: monitoring}, ipv4: 127.0.0.1, interface: wdb-prom}
`

/** The seed policy file: next to the built bench (dist/bench -> repo root) or under the working directory. */
function seedPolicyFile (): string {
  const candidates = [fileURLToPath(new URL('../../demo/policies/billing-policy.yaml', import.meta.url)), resolvePath('demo/policies/billing-policy.yaml')]
  for (const c of candidates) if (existsSync(c)) return c
  throw new Error('demo/policies/billing-policy.yaml not found: run from the repository root')
}

async function seedSnapshot (): Promise<Snapshot> {
  const dir = await mkdtemp(join(os.tmpdir(), 'warden-http-bench-'))
  try {
    const endpoints = join(dir, 'endpoints.yaml')
    await writeFile(endpoints, ENDPOINTS)
    const policies = join(dir, 'policies')
    await mkdir(policies)
    await copyFile(seedPolicyFile(), join(policies, 'billing-policy.yaml'))
    const { snapshot, errors } = await loadSnapshot({ policies, endpoints, allocator: new MemoryIdentityAllocator(), watch: false })
    if (errors.length > 0) throw new Error('bench policy does not load:\n' + errors.map(e => formatPolicyError(e)).join('\n'))
    return snapshot
  } finally {
    await rm(dir, { recursive: true, force: true })
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
  const snap = await seedSnapshot()
  const billing = snap.endpoints.find(e => e.name === 'billing-service')
  if (billing === undefined) throw new Error('no billing-service endpoint')
  const dst = { ip: billing.ipv4, port: BILLING_PORT }
  // LOGDEST=batched (default): the agent's logger (agent/agent.ts), agent/log-destination.ts.
  // LOGDEST=sonic: pino.destination (sonic-boom, 4 KiB buffered writes, flushed every 100 ms).
  const level = process.env.LOG === '0' ? 'silent' : 'info'
  let logger: pino.Logger
  if (process.env.LOGDEST === undefined || process.env.LOGDEST === 'batched' || process.env.LOGDEST === 'batched-sync') {
    logger = pino({ level, base: { component: 'warden' } }, batchedDestination(openSync('/dev/null', 'w'), { sync: process.env.LOGDEST === 'batched-sync', minBytes: Number(process.env.LOGMIN ?? 16384) }))
  } else {
    const dest = pino.destination({ dest: '/dev/null', sync: false, minLength: 4096 })
    logger = pino({ level, base: { component: 'warden' } }, dest)
    setInterval(() => dest.flush(), 100).unref()
  }
  const proxy = createHttpProxy({
    snapshot: () => snap,
    lookupIdentity: (ip) => lookupIpcache(snap, ip),
    originalDestination: () => dst,
    upstreamAddress: () => ({ ip: '127.0.0.1', port: bport }),
    logger: logger.child({ module: 'http-proxy' })
  }, { denyResponse: '403' })
  const front = net.createServer(SERVER_OPTIONS, s => proxy.handleConnection(s))
  await new Promise<void>(resolve => front.listen(0, '127.0.0.1', resolve))
  const sketch = sketchProxy(bport)
  await new Promise<void>(resolve => sketch.listen(0, '127.0.0.1', resolve))
  process.send?.({ proxy: (front.address() as net.AddressInfo).port, sketch: (sketch.address() as net.AddressInfo).port })
  process.on('message', (m) => {
    if (m === 'metrics') process.send?.({ metrics: proxy.metrics() })
    if (m === 'cpu') process.send?.({ cpu: process.cpuUsage() })
  })
}

/**
 * The floor to compare with, in the same process: a throwaway raw forwarder like the issue's
 * sketch (llhttp for the request head, raw bytes both ways, one upstream socket per client
 * connection, no policy, no log, no response framing). Not a proxy: a calibration of this
 * machine's per-request cost of Node sockets right now.
 */
function sketchProxy (bport: number): net.Server {
  const require = createRequire(import.meta.url)
  const { HTTPParser } = require('_http_common') as { HTTPParser: NativeParserCtor }
  return net.createServer(client => {
    client.setNoDelay(true)
    const up = net.connect({ host: '127.0.0.1', port: bport, noDelay: true })
    const p = new HTTPParser()
    p.initialize(HTTPParser.REQUEST, {}, 16384, 0)
    p[HTTPParser.kOnHeadersComplete] = () => 0
    p[HTTPParser.kOnBody] = () => {}
    p[HTTPParser.kOnMessageComplete] = () => {}
    client.on('data', (d: Buffer) => { p.execute(d); up.write(d) })
    up.on('data', (d: Buffer) => { client.write(d) })
    client.on('error', () => { up.destroy() })
    up.on('error', () => { client.destroy() })
    client.on('close', () => { up.destroy(); p.close() })
    up.on('close', () => { client.destroy() })
  })
}

function ask<T> (child: ReturnType<typeof fork>, what: string): Promise<T> {
  return new Promise<T>(resolve => {
    const on = (m: unknown): void => { if (m !== null && typeof m === 'object' && what in m) { child.off('message', on); resolve((m as Record<string, T>)[what]) } }
    child.on('message', on)
    child.send(what)
  })
}

async function main (): Promise<void> {
  const require = createRequire(import.meta.url)
  const autocannon = require('autocannon') as (o: Autocannon.Options) => Promise<Autocannon.Result>
  const connections = Number(process.env.CONNECTIONS ?? 10)
  const pipelining = Number(process.env.PIPELINING ?? 1)
  const duration = Number(process.env.DURATION ?? 10)
  const warmup = Number(process.env.WARMUP ?? 2)
  const wanted = (process.env.SCENARIOS ?? 'direct,allowed,denied,latency').split(',')
  console.log(`node ${process.version}, ${os.cpus()[0]?.model ?? '?'} x${os.cpus().length}, load ${os.loadavg().map(l => l.toFixed(1)).join(' ')}; connections=${connections} pipelining=${pipelining} duration=${duration}s`)
  const be = fork(fileURLToPath(import.meta.url), ['serve-backend'])
  const { backend } = await new Promise<{ backend: number }>(resolve => be.once('message', m => resolve(m as { backend: number })))
  const profDir = process.env.PROFILE_DIR ?? os.tmpdir()
  const child = fork(fileURLToPath(import.meta.url), ['serve-proxy', String(backend)], { execArgv: process.env.PROFILE === '1' ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : [] })
  const { proxy, sketch } = await new Promise<{ proxy: number, sketch: number }>(resolve => child.once('message', m => resolve(m as { proxy: number, sketch: number })))
  const scenarios: Array<[string, number, string, number]> = [
    ['direct', backend, '/healthz', 200],
    ['allowed', proxy, '/healthz', 200],
    ['denied', proxy, '/api/v1/charge', 403],
    ['sketch', sketch, '/healthz', 200]
  ]
  const repeat = Number(process.env.REPEAT ?? 1)
  for (let rep = 0; rep < repeat; rep++) for (const [name, port, path, want] of scenarios) {
    if (!wanted.includes(name)) continue
    const opts = { url: `http://127.0.0.1:${port}${path}`, connections, pipelining, headers: { host: 'billing:8080' } }
    await autocannon({ ...opts, duration: warmup })
    const cpu0 = await ask<NodeJS.CpuUsage>(child, 'cpu')
    const r = await autocannon({ ...opts, duration })
    const cpu1 = await ask<NodeJS.CpuUsage>(child, 'cpu')
    const cpuSec = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / 1e6
    const statusOk = want === 200 ? r['2xx'] : r['4xx']
    const perCpu = port !== backend && cpuSec > 0 ? `  ${Math.round(r.requests.total / cpuSec).toString().padStart(6)} req/proxy-cpu-s (cpu ${cpuSec.toFixed(2)} s, user ${((cpu1.user - cpu0.user) / 1e6).toFixed(2)})` : ''
    console.log(`${name.padEnd(8)} ${Math.round(r.requests.average).toString().padStart(7)} req/s  p50 ${r.latency.p50} ms  p99 ${r.latency.p99} ms  ` +
      `expected-status ${statusOk}/${r.requests.total}  errors ${r.errors} non2xx ${r.non2xx}${perCpu}`)
  }
  if (wanted.includes('latency')) await latency(backend, proxy, process.env.LATENCY_HAPROXY === '0' ? undefined : await startHaproxy(backend))
  console.log('proxy counters', JSON.stringify(await ask<object>(child, 'metrics')))
  child.kill('SIGINT')
  be.kill('SIGINT')
}

/**
 * HAProxy in front of the same backend, with the seed's rules (bench/peer-config.ts, as in
 * `npm run bench`), for the latency scenario's yardstick; undefined when haproxy is not installed.
 */
async function startHaproxy (backend: number): Promise<{ port: number, stop: () => Promise<void> } | undefined> {
  if (!['/usr/sbin/haproxy', '/usr/bin/haproxy'].some((p) => existsSync(p))) return undefined
  const dir = await mkdtemp(join(os.tmpdir(), 'warden-http-bench-haproxy-'))
  const port = await new Promise<number>((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (probe.address() as net.AddressInfo).port
      probe.close(() => resolve(p))
    })
  })
  const policy = rulesFromSnapshot(await seedSnapshot(), 'billing-service', BILLING_PORT)
  const conf = join(dir, 'haproxy.cfg')
  await writeFile(conf, haproxyConfig(policy, { listenIp: '127.0.0.1', listenPort: port, upstreamIp: '127.0.0.1', upstreamPort: backend, stateDir: dir }))
  const proc = new Proc(['haproxy', '-db', '-f', conf])
  const stop = async (): Promise<void> => {
    await proc.stop('SIGTERM', 5000)
    await rm(dir, { recursive: true, force: true })
  }
  try {
    await waitForTcp('127.0.0.1', port, 5000, proc)
  } catch (err) {
    await stop()
    throw err
  }
  return { port, stop }
}

/**
 * Per-hop latency: one connection, one request in flight (the next is sent when the
 * previous response is complete), timed with hrtime at 1 us resolution (autocannon's histogram
 * has 1 ms). Direct, through the proxy and through HAProxy (when installed: what this machine
 * gives a proxy hop) alternate in blocks so that all see the same machine.
 */
async function latency (backend: number, proxy: number, haproxy: { port: number, stop: () => Promise<void> } | undefined): Promise<void> {
  const n = Number(process.env.LATENCY_N ?? 20_000)
  const blocks = 4
  const targets: Array<['direct' | 'proxy' | 'haproxy', number]> = [['direct', backend], ['proxy', proxy]]
  if (haproxy !== undefined) targets.push(['haproxy', haproxy.port])
  const samples: Record<'direct' | 'proxy' | 'haproxy', number[]> = { direct: [], proxy: [], haproxy: [] }
  try {
    for (let b = 0; b < blocks; b++) {
      for (const [name, port] of targets) samples[name].push(...await sequential(port, Math.ceil(n / blocks), 500))
    }
  } finally {
    await haproxy?.stop()
  }
  const pct = (a: number[], q: number): number => { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)] }
  const d50 = pct(samples.direct, 0.5)
  const p50 = pct(samples.proxy, 0.5)
  const hap = haproxy === undefined
    ? '; haproxy not installed'
    : `; through HAProxy p50 ${pct(samples.haproxy, 0.5).toFixed(1)} us p99 ${pct(samples.haproxy, 0.99).toFixed(1)} us, added p50 ${(pct(samples.haproxy, 0.5) - d50).toFixed(1)} us`
  console.log(`latency  one connection, one request in flight, ${samples.proxy.length} requests each: direct p50 ${d50.toFixed(1)} us p99 ${pct(samples.direct, 0.99).toFixed(1)} us; ` +
    `through the proxy p50 ${p50.toFixed(1)} us p99 ${pct(samples.proxy, 0.99).toFixed(1)} us; added p50 ${(p50 - d50).toFixed(1)} us (target: at most 40 us)${hap}`)
}

/** `count` timed GET /healthz on one keep-alive connection (after `warm` untimed ones); microseconds each. */
async function sequential (port: number, count: number, warm: number): Promise<number[]> {
  const req = Buffer.from('GET /healthz HTTP/1.1\r\nHost: billing:8080\r\n\r\n', 'latin1')
  const sock = net.connect({ host: '127.0.0.1', port, noDelay: true })
  await new Promise<void>((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject) })
  const times: number[] = []
  let got: Buffer = Buffer.alloc(0)
  let want = -1
  let sent = 0n
  let i = 0
  await new Promise<void>((resolve, reject) => {
    sock.on('error', reject)
    sock.on('data', (d: Buffer) => {
      got = got.length === 0 ? d : Buffer.concat([got, d])
      if (want === -1) {
        const end = got.indexOf('\r\n\r\n')
        if (end === -1) return
        const m = /content-length:\s*(\d+)/i.exec(got.subarray(0, end).toString('latin1'))
        if (m === null) { reject(new Error('latency: response without content-length')); return }
        want = end + 4 + Number(m[1])
      }
      if (got.length < want) return
      if (got.length > want) { reject(new Error('latency: more bytes than one response')); return }
      const us = Number(process.hrtime.bigint() - sent) / 1000
      if (i >= warm) times.push(us)
      got = Buffer.alloc(0)
      if (++i === warm + count) { resolve(); return }
      sent = process.hrtime.bigint()
      sock.write(req)
    })
    sent = process.hrtime.bigint()
    sock.write(req)
  })
  sock.destroy()
  return times
}

const mode = process.argv[2]
if (mode === 'serve-backend' || mode === 'serve-proxy') process.on('SIGINT', () => process.exit(0))
if (mode === 'serve-backend') void serveBackend()
else if (mode === 'serve-proxy') void serveProxy(Number(process.argv[3]))
else void main()
