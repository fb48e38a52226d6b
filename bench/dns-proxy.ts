/**
 * DNS proxy throughput and added latency against asking dnsmasq directly (the targets:
 * >= 20,000 queries/s on one core, < 0.5 ms added p99).
 *
 * Topology, loopback only: dnsmasq (authoritative, 127.0.53.40) <- proxy (its own process,
 * pinned to the last CPU with taskset when there are 2+, listening on 127.0.53.41) <- load
 * generator (this process, sending from the "endpoint" 127.0.53.42; it and dnsmasq share the
 * other CPU). Each scenario runs `direct` then `proxy` with the same load. The proxy reports
 * its own CPU time, so `proxyQpsPerCpuSecond` is the one-core figure whatever the machine
 * does meanwhile. The proxy logs one JSON line per query to /dev/null (LOG=0 turns that off).
 *
 * Scenarios: `latency` (one query in flight), `latency-shared-cpu` (the same with the proxy moved
 * onto the load generator's CPU: no wake-up of an idle CPU per hop, which on a VM is the
 * variable part of the first; 2+ CPUs only), `throughput` (CONCURRENCY in flight).
 *
 *   npx tsc -p tsconfig.build.json && node dist/bench/dns-proxy.js
 *   knobs: DURATION (s, 5), CONCURRENCY (outstanding queries in the throughput run, 64), LOG (1),
 *   PROXY_NODE_ARGS (extra node flags for the proxy process, e.g. --cpu-prof)
 */
import { execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { bindUdp, ipv4Num } from '../proxy/src/udp-batch.js'
import { performance } from 'node:perf_hooks'
import dnsPacket from 'dns-packet'

const DNS_IP = '127.0.53.40'
const PROXY_IP = '127.0.53.41'
const CLIENT_IP = '127.0.53.42'
const NAMES = ['api.github.com', 'status.github.com', 'www.example.com', 'a.example.com']

interface WorkerIn { dnsPort: number, log: boolean }

async function runProxy (): Promise<void> {
  // The bench process gone (killed, or died on the way): nothing is left to measure for.
  process.on('disconnect', () => { process.exit(0) })
  const { dnsPort, log } = JSON.parse(process.argv[3]) as WorkerIn
  const { createDnsProxy } = await import('../proxy/src/dns/index.js')
  const { benchDnsDeps } = await import('./dns-snapshot.js')
  const proxy = await createDnsProxy(benchDnsDeps(CLIENT_IP, { ip: DNS_IP, port: dnsPort }, log), {})
  const sock = bindUdp(PROXY_IP, 0, { origDst: true })
  proxy.attachUdp(sock)
  let cpu = process.cpuUsage()
  let wall = performance.now()
  let answered0 = 0
  process.on('message', (m: string) => {
    if (m === 'start') { cpu = process.cpuUsage(); wall = performance.now(); answered0 = proxy.metrics().answered }
    if (m === 'stop') {
      const c = process.cpuUsage(cpu)
      process.send?.({ cpuSeconds: (c.user + c.system) / 1e6, wallSeconds: (performance.now() - wall) / 1000, answered: proxy.metrics().answered - answered0, metrics: proxy.metrics() })
    }
    if (m === 'exit') process.exit(0)
  })
  process.send?.({ port: sock.localAddress().port })
}

interface RunResult { qps: number, p50: number, p99: number, p999: number, errors: number }

/** Keep `concurrency` queries outstanding against `target` for `seconds`; latencies in ms. */
async function load (target: { ip: string, port: number }, concurrency: number, seconds: number): Promise<RunResult> {
  // The load generator reads with recvmmsg too (udp-batch.ts): with dgram's per-datagram costs
  // it saturated its core (shared with dnsmasq) before the proxy did.
  const ipNum = ipv4Num(target.ip)
  const queries = NAMES.map(name => dnsPacket.encode({ type: 'query', id: 0, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name }] }))
  const sentAt = new Float64Array(65536)
  const lat: number[] = []
  let nextId = 0
  let inflight = 0
  let errors = 0
  let done = false
  const q = Buffer.alloc(512)
  const send = (): void => {
    const id = nextId = (nextId + 1) & 0xffff
    const src = queries[id % queries.length]
    src.copy(q)
    q.writeUInt16BE(id, 0)
    sentAt[id] = performance.now()
    inflight++
    sock.sendTo(q.subarray(0, src.length), ipNum, target.port)
  }
  const sock = bindUdp(CLIENT_IP, 0, {
    onDatagram: d => {
      const msg = d.data
      const t = sentAt[msg.readUInt16BE(0)]
      if (t === 0) return
      sentAt[msg.readUInt16BE(0)] = 0
      inflight--
      if ((msg[3] & 0x0f) !== 0) errors++
      lat.push(performance.now() - t)
      if (!done) send()
    }
  })
  const start = performance.now()
  for (let i = 0; i < concurrency; i++) send()
  // Refill the window for datagrams lost in socket buffers.
  const refill = setInterval(() => {
    const now = performance.now()
    for (let id = 0; id < 65536; id++) if (sentAt[id] !== 0 && now - sentAt[id] > 1000) { sentAt[id] = 0; inflight--; errors++ }
    while (!done && inflight < concurrency) send()
  }, 250)
  await sleep(seconds * 1000)
  done = true
  const elapsed = (performance.now() - start) / 1000
  clearInterval(refill)
  await sleep(200)
  sock.close()
  lat.sort((a, b) => a - b)
  const pct = (p: number): number => lat.length === 0 ? NaN : lat[Math.min(lat.length - 1, Math.floor(lat.length * p))]
  return { qps: lat.length / elapsed, p50: pct(0.5), p99: pct(0.99), p999: pct(0.999), errors }
}

async function main (): Promise<void> {
  const seconds = Number(process.env.DURATION ?? 5)
  const concurrency = Number(process.env.CONCURRENCY ?? 64)
  const log = process.env.LOG !== '0'
  console.log(JSON.stringify({ bench: 'dns-proxy', node: process.version, cpu: cpus()[0]?.model, cores: cpus().length, seconds, concurrency, log }))

  const dir = await mkdtemp(join(tmpdir(), 'warden-bench-dns-'))
  await writeFile(join(dir, 'hosts'), '198.18.53.10 api.github.com\n198.18.53.11 status.github.com\n198.18.53.12 www.example.com\n198.18.53.13 a.example.com\n')
  const dnsPort = 20000 + Math.floor(Math.random() * 40000)
  const pin = cpus().length >= 2
  const last = cpus().length - 1
  if (pin) execFileSync('taskset', ['-a', '-p', '-c', `0-${last - 1}`, String(process.pid)], { stdio: 'ignore' })
  const dnsmasq = spawn(pin ? 'taskset' : '/usr/sbin/dnsmasq', [...(pin ? ['-c', `0-${last - 1}`, '/usr/sbin/dnsmasq'] : []), '--keep-in-foreground', '--no-resolv', '--no-hosts', '--conf-file=/dev/null', '--user=root',
    `--addn-hosts=${join(dir, 'hosts')}`, '--local-ttl=3600', `--port=${dnsPort}`, `--listen-address=${DNS_IP}`, '--bind-interfaces',
    `--pid-file=${join(dir, 'pid')}`, '--dns-forward-max=10000'], { stdio: 'ignore' })
  // If this process dies on the way (an uncaught error, EPIPE on a closed stdout), dnsmasq must not outlive it.
  const stopDnsmasq = (): void => { if (dnsmasq.exitCode === null && dnsmasq.signalCode === null) dnsmasq.kill('SIGTERM') }
  process.on('exit', stopDnsmasq)
  const self = fileURLToPath(import.meta.url)
  const args = [...(process.env.PROXY_NODE_ARGS ?? '').split(' ').filter(a => a !== ''), self, 'proxy', JSON.stringify({ dnsPort, log } satisfies WorkerIn)]
  const worker = spawn(pin ? 'taskset' : process.execPath, pin ? ['-c', String(last), process.execPath, ...args] : args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  try {
    const [{ port: proxyPort }] = await once(worker, 'message') as [{ port: number }]
    await sleep(300)
    const direct = { ip: DNS_IP, port: dnsPort }
    const proxied = { ip: PROXY_IP, port: proxyPort }
    await load(proxied, 8, 1) // warm-up (JIT, caches), discarded
    const results: Record<string, unknown> = {}
    const scenarios: Array<[string, number, string | null]> = [['latency', 1, null], ['throughput', concurrency, null]]
    if (pin) scenarios.splice(1, 0, ['latency-shared-cpu', 1, `0-${last - 1}`])
    const moveProxy = (cpuList: string): void => { execFileSync('taskset', ['-a', '-p', '-c', cpuList, String(worker.pid)], { stdio: 'ignore' }) }
    for (const [scenario, conc, cpuList] of scenarios) {
      if (cpuList !== null) moveProxy(cpuList)
      const d = await load(direct, conc, seconds)
      worker.send('start')
      const p = await load(proxied, conc, seconds)
      worker.send('stop')
      const [{ cpuSeconds, wallSeconds, answered, metrics }] = await once(worker, 'message') as [{ cpuSeconds: number, wallSeconds: number, answered: number, metrics: Record<string, number> }]
      const r = {
        direct: d,
        proxy: p,
        addedP50Ms: p.p50 - d.p50,
        addedP99Ms: p.p99 - d.p99,
        proxyCpuUtilization: cpuSeconds / wallSeconds,
        proxyQpsPerCpuSecond: answered / cpuSeconds,
        proxyMetrics: { forwarded: metrics.forwarded, answered: metrics.answered, spoofedAnswers: metrics.spoofedAnswers, upstreamTimeouts: metrics.upstreamTimeouts }
      }
      if (cpuList !== null) moveProxy(String(last))
      results[scenario] = r
      console.log(JSON.stringify({ scenario, ...r }, (_k, v: unknown) => typeof v === 'number' ? Math.round(v * 1000) / 1000 : v))
    }
    const out = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'results')
    await mkdir(out, { recursive: true })
    await writeFile(join(out, `dns-proxy-${Date.now()}.json`), JSON.stringify({ node: process.version, seconds, concurrency, log, results }, null, 2))
  } finally {
    worker.send('exit')
    await once(worker, 'exit')
    stopDnsmasq()
    process.off('exit', stopDnsmasq)
    await rm(dir, { recursive: true, force: true })
  }
}

if (process.argv[2] === 'proxy') await runProxy(); else await main()
