/**
 * The results file (bench/results/*.json). The schema is kept stable (fields are only added; tools read it):
 * `{"scenarios":[{"name","rps","p50_us","p99_us","proxy_cpu","rps_per_core"}...],"machine":{...},"commit"}`
 * plus additive fields. Per scenario every figure is the median over the interleaved rounds, each
 * figure taken independently; the rounds themselves are kept in `rounds`.
 */

/** One measured run of one scenario. */
export interface RoundResult {
  round: number
  requests: number
  duration_s: number
  rps: number
  p50_us: number
  p99_us: number
  p999_us: number
  /** CPU seconds of the proxy's processes during the measured run (0 for `direct`). */
  proxy_cpu_s: number
  upstream_cpu_s: number
  client_cpu_s: number
  /** Busy CPU seconds of the whole machine during the run. */
  machine_cpu_s: number
  status: Record<string, number>
  errors: number
  timeouts: number
}

export interface ScenarioResult {
  name: string
  /** Why there are no numbers (e.g. the agent did not start). Present => no figures below. */
  skipped?: string
  /** Measured, but the answers were wrong (e.g. 403 where 200 was expected): figures kept, not ranked. */
  error?: string
  description?: string
  rps?: number
  p50_us?: number
  p99_us?: number
  p999_us?: number
  /** Proxy CPU in cores (CPU seconds per wall second) during the run; 0 when no proxy runs. */
  proxy_cpu?: number
  /** Requests per proxy CPU-second; null when no proxy runs (`direct`). */
  rps_per_core?: number | null
  upstream_cpu?: number
  client_cpu?: number
  machine_cpu?: number
  /**
   * Busy CPU of the whole machine per request, in µs (median over rounds): what a request costs
   * everything on its path, the load generator and the upstream included. Unlike req/s it does
   * not depend on who waits for whom, so it shows a path's cost where the load generator is the
   * bottleneck (`direct`, `warden-l4`).
   */
  machine_us_per_req?: number
  /** direct's machine_us_per_req / this one's: above 1 = this path costs the machine less. */
  vs_direct_machine?: number | null
  /** CPU (cores) used on the machine by anything but the proxy, the upstream and the load generator: noise. */
  foreign_cpu?: number
  /** rps / direct's rps. */
  vs_direct?: number | null
  /** rps_per_core / haproxy-l7's rps_per_core. */
  vs_haproxy_per_core?: number | null
  /** Expected status and the share of answers that had it. */
  expect_status?: number
  status_ok?: number
  wrk?: { rps: number, p50_us: number, p99_us: number } | { skipped: string }
  rounds?: RoundResult[]
}

export interface BenchResults {
  schema: 1
  date: string
  commit: string
  dirty: boolean
  machine: Record<string, string | number>
  knobs: Record<string, string | number | boolean>
  /** How the peers are placed, and other facts a reader needs. */
  notes: string[]
  scenarios: ScenarioResult[]
}

export function median (xs: readonly number[]): number {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2
}

const round3 = (x: number): number => Math.round(x * 1000) / 1000

/** Medians of the rounds of one scenario, and its status check. */
export function summarise (name: string, rounds: RoundResult[], expectStatus: number, hasProxy: boolean): ScenarioResult {
  const med = (f: (r: RoundResult) => number): number => median(rounds.map(f))
  const proxyCpuS = med((r) => r.proxy_cpu_s)
  const total = rounds.reduce((a, r) => a + Object.values(r.status).reduce((x, y) => x + y, 0), 0)
  const ok = rounds.reduce((a, r) => a + (r.status[String(expectStatus)] ?? 0), 0)
  const statusOk = total === 0 ? 0 : ok / total
  const perCore = rounds.map((r) => r.proxy_cpu_s > 0 ? r.requests / r.proxy_cpu_s : NaN).filter((x) => !Number.isNaN(x))
  const out: ScenarioResult = {
    name,
    rps: Math.round(med((r) => r.rps)),
    p50_us: Math.round(med((r) => r.p50_us)),
    p99_us: Math.round(med((r) => r.p99_us)),
    p999_us: Math.round(med((r) => r.p999_us)),
    proxy_cpu: hasProxy ? round3(med((r) => r.proxy_cpu_s / r.duration_s)) : 0,
    rps_per_core: hasProxy && perCore.length > 0 ? Math.round(median(perCore)) : null,
    upstream_cpu: round3(med((r) => r.upstream_cpu_s / r.duration_s)),
    client_cpu: round3(med((r) => r.client_cpu_s / r.duration_s)),
    machine_cpu: round3(med((r) => r.machine_cpu_s / r.duration_s)),
    machine_us_per_req: Math.round(med((r) => r.requests > 0 ? r.machine_cpu_s * 1e6 / r.requests : NaN) * 10) / 10,
    foreign_cpu: round3(Math.max(0, med((r) => (r.machine_cpu_s - r.proxy_cpu_s - r.upstream_cpu_s - r.client_cpu_s) / r.duration_s))),
    expect_status: expectStatus,
    status_ok: round3(statusOk),
    rounds
  }
  if (total === 0) out.error = 'no responses'
  else if (statusOk < 0.99) out.error = `only ${(statusOk * 100).toFixed(1)}% of answers were ${expectStatus}: ${JSON.stringify(Object.fromEntries(Object.entries(rounds[0]?.status ?? {})))}`
  else if (hasProxy && proxyCpuS <= 0) out.error = 'no proxy CPU time was measured'
  return out
}

/** Fills vs_direct, vs_direct_machine and vs_haproxy_per_core from the `direct` and `haproxy-l7` rows. */
export function addRatios (scenarios: ScenarioResult[]): void {
  const usable = (s: ScenarioResult | undefined): s is ScenarioResult => s !== undefined && s.skipped === undefined && s.error === undefined
  const directH1 = scenarios.find((s) => s.name === 'direct')
  const directH2 = scenarios.find((s) => s.name === 'direct-h2')
  const haproxyH1 = scenarios.find((s) => s.name === 'haproxy-l7')
  const haproxyH2 = scenarios.find((s) => s.name === 'haproxy-l7-h2')
  for (const s of scenarios) {
    if (s.skipped !== undefined) continue
    // HTTP/2 scenarios are compared with HAProxy speaking HTTP/2
    const haproxy = s.name.endsWith('-h2') ? haproxyH2 : haproxyH1
    const direct = s.name.endsWith('-h2') ? directH2 : directH1
    s.vs_direct = usable(direct) && direct.rps !== undefined && direct.rps > 0 && s.rps !== undefined ? round3(s.rps / direct.rps) : null
    s.vs_direct_machine = usable(direct) && typeof direct.machine_us_per_req === 'number' && typeof s.machine_us_per_req === 'number' && s.machine_us_per_req > 0
      ? round3(direct.machine_us_per_req / s.machine_us_per_req)
      : null
    s.vs_haproxy_per_core = usable(haproxy) && typeof haproxy.rps_per_core === 'number' && typeof s.rps_per_core === 'number'
      ? round3(s.rps_per_core / haproxy.rps_per_core)
      : null
  }
}
