/**
 * Load drivers, run inside the client namespace: autocannon (the measured figures, through
 * load-client.ts) and wrk (a cross-check of the top figures, because autocannon saturates one core
 * near 65k requests/s). Both sample the proxy's CPU around the measured interval only.
 */
import { writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { cpuDelta, machineCpu, Proc, ProcError, treeCpu } from './procs.js'
import type { LoadResult, LoadSpec } from './load-client.js'

export interface CpuWatch {
  /** PID of the proxy (0: none) and of the upstream. */
  proxyPid: number
  upstreamPid: number
}

export interface Measured extends LoadResult {
  proxy_cpu_s: number
  upstream_cpu_s: number
  machine_cpu_s: number
}

interface Sample { proxy: Map<number, number>, upstream: Map<number, number>, machine: number }

function sample (w: CpuWatch): Sample {
  return { proxy: w.proxyPid > 0 ? treeCpu(w.proxyPid) : new Map(), upstream: treeCpu(w.upstreamPid), machine: machineCpu().busy }
}

function deltas (a: Sample, b: Sample): Pick<Measured, 'proxy_cpu_s' | 'upstream_cpu_s' | 'machine_cpu_s'> {
  return { proxy_cpu_s: cpuDelta(a.proxy, b.proxy), upstream_cpu_s: cpuDelta(a.upstream, b.upstream), machine_cpu_s: b.machine - a.machine }
}

const loadClientJs = (): string => join(dirname(fileURLToPath(import.meta.url)), 'load-client.js')

/** The currently running load process, so an interrupt can stop it (by PID). */
export let currentLoad: Proc | null = null

export async function runAutocannon (netns: string, spec: LoadSpec, watch: CpuWatch): Promise<Measured> {
  const proc = new Proc(['ip', 'netns', 'exec', netns, process.execPath, loadClientJs(), JSON.stringify(spec)])
  currentLoad = proc
  let before: Sample | null = null
  let after: Sample | null = null
  let result: LoadResult | null = null
  let failure: string | null = null
  proc.onLine((line) => {
    let ev: { event?: string, result?: LoadResult, message?: string }
    try { ev = JSON.parse(line) } catch { return }
    if (ev.event === 'start') before = sample(watch)
    else if (ev.event === 'end') after = sample(watch)
    else if (ev.event === 'result') result = ev.result ?? null
    else if (ev.event === 'error') failure = ev.message ?? 'unknown error'
  })
  const limit = (spec.warmupS + spec.durationS + 30) * 1000
  const timer = setTimeout(() => { void proc.stop('SIGKILL') }, limit)
  await proc.exited
  clearTimeout(timer)
  currentLoad = null
  const r = result as LoadResult | null
  if (r === null || before === null || after === null) {
    throw new ProcError(`load client failed${failure !== null ? `: ${String(failure)}` : ''} (exit ${proc.exitCode ?? proc.exitSignal ?? '?'})`, proc.argv.slice(0, 6), proc.output())
  }
  return { ...r, ...deltas(before, after) }
}

/** Parses `50%  123.45us` style values of wrk's --latency output into microseconds. */
export function wrkDuration (v: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(v.trim())
  if (m === null) return NaN
  const n = Number(m[1])
  return Math.round(m[2] === 'us' ? n : m[2] === 'ms' ? n * 1e3 : m[2] === 's' ? n * 1e6 : n * 6e7)
}

export interface WrkResult { rps: number, p50_us: number, p99_us: number, proxy_cpu_s: number }

export function parseWrk (out: string): { rps: number, p50_us: number, p99_us: number } {
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? NaN)
  const p = (q: string): number => wrkDuration(new RegExp(`^\\s+${q}%\\s+(\\S+)`, 'm').exec(out)?.[1] ?? '')
  return { rps: Math.round(rps), p50_us: p('50'), p99_us: p('99') }
}

/** One wrk run (1 thread, same connections and duration); CPU sampled around the process. */
export async function runWrk (netns: string, url: string, method: string, connections: number, durationS: number, tmpDir: string, watch: CpuWatch): Promise<WrkResult> {
  const script = join(tmpDir, 'wrk-method.lua')
  await writeFile(script, `wrk.method = ${JSON.stringify(method)}\n`)
  const proc = new Proc(['ip', 'netns', 'exec', netns, 'wrk', '-t1', `-c${connections}`, `-d${durationS}s`, '--latency', '-s', script, url])
  currentLoad = proc
  const before = sample(watch)
  await proc.exited
  const after = sample(watch)
  currentLoad = null
  const r = parseWrk(proc.stdoutTail)
  if (Number.isNaN(r.rps)) throw new ProcError('wrk printed no Requests/sec', proc.argv, proc.output())
  return { ...r, proxy_cpu_s: deltas(before, after).proxy_cpu_s }
}
