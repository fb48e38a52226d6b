/**
 * Datapath numbers (root; not a test): `node dist/bench/datapath.js`
 * 1. Throughput (one TCP stream, DURATION s) and request/response latency (1-byte ping-pong)
 *    between two lab namespaces, SAMPLES rounds of runs alternating without the program (its
 *    filters detached), with it attached and a 1,000-entry policy and legacy host routing, and
 *    with BPF host routing (the default); each mode's change is the median of its rounds'. Also
 *    the programs' average run time per packet (kernel.bpf_stats, switched on for the runs and
 *    restored). Target: under 3% lost throughput for allowed L4 traffic.
 * 2. Time from apply() of a 10,000-rule snapshot to the maps updated, and of a one-rule
 *    change after it, applied as its diff (the agent's path) and as a full sync (the maps read
 *    back and compared with the whole snapshot: the periodic safety net). Target: under 100 ms.
 * Lab: netns wdp0-*, 198.18.16.0/24, pins /sys/fs/bpf/wdp0, table 2100; removed at the end.
 */
import { execFileSync, spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { pino } from 'pino'
import { createMapRef, objGet, RawMap } from 'bpf'
import { FEAT_HOST_ROUTING } from '../redirect-bpf/src/layout.js'
import { labDown, labUp, type LabSpec } from '../lab/lab.js'
import { openDatapath, uninstall, type DatapathOptions } from '../redirect-bpf/src/index.js'
import { attachHook, detachHook, PROGS, progPath } from '../redirect-bpf/src/loader.js'
import type { KernelEntry, SnapshotDiff } from '../policy-store/src/types.js'
import { snapshot, openEntries, entry, type EpSpec } from '../test/helpers/lab-snapshot.js'

const DURATION = Number(process.env.DURATION ?? 5)
const SAMPLES = Number(process.env.SAMPLES ?? 5)

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

interface Sample { gbps: number, p50us: number, p99us: number }

async function sample (spec: LabSpec, dst: string): Promise<Sample> {
  const r = JSON.parse(await inNs(`${spec.prefix ?? ''}a`, ['blast', dst, '5001', String(DURATION)])) as { bytes: number, s: number }
  const l = JSON.parse(await inNs(`${spec.prefix ?? ''}a`, ['rr', dst, '5001'])) as { p50: number, p99: number }
  return { gbps: r.bytes * 8 / r.s / 1e9, p50us: l.p50, p99us: l.p99 }
}

const med = (a: number[]): number => [...a].sort((x, y) => x - y)[a.length >> 1]

/** Busy CPU time of the whole machine so far, in ns (/proc/stat: all but idle and iowait). */
function busyNs (): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
  const total = f.reduce((a, b) => a + b, 0)
  return (total - f[3] - f[4]) * 1e9 / 100 // USER_HZ is 100 on Linux
}

/** Switch the loaded programs' features (l7p_config) without reopening the datapath. */
function setFeatures (bpffs: string, features: number): void {
  const cfg = new RawMap(createMapRef(objGet(`${bpffs}/l7p_config`), { transfer: true }))
  try {
    const v = cfg.get(Buffer.alloc(4))
    if (v === undefined) throw new Error('l7p_config is empty')
    v.writeUInt32LE(features, 12)
    cfg.set(Buffer.alloc(4), v)
  } finally {
    cfg.ref.close()
  }
}

/** run_time_ns / run_cnt of a pinned program (kernel.bpf_stats_enabled must be 1). */
function progStats (path: string): { ns: number, cnt: number } {
  const out = execFileSync('bpftool', ['-j', 'prog', 'show', 'pinned', path], { encoding: 'utf8' })
  const j = JSON.parse(out) as { run_time_ns?: number, run_cnt?: number }
  return { ns: j.run_time_ns ?? 0, cnt: j.run_cnt ?? 0 }
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
  const statsWas = readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim()
  try {
    await new Promise<void>((resolve) => sink.stdout.on('data', () => resolve()))
    console.log(`datapath bench: node ${process.version}, DURATION=${DURATION}s SAMPLES=${SAMPLES} (interleaved: without, with, without, with, ...)`)
    const dp = await openDatapath(opts)
    // 1,000 entries: b accepts 999 other identities on port 5001 and a
    const kernel: KernelEntry[] = [...openEntries(100), entry(101, 1, 0, 0, 0, 'allow'), entry(101, 0, 1000, 6, 5001, 'allow')]
    for (let i = 0; i < 997; i++) kernel.push(entry(101, 0, 2000 + i, 6, 5001, 'allow'))
    await dp.apply(snapshot(eps, kernel))
    // Throughput varies run to run by more than the effect measured here, so samples alternate:
    // without the program (its filters detached), with it and legacy host routing, with it and
    // BPF host routing (the default); each mode's change is the median of its per-round changes.
    const hooks = eps.flatMap((e) => [[e.iface, 'ingress'], [e.iface, 'egress']] as const)
    const modes = ['legacy', 'bpf'] as const
    const without: Sample[] = []
    const withProg: Record<typeof modes[number], Sample[]> = { legacy: [], bpf: [] }
    const change: Record<typeof modes[number], number[]> = { legacy: [], bpf: [] }
    const busy: Record<typeof modes[number], number> = { legacy: 0, bpf: 0 }
    const progNs: Record<typeof modes[number], number[]> = { legacy: [0, 0], bpf: [0, 0] }
    const progCnt: Record<typeof modes[number], number[]> = { legacy: [0, 0], bpf: [0, 0] }
    writeFileSync('/proc/sys/kernel/bpf_stats_enabled', '1')
    for (let i = 0; i < SAMPLES; i++) {
      for (const [ifname, hook] of hooks) await detachHook(ifname, hook)
      const a = await sample(spec, eps[1].ipv4)
      without.push(a)
      for (const [ifname, hook] of hooks) await attachHook(opts.bpffs, ifname, hook)
      for (const m of modes) {
        setFeatures(opts.bpffs, m === 'bpf' ? FEAT_HOST_ROUTING : 0)
        const s0 = PROGS.map((p) => progStats(progPath(opts.bpffs, p)))
        const busy0 = busyNs()
        const b = await sample(spec, eps[1].ipv4)
        busy[m] += busyNs() - busy0
        const s1 = PROGS.map((p) => progStats(progPath(opts.bpffs, p)))
        PROGS.forEach((_p, j) => { progNs[m][j] += s1[j].ns - s0[j].ns; progCnt[m][j] += s1[j].cnt - s0[j].cnt })
        withProg[m].push(b)
        change[m].push((b.gbps / a.gbps - 1) * 100)
      }
    }
    writeFileSync('/proc/sys/kernel/bpf_stats_enabled', statsWas)
    const line = (xs: Sample[]): string => `${med(xs.map((x) => x.gbps)).toFixed(2)} Gbit/s, rr p50 ${med(xs.map((x) => x.p50us)).toFixed(1)} us p99 ${med(xs.map((x) => x.p99us)).toFixed(1)} us`
    console.log(`without program          : ${line(without)}`)
    for (const m of modes) {
      const perRun = PROGS.map((p, j) => `${p} ${(progNs[m][j] / Math.max(1, progCnt[m][j])).toFixed(0)} ns x ${progCnt[m][j]}`)
      const total = progNs[m][0] + progNs[m][1]
      console.log(`program+1k, ${m.padEnd(6)} routing: ${line(withProg[m])}`)
      console.log(`  throughput vs without  : median ${med(change[m]) >= 0 ? '+' : ''}${med(change[m]).toFixed(1)}% of ${SAMPLES} rounds (${change[m].map((x) => x.toFixed(1)).join(', ')})`)
      console.log(`  program run time       : ${perRun.join('; ')} (average per run, bpf_stats)`)
      // The share of all CPU time spent in the programs while they were attached: on a CPU-bound
      // stream, the throughput the programs themselves can cost (noise free, unlike the rounds).
      console.log(`  program CPU share      : ${(total / busy[m] * 100).toFixed(2)}% of the machine's busy CPU time during these runs`)
    }

    // 10,000 rules: 10 ports x 1,000 identities on b's ingress
    const big: KernelEntry[] = [...kernel]
    for (let i = 0; i < 10000; i++) big.push(entry(101, 0, 5000 + (i % 1000), 6, 10000 + Math.floor(i / 1000), 'allow'))
    let prev = snapshot(eps, big)
    let t0 = performance.now()
    await dp.apply(prev)
    console.log(`apply 10k rules     : ${(performance.now() - t0).toFixed(1)} ms (first load into the maps)`)
    // one-rule changes, alternating add/remove; median of 7 (the first ones warm the JIT up).
    // With the diff the compiler would hand over (the agent's path), then without one (a full
    // sync: the maps read back and compared with the whole snapshot).
    const deny = entry(101, 0, 7777, 6, 443, 'deny')
    for (const withDiff of [true, false]) {
      const times: number[] = []
      for (let i = 0; i < 7; i++) {
        const add = i % 2 === 0
        const snap = add ? snapshot(eps, [...big, deny]) : snapshot(eps, big)
        const diff: SnapshotDiff = {
          from: prev.version, to: snap.version, kernelAdded: add ? [deny] : [], kernelRemoved: add ? [] : [deny],
          ipcacheAdded: [], ipcacheRemoved: [], endpointsAdded: [], endpointsRemoved: []
        }
        t0 = performance.now()
        await dp.apply(snap, withDiff ? diff : undefined)
        times.push(performance.now() - t0)
        prev = snap
      }
      times.sort((a, b) => a - b)
      console.log(`one-rule change     : median ${times[3].toFixed(2)} ms, max ${times[6].toFixed(2)} ms at 10k rules, ${withDiff ? 'diff applied' : 'full sync   '} (target < 100 ms)`)
    }
    await dp.close()
  } finally {
    writeFileSync('/proc/sys/kernel/bpf_stats_enabled', statsWas)
    sink.kill()
    await uninstall(opts)
    await labDown(spec)
  }
}

main().catch((err) => { console.error(err); process.exitCode = 1 })
