/**
 * The load generator, run as its own process inside the client namespace
 * (`ip netns exec wbench-c node dist/bench/load-client.js '<LoadSpec JSON>'`), so its traffic takes
 * the workload's path and its CPU is not the harness's. Runs an unmeasured warmup, then the measured
 * run, and prints JSON lines on stdout: `{"event":"start"}` and `{"event":"end"}` around the
 * measured run (the parent samples the proxy's CPU at those instants), then the result.
 *
 * Latency is recorded per response at 1 µs resolution from autocannon's `response` event
 * (autocannon's own histogram has 1 ms resolution, too coarse for sub-millisecond proxies).
 */
import autocannon from 'autocannon'

export interface LoadSpec {
  url: string
  method: string
  connections: number
  pipelining: number
  /** autocannon worker threads; 0 = in-process (then latency has 1 µs resolution). */
  workers: number
  durationS: number
  warmupS: number
  /** Offered load in requests/s over all connections (autocannon overallRate); 0 = as fast as it goes. */
  rate: number
}

export interface LoadResult {
  requests: number
  durationS: number
  statusCounts: Record<string, number>
  errors: number
  timeouts: number
  p50_us: number
  p99_us: number
  p999_us: number
  /** CPU seconds the load generator itself used during the measured run. */
  client_cpu_s: number
}

/** Fixed-bucket latency histogram: 1 µs buckets up to 1 s, then one overflow list. */
export class LatencyHistogram {
  private readonly buckets = new Uint32Array(1_000_000)
  private readonly overflow: number[] = []
  count = 0

  record (us: number): void {
    const v = Math.round(us)
    if (v < this.buckets.length) this.buckets[v < 0 ? 0 : v]++
    else this.overflow.push(v)
    this.count++
  }

  /** The smallest value v such that at least q of the samples are <= v; 0 when empty. */
  percentile (q: number): number {
    if (this.count === 0) return 0
    const rank = Math.max(1, Math.ceil(q * this.count))
    let seen = 0
    for (let i = 0; i < this.buckets.length; i++) {
      seen += this.buckets[i]
      if (seen >= rank) return i
    }
    const sorted = [...this.overflow].sort((a, b) => a - b)
    return sorted[rank - seen - 1] ?? sorted[sorted.length - 1]
  }
}

async function cannon (spec: LoadSpec, durationS: number, hist: LatencyHistogram | null): Promise<autocannon.Result> {
  return await new Promise((resolve, reject) => {
    // overallRate is autocannon's (see its README) but not in its typings
    const opts: autocannon.Options & { overallRate?: number } = {
      url: spec.url,
      method: spec.method as autocannon.Options['method'],
      connections: spec.connections,
      pipelining: spec.pipelining,
      workers: spec.workers > 0 ? spec.workers : undefined,
      overallRate: spec.rate > 0 ? spec.rate : undefined,
      duration: durationS,
      timeout: 10
    }
    const inst = autocannon(opts, (err, result) => { if (err != null) reject(err); else resolve(result) })
    if (hist !== null) inst.on('response', (_c: unknown, _s: number, _b: number, ms: number) => { hist.record(ms * 1000) })
  })
}

export async function runLoad (spec: LoadSpec, log: (line: object) => void): Promise<LoadResult> {
  if (spec.warmupS > 0) await cannon(spec, spec.warmupS, null)
  const hist = spec.workers > 0 ? null : new LatencyHistogram()
  const cpu0 = process.cpuUsage()
  log({ event: 'start' })
  const t0 = process.hrtime.bigint()
  const r = await cannon(spec, spec.durationS, hist)
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9
  log({ event: 'end' })
  const cpu = process.cpuUsage(cpu0)
  const statusCounts: Record<string, number> = {}
  for (const [code, v] of Object.entries(r.statusCodeStats ?? {})) statusCounts[code] = v.count
  const responses = Object.values(statusCounts).reduce((a, b) => a + b, 0)
  const lat = r.latency as unknown as Record<string, number>
  return {
    requests: responses,
    durationS: elapsed,
    statusCounts,
    errors: r.errors,
    timeouts: r.timeouts,
    p50_us: hist !== null ? hist.percentile(0.5) : Math.round(lat.p50 * 1000),
    p99_us: hist !== null ? hist.percentile(0.99) : Math.round(lat.p99 * 1000),
    p999_us: hist !== null ? hist.percentile(0.999) : Math.round(lat.p99_9 * 1000),
    client_cpu_s: (cpu.user + cpu.system) / 1e6
  }
}

// Entry point when run as a process (not when imported by a test).
if (process.argv[1] !== undefined && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  const spec = JSON.parse(process.argv[2] ?? '') as LoadSpec
  const log = (o: object): void => { process.stdout.write(JSON.stringify(o) + '\n') }
  runLoad(spec, log).then((r) => { log({ event: 'result', result: r }) }, (err) => {
    log({ event: 'error', message: String((err as Error).stack ?? err) })
    process.exitCode = 1
  })
}
