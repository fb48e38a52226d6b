/**
 * Datapath numbers (root; not a test): `node dist/bench/datapath.js`
 * 1. Throughput (one TCP stream, DURATION s) and request/response latency (1-byte ping-pong)
 *    between two lab namespaces, without the program, then with it attached and a
 *    1,000-entry policy. Target: under 3% lost throughput for allowed L4 traffic.
 * 2. Time from apply() of a 10,000-rule snapshot to the maps updated, and of a one-rule
 *    change after it. Target: under 100 ms.
 * Lab: netns wdp0-*, 198.18.16.0/24, pins /sys/fs/bpf/wdp0, table 2100; removed at the end.
 */
import { spawn } from 'node:child_process'
import { pino } from 'pino'
import { labDown, labUp, type LabSpec } from '../lab/lab.js'
import { openDatapath, uninstall, type DatapathOptions } from '../redirect-bpf/src/index.js'
import type { KernelEntry } from '../policy-store/src/types.js'
import { snapshot, openEntries, entry, type EpSpec } from '../test/helpers/lab-snapshot.js'

const DURATION = Number(process.env.DURATION ?? 5)
const SAMPLES = Number(process.env.SAMPLES ?? 3)

const PEER = `
const [mode, host, port, secs] = process.argv.slice(1)
const net = require('net')
if (mode === 'sink') {
  net.createServer((c) => { c.setNoDelay(true); c.on('data', (d) => { if (d.length === 1) c.write(d) }) }).listen(+port, () => console.log('ready'))
} else if (mode === 'blast') {
  const c = net.connect(+port, host); const buf = Buffer.alloc(64 * 1024); let sent = 0; let stop = false
  const t0 = process.hrtime.bigint()
  setTimeout(() => { stop = true; c.end(); console.log(JSON.stringify({ bytes: sent, s: Number(process.hrtime.bigint() - t0) / 1e9 })) }, +secs * 1000)
  const pump = () => { while (!stop && c.write(buf)) sent += buf.length; if (!stop) sent += buf.length }
  c.on('connect', pump); c.on('drain', pump)
} else {
  const c = net.connect(+port, host); c.setNoDelay(true); let n = 0; const lat = []; let t
  const one = Buffer.from('x')
  c.on('connect', () => { t = process.hrtime.bigint(); c.write(one) })
  c.on('data', () => { const now = process.hrtime.bigint(); lat.push(Number(now - t) / 1000); n++
    if (n >= 20000) { c.end(); lat.sort((a, b) => a - b); console.log(JSON.stringify({ p50: lat[lat.length >> 1], p99: lat[Math.floor(lat.length * 0.99)] })); return }
    t = process.hrtime.bigint(); c.write(one) })
}
`

async function inNs (ns: string, args: string[]): Promise<string> {
  const p = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', PEER, ...args])
  let out = ''
  p.stdout.on('data', (d) => { out += String(d) })
  await new Promise((resolve) => p.on('exit', resolve))
  return out.trim()
}

async function measure (spec: LabSpec, dst: string): Promise<{ gbps: number, p50us: number, p99us: number }> {
  const rates: number[] = []
  const p50s: number[] = []
  const p99s: number[] = []
  for (let i = 0; i < SAMPLES; i++) {
    const r = JSON.parse(await inNs(`${spec.prefix ?? ''}a`, ['blast', dst, '5001', String(DURATION)])) as { bytes: number, s: number }
    rates.push(r.bytes * 8 / r.s / 1e9)
    const l = JSON.parse(await inNs(`${spec.prefix ?? ''}a`, ['rr', dst, '5001'])) as { p50: number, p99: number }
    p50s.push(l.p50)
    p99s.push(l.p99)
  }
  const med = (a: number[]): number => a.sort((x, y) => x - y)[a.length >> 1]
  return { gbps: med(rates), p50us: med(p50s), p99us: med(p99s) }
}

async function main (): Promise<void> {
  const eps: EpSpec[] = [
    { id: 100, name: 'a', ipv4: '198.18.16.10', iface: 'wdp0a', identity: 1000 },
    { id: 101, name: 'b', ipv4: '198.18.16.11', iface: 'wdp0b', identity: 1001 }
  ]
  const spec: LabSpec = { prefix: 'wdp0-', hosts: eps.map((e) => ({ name: e.name, ipv4: e.ipv4, hostIf: e.iface })) }
  const opts: DatapathOptions = {
    bpffs: '/sys/fs/bpf/wdp0', proxyPort: 16000, dnsProxyPort: 16001, uplinks: [], routeTable: 2100, logger: pino({ level: 'warn' })
  }
  await labDown(spec)
  await uninstall(opts)
  await labUp(spec)
  const sink = spawn('ip', ['netns', 'exec', 'wdp0-b', process.execPath, '-e', PEER, 'sink', '', '5001'])
  try {
    await new Promise<void>((resolve) => sink.stdout.on('data', () => resolve()))
    console.log(`datapath bench: node ${process.version}, DURATION=${DURATION}s SAMPLES=${SAMPLES}`)
    const base = await measure(spec, eps[1].ipv4)
    console.log(`without program     : ${base.gbps.toFixed(2)} Gbit/s, rr p50 ${base.p50us.toFixed(1)} us p99 ${base.p99us.toFixed(1)} us`)

    const dp = await openDatapath(opts)
    // 1,000 entries: b accepts 999 other identities on port 5001 and a
    const kernel: KernelEntry[] = [...openEntries(100), entry(101, 1, 0, 0, 0, 'allow'), entry(101, 0, 1000, 6, 5001, 'allow')]
    for (let i = 0; i < 997; i++) kernel.push(entry(101, 0, 2000 + i, 6, 5001, 'allow'))
    await dp.apply(snapshot(eps, kernel))
    const withProg = await measure(spec, eps[1].ipv4)
    const lost = (1 - withProg.gbps / base.gbps) * 100
    console.log(`with program+1k     : ${withProg.gbps.toFixed(2)} Gbit/s, rr p50 ${withProg.p50us.toFixed(1)} us p99 ${withProg.p99us.toFixed(1)} us  (throughput lost ${lost.toFixed(1)}%, target < 3%)`)

    // 10,000 rules: 10 ports x 1,000 identities on b's ingress
    const big: KernelEntry[] = [...kernel]
    for (let i = 0; i < 10000; i++) big.push(entry(101, 0, 5000 + (i % 1000), 6, 10000 + Math.floor(i / 1000), 'allow'))
    let t0 = performance.now()
    await dp.apply(snapshot(eps, big))
    console.log(`apply 10k rules     : ${(performance.now() - t0).toFixed(1)} ms (first load into the maps)`)
    // one-rule changes, alternating add/remove; median of 7 (the first ones warm the JIT up)
    const times: number[] = []
    for (let i = 0; i < 7; i++) {
      const snap = i % 2 === 0 ? snapshot(eps, [...big, entry(101, 0, 7777, 6, 443, 'deny')]) : snapshot(eps, big)
      t0 = performance.now()
      await dp.apply(snap)
      times.push(performance.now() - t0)
    }
    times.sort((a, b) => a - b)
    console.log(`one-rule change     : median ${times[3].toFixed(1)} ms, max ${times[6].toFixed(1)} ms at 10k rules (target < 100 ms)`)
    await dp.close()
  } finally {
    sink.kill()
    await uninstall(opts)
    await labDown(spec)
  }
}

main().catch((err) => { console.error(err); process.exitCode = 1 })
