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
  return { proxy: w.proxyPid > 0 ? treeCpu(w.proxyPid) : new Map<number, number>(), upstream: treeCpu(w.upstreamPid), machine: machineCpu().busy }
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
    try { ev = JSON.parse(line) as typeof ev } catch { return }
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

/** Connections and concurrent streams per connection of the HTTP/2 scenarios (h2load -c, -m). */
export const H2_CONNECTIONS = 16
export const H2_STREAMS = 8

/** Parses h2load's summary: requests done and their status classes. */
export function parseH2load (out: string): { done: number, succeeded: number, status: Record<string, number> } {
  const req = /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded/.exec(out)
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(out)
  const status: Record<string, number> = {}
  if (codes !== null) {
    for (const [i, cls] of ['2xx', '3xx', '4xx', '5xx'].entries()) if (Number(codes[i + 1]) > 0) status[cls] = Number(codes[i + 1])
  }
  return { done: Number(req?.[3] ?? NaN), succeeded: Number(req?.[4] ?? NaN), status }
}

/** Latency percentiles (µs) from h2load's --log-file (one `start status duration_us` line per request). */
export function h2loadPercentiles (log: string): { p50_us: number, p99_us: number, p999_us: number } {
  const d: number[] = []
  for (const line of log.split('\n')) {
    const f = line.split('\t')
    if (f.length >= 3) d.push(Number(f[2]))
  }
  d.sort((a, b) => a - b)
  const at = (q: number): number => d.length === 0 ? NaN : d[Math.min(d.length - 1, Math.floor(q * d.length))]
  return { p50_us: at(0.5), p99_us: at(0.99), p999_us: at(0.999) }
}

/**
 * One h2load run (one thread, prior knowledge, POST with a one-byte body), CPU sampled around the
 * whole process. The status classes come back as `2xx`..., so callers compare the expected
 * status by its class.
 */
export async function runH2load (netns: string, url: string, method: string, durationS: number, tmpDir: string, watch: CpuWatch): Promise<Measured & { statusByClass: Record<string, number> }> {
  const logFile = join(tmpDir, `h2load-${Date.now()}.log`)
  const body = join(tmpDir, 'h2load-empty-body')
  await writeFile(body, 'x') // h2load cannot post an empty file
  const args = ['ip', 'netns', 'exec', netns, 'h2load', '-t1', `-c${H2_CONNECTIONS}`, `-m${H2_STREAMS}`, `-D${durationS}`, '--log-file', logFile]
  if (method === 'POST') args.push('-d', body)
  else if (method !== 'GET') throw new Error(`h2load scenarios send GET or POST, not ${method}`)
  const proc = new Proc([...args, url])
  currentLoad = proc
  const before = sample(watch)
  const t0 = performance.now()
  await proc.exited
  const wall = (performance.now() - t0) / 1000
  const after = sample(watch)
  currentLoad = null
  const r = parseH2load(proc.stdoutTail)
  if (Number.isNaN(r.done)) throw new ProcError('h2load printed no request counts', proc.argv, proc.output())
  const { readFile, rm } = await import('node:fs/promises')
  const p = h2loadPercentiles(await readFile(logFile, 'utf8').catch(() => ''))
  await rm(logFile, { force: true })
  return {
    requests: r.done,
    durationS: wall,
    p50_us: p.p50_us,
    p99_us: p.p99_us,
    p999_us: p.p999_us,
    statusCounts: r.status,
    statusByClass: r.status,
    errors: r.done - r.succeeded,
    timeouts: 0,
    client_cpu_s: 0,
    ...deltas(before, after)
  }
}
