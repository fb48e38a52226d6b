/**
 * `npm run bench [-- --quick] [-- --json] ...`: builds the lab, starts the upstream and the peers,
 * runs every scenario in interleaved rounds (A B C A B C ...), and writes the medians to
 * bench/results/ as JSON, a Markdown table and an SVG chart. Progress goes to stderr; with
 * `--json` the last line of stdout is the results object. Everything it starts is stopped by PID
 * and the lab is removed, also on failure or Ctrl-C.
 */
import { parseArgs } from 'node:util'
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { execFileSync, spawnSync } from 'node:child_process'
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { BenchLab, destroyLeftovers, type LabAddresses } from './lab-topology.js'
import { killRegistered, Proc, setProcRegistry, waitForTcp } from './procs.js'
import { haproxyConfig, nginxConfig, upstreamConfig } from './peer-config.js'
import { rulesFromManifests } from './peer-rules.js'
import { benchEndpoints, endpointsYaml, policyFiles, UPSTREAM_H2_PORT, UPSTREAM_PORT, upstreamPort, type PolicySet } from './workloads.js'
import { selectScenarios, WRK_SCENARIOS, type Scenario } from './scenarios.js'
import { runAutocannon, runH2load, runWrk, currentLoad, type CpuWatch } from './drivers.js'
import { uninstallAgent, WardenAgent } from './warden-agent.js'
import { addRatios, median, summarise, type BenchResults, type RoundResult, type ScenarioResult } from './results.js'
import { BENCH_DOC, markdownTable, svgChart, withTable } from './report.js'
import type { LoadSpec } from './load-client.js'

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
/** PIDs the harness started (see setProcRegistry); `--cleanup` stops the ones still alive. */
const PID_FILE = '/run/warden-bench.pids'

const USAGE = `npm run bench -- [options]
  --quick              short runs (1 round, 2 s each): the whole bench in under 2 minutes
  --json               print the results object as the last line of stdout
  --rounds N           interleaved rounds (default 3; env ROUNDS)
  --duration S         seconds per measured run (default 10; env DURATION)
  --warmup S           unmeasured seconds before each run (default 1)
  --connections N      autocannon connections (default 64; env CONNECTIONS)
  --pipelining N       autocannon pipelining (default 1; env PIPELINING)
  --workers N          autocannon worker threads (default 0 = in-process; env WORKERS)
  --rate N             offered load in requests/s over all connections (default 0 = as fast as it goes;
                       env RATE): compare paths by machine CPU per request at equal load
  --scenarios a,b      run only these scenarios
  --wrk                cross-check the top figures with wrk
  --out DIR            results directory (default bench/results)
  --readme             put the table in docs/benchmarks.md (between its bench:table markers)
  --cleanup            remove a crashed run's lab and agent state, then exit`

const T0 = Date.now()
const log = (msg: string): void => { process.stderr.write(`[bench +${((Date.now() - T0) / 1000).toFixed(1)}s] ${msg}\n`) }

interface Knobs { rounds: number, durationS: number, warmupS: number, connections: number, pipelining: number, workers: number, rate: number }

function knobs (v: Record<string, unknown>): Knobs {
  const num = (flag: string, env: string, def: number, quickDef: number): number => {
    const raw = (v[flag] as string | undefined) ?? process.env[env]
    const n = raw === undefined ? (v.quick === true ? quickDef : def) : Number(raw)
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${flag} must be a non-negative number, got ${String(raw)}`)
    return n
  }
  return {
    rounds: Math.max(1, Math.round(num('rounds', 'ROUNDS', 3, 1))),
    durationS: num('duration', 'DURATION', 10, 2),
    warmupS: num('warmup', 'WARMUP', 1, 0.5),
    connections: Math.max(1, Math.round(num('connections', 'CONNECTIONS', 64, 32))),
    pipelining: Math.max(1, Math.round(num('pipelining', 'PIPELINING', 1, 1))),
    workers: Math.round(num('workers', 'WORKERS', 0, 0)),
    rate: Math.round(num('rate', 'RATE', 0, 0))
  }
}

function sh (cmd: string, args: string[]): string {
  try {
    const r = spawnSync(cmd, args, { encoding: 'utf8' })
    return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim()
  } catch (err) {
    const e = err as { stdout?: string, stderr?: string }
    return `${e.stdout ?? ''}${e.stderr ?? ''}`.trim()
  }
}

function machineInfo (): Record<string, string | number> {
  const autocannonPkg = join(REPO, 'node_modules', 'autocannon', 'package.json')
  let autocannon = '?'
  try { autocannon = (JSON.parse(execFileSync('cat', [autocannonPkg], { encoding: 'utf8' })) as { version: string }).version } catch { /* unknown */ }
  return {
    cpu: cpus()[0]?.model ?? '?',
    cores: cpus().length,
    loadavg_at_start: loadavg().map((x) => x.toFixed(2)).join(' '),
    mem_gb: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
    haproxy: sh('haproxy', ['-v']).split('\n')[0].replace(/ - https.*$/, ''),
    nginx: sh('nginx', ['-v']).replace(/^nginx version: /, ''),
    autocannon,
    wrk: sh('wrk', ['-v']).split('\n')[0].replace(/ Copyright.*$/, '')
  }
}

interface Peer { proc: Proc, port: number }

/** The processes a run needs, started once for all rounds (the agent is per run: see runScenario). */
class Fixture {
  upstream: Proc | null = null
  peers = new Map<string, Peer>()
  agent: WardenAgent | null = null
  /** The policy set and flags the running agent was started with. */
  agentKey: string | null = null

  constructor (readonly lab: BenchLab, readonly tmp: string) {}

  get addr (): LabAddresses { return this.lab.addr }

  async startUpstream (): Promise<void> {
    const conf = join(this.tmp, 'upstream.conf')
    await writeFile(conf, upstreamConfig(UPSTREAM_PORT, this.tmp, 1, UPSTREAM_H2_PORT))
    this.upstream = new Proc(['ip', 'netns', 'exec', this.addr.serverNs, 'nginx', '-c', conf])
    await waitForTcp(this.addr.serverIp, UPSTREAM_PORT, 10_000, this.upstream)
  }

  /** Peers listen on 198.18.200.1 (host namespace): haproxy 1808x, nginx 1809x (x: 1 l7, 2 scale, 3 l7h2). */
  async startPeer (kind: 'haproxy' | 'nginx', set: PolicySet): Promise<void> {
    const key = `${kind}-${set}`
    if (this.peers.has(key)) return
    const port = (kind === 'haproxy' ? 18080 : 18090) + (set === 'scale' ? 2 : set === 'l7h2' ? 3 : 1)
    const eps = benchEndpoints(this.addr, set)
    const policy = rulesFromManifests(Object.values(policyFiles(set)), eps, 'billing-service', upstreamPort(set))
    const dir = join(this.tmp, key)
    await mkdir(dir, { recursive: true })
    const where = { listenIp: this.addr.hostIp, listenPort: port, upstreamIp: this.addr.serverIp, upstreamPort: upstreamPort(set), stateDir: dir }
    const conf = join(dir, kind === 'haproxy' ? 'haproxy.cfg' : 'nginx.conf')
    await writeFile(conf, kind === 'haproxy' ? haproxyConfig(policy, where, set === 'l7h2') : nginxConfig(policy, where))
    const proc = new Proc(kind === 'haproxy' ? ['haproxy', '-db', '-f', conf] : ['nginx', '-c', conf])
    this.peers.set(key, { proc, port })
    await waitForTcp(this.addr.hostIp, port, 10_000, proc)
  }

  async stopAgent (): Promise<void> {
    if (this.agent !== null) { await this.agent.stop(); this.agent = null; this.agentKey = null }
  }

  async stopAll (): Promise<void> {
    await this.stopAgent()
    for (const p of this.peers.values()) await p.proc.stop('SIGTERM')
    if (this.upstream !== null) await this.upstream.stop('SIGTERM')
  }
}

let aborted = false

function agentKey (s: Scenario): string { return `${s.set ?? ''} ${(s.agentArgs ?? []).join(' ')}` }

async function runScenario (fx: Fixture, s: Scenario, next: Scenario | undefined, round: number, k: Knobs, driver: 'autocannon' | 'wrk'): Promise<RoundResult | { wrk: { rps: number, p50_us: number, p99_us: number } }> {
  const a = fx.addr
  let url = `http://${a.serverIp}:${s.h2 === true ? UPSTREAM_H2_PORT : UPSTREAM_PORT}${s.request.path}`
  let proxyPid = 0
  if (s.kind === 'haproxy' || s.kind === 'nginx') {
    const peer = fx.peers.get(`${s.kind}-${s.set ?? ''}`)
    if (peer === undefined) throw new Error(`peer ${s.kind}-${s.set ?? ''} not started`)
    url = `http://${a.hostIp}:${peer.port}${s.request.path}`
    proxyPid = peer.proc.pid
  } else if (s.kind === 'warden') {
    const set = s.set as PolicySet
    if (fx.agent !== null && fx.agentKey !== agentKey(s)) await fx.stopAgent()
    if (fx.agent === null) {
      // The scale set has 101 endpoints to attach to: give the agent longer to come up.
      const readyMs = set === 'scale' ? 180_000 : 60_000
      fx.agent = await WardenAgent.start(join(fx.tmp, `agent-${s.name}-${round}-${driver}`), { policies: policyFiles(set), endpointsYaml: endpointsYaml(benchEndpoints(a, set)) }, readyMs, s.agentArgs)
      fx.agentKey = agentKey(s)
    }
    proxyPid = fx.agent.pid
  }
  const watch: CpuWatch = { proxyPid, upstreamPid: fx.upstream?.pid ?? 0 }
  try {
    if (s.h2 === true) {
      const m = await runH2load(a.clientNs, url, s.request.method, Math.max(1, Math.round(k.durationS)), fx.tmp, watch)
      // h2load counts status classes: the expected status stands for its class
      const status: Record<string, number> = {}
      const expectClass = `${String(s.request.expect).charAt(0)}xx`
      for (const [cls, n] of Object.entries(m.statusByClass)) status[cls === expectClass ? String(s.request.expect) : cls] = n
      return roundResult(round, m, status)
    }
    if (driver === 'wrk') {
      const w = await runWrk(a.clientNs, url, s.request.method, k.connections, Math.max(1, Math.round(k.durationS)), fx.tmp, watch)
      return { wrk: { rps: w.rps, p50_us: w.p50_us, p99_us: w.p99_us } }
    }
    const spec: LoadSpec = { url, method: s.request.method, connections: k.connections, pipelining: k.pipelining, workers: k.workers, durationS: k.durationS, warmupS: k.warmupS, rate: k.rate }
    const m = await runAutocannon(a.clientNs, spec, watch)
    return roundResult(round, m, m.statusCounts)
  } finally {
    // The agent stays up only for the next scenario if that one enforces the same policy set with the same flags.
    if (next?.kind !== 'warden' || agentKey(next) !== agentKey(s)) await fx.stopAgent()
  }
}

/** One round's record from a load generator's measurement (autocannon or h2load). */
function roundResult (round: number, m: Measured, status: Record<string, number>): RoundResult {
  return {
    round,
    requests: m.requests,
    duration_s: Math.round(m.durationS * 1000) / 1000,
    rps: m.requests / m.durationS,
    p50_us: m.p50_us,
    p99_us: m.p99_us,
    p999_us: m.p999_us,
    proxy_cpu_s: m.proxy_cpu_s,
    upstream_cpu_s: m.upstream_cpu_s,
    client_cpu_s: m.client_cpu_s,
    machine_cpu_s: m.machine_cpu_s,
    status,
    errors: m.errors,
    timeouts: m.timeouts
  }
}

/** What both load generators measure (the fields a round's record takes). */
type Measured = Pick<Awaited<ReturnType<typeof runAutocannon>>, 'requests' | 'durationS' | 'p50_us' | 'p99_us' | 'p999_us' |
'proxy_cpu_s' | 'upstream_cpu_s' | 'client_cpu_s' | 'machine_cpu_s' | 'errors' | 'timeouts'>

function gitCommit (): { commit: string, dirty: boolean } {
  const commit = sh('git', ['-C', REPO, 'rev-parse', 'HEAD'])
  const dirty = sh('git', ['-C', REPO, 'status', '--porcelain', '--untracked-files=no']) !== ''
  return { commit: /^[0-9a-f]{40}$/.test(commit) ? commit : 'unknown', dirty }
}

export async function runBench (v: Record<string, unknown>): Promise<BenchResults> {
  const k = knobs(v)
  const scenarios = selectScenarios(v.scenarios as string | undefined)
  const needsScale = scenarios.some((s) => s.set === 'scale')
  log(`scenarios: ${scenarios.map((s) => s.name).join(' ')}`)
  log(`knobs: ${JSON.stringify(k)}`)
  const tmp = await mkdtemp(join(tmpdir(), 'wbench-'))
  setProcRegistry(PID_FILE)
  const lab = await BenchLab.create({ dummies: needsScale ? 99 : 0 })
  const fx = new Fixture(lab, tmp)
  const onSignal = (sig: NodeJS.Signals): void => {
    log(`${sig}: stopping after cleanup`)
    aborted = true
    if (currentLoad !== null) void currentLoad.stop('SIGKILL')
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  const rounds = new Map<string, RoundResult[]>(scenarios.map((s) => [s.name, []]))
  const skipped = new Map<string, string>()
  const wrk = new Map<string, ScenarioResult['wrk']>()
  try {
    log('lab ready')
    await uninstallAgent() // a previous run's kernel state must not sit on the path of `direct`
    await fx.startUpstream()
    for (const s of scenarios) {
      if (s.kind !== 'haproxy' && s.kind !== 'nginx') continue
      try { await fx.startPeer(s.kind, s.set as PolicySet) } catch (err) {
        for (const same of scenarios) if (same.kind === s.kind && same.set === s.set) skipped.set(same.name, `peer did not start: ${(err as Error).message}`)
      }
    }
    log('upstream and peers ready')
    for (let r = 1; r <= k.rounds && !aborted; r++) {
      const todo = scenarios.filter((s) => !skipped.has(s.name))
      for (const [i, s] of todo.entries()) {
        if (aborted) break
        if (skipped.has(s.name)) continue
        try {
          const res = await runScenario(fx, s, todo[i + 1], r, k, 'autocannon') as RoundResult
          rounds.get(s.name)?.push(res)
          log(`round ${r}/${k.rounds} ${s.name}: ${Math.round(res.rps)} req/s, p99 ${res.p99_us} µs, proxy ${res.proxy_cpu_s.toFixed(2)} CPU-s, status ${JSON.stringify(res.status)}`)
        } catch (err) {
          const why = (err as Error).message
          skipped.set(s.name, s.kind === 'warden' ? `warden agent: ${why}` : why)
          log(`${s.name}: skipped: ${why.split('\n')[0]}`)
        }
      }
    }
    if (v.wrk === true && !aborted) {
      for (const s of scenarios) {
        if (!WRK_SCENARIOS.includes(s.name) || skipped.has(s.name) || aborted) continue
        try {
          const w = await runScenario(fx, s, undefined, 0, k, 'wrk') as { wrk: { rps: number, p50_us: number, p99_us: number } }
          wrk.set(s.name, w.wrk)
          log(`wrk ${s.name}: ${w.wrk.rps} req/s`)
        } catch (err) { wrk.set(s.name, { skipped: (err as Error).message.split('\n')[0] }) }
      }
    }
  } finally {
    log('stopping processes, removing the lab')
    await fx.stopAll()
    await lab.destroy()
    await rm(tmp, { recursive: true, force: true })
    setProcRegistry(null)
    await rm(PID_FILE, { force: true })
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
  if (aborted) throw new Error('interrupted')
  const results: ScenarioResult[] = scenarios.map((s) => {
    const rs = rounds.get(s.name) ?? []
    const why = skipped.get(s.name)
    if (why !== undefined && rs.length === 0) return { name: s.name, description: s.description, skipped: why }
    // Direct has no proxy; at L4 the agent's proxy is not on the path (its CPU is reported, ~0).
    const out = { ...summarise(s.name, rs, s.request.expect, s.kind !== 'direct' && s.set !== 'l4'), description: s.description }
    if (s.kind === 'warden' && s.set === 'l4') out.proxy_cpu = Math.round(median(rs.map((x) => x.proxy_cpu_s / x.duration_s)) * 1000) / 1000
    if (why !== undefined) out.error = `failed in a later round: ${why}`
    const w = wrk.get(s.name)
    if (w !== undefined) out.wrk = w
    return out
  })
  addRatios(results)
  return {
    schema: 1,
    date: new Date().toISOString(),
    ...gitCommit(),
    machine: machineInfo(),
    knobs: { rounds: k.rounds, duration_s: k.durationS, warmup_s: k.warmupS, connections: k.connections, pipelining: k.pipelining, workers: k.workers, rate: k.rate, quick: v.quick === true, order: 'interleaved' },
    notes: [
      'Lab: client and server in their own network namespaces (198.18.200.0/24), routed through the host namespace.',
      'HAProxy and nginx run in the host namespace as explicit reverse proxies on 198.18.200.1 (not behind warden\'s tc redirect), one worker each.',
      'The warden agent runs in the host namespace; the client connects to the server address and the tc program redirects to the proxy.',
      'proxy_cpu = utime+stime of the proxy processes from /proc during the measured run, in cores; rps_per_core = requests / proxy CPU-seconds.',
      'Load generator, proxy and upstream share the machine\'s cores.'
    ],
    scenarios: results
  }
}

async function main (): Promise<number> {
  let v: Record<string, unknown>
  try {
    v = parseArgs({
      args: process.argv.slice(2),
      options: {
        quick: { type: 'boolean' },
        json: { type: 'boolean' },
        rounds: { type: 'string' },
        duration: { type: 'string' },
        warmup: { type: 'string' },
        connections: { type: 'string' },
        pipelining: { type: 'string' },
        rate: { type: 'string' },
        workers: { type: 'string' },
        scenarios: { type: 'string' },
        wrk: { type: 'boolean' },
        out: { type: 'string' },
        readme: { type: 'boolean' },
        cleanup: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' }
      }
    }).values
  } catch (err) {
    console.error(`${(err as Error).message}\n\n${USAGE}`)
    return 1
  }
  if (v.help === true) { console.log(USAGE); return 0 }
  if (process.getuid?.() !== 0) { console.error('bench: needs root (network namespaces, tc, the agent)'); return 1 }
  if (v.cleanup === true) {
    const killed = killRegistered(PID_FILE)
    if (killed > 0) log(`stopped ${killed} process(es) a killed run left`)
    await uninstallAgent()
    await destroyLeftovers()
    log('removed leftovers of the lab and the agent state')
    return 0
  }
  const res = await runBench(v)
  const out = (v.out as string | undefined) ?? join(REPO, 'bench', 'results')
  await mkdir(out, { recursive: true })
  const json = JSON.stringify(res, null, 2) + '\n'
  const stamp = `${res.date.replace(/[:.]/g, '-')}-${res.commit.slice(0, 8)}${v.quick === true ? '-quick' : ''}`
  await writeFile(join(out, `${stamp}.json`), json)
  await writeFile(join(out, 'latest.json'), json)
  await writeFile(join(out, 'latest.md'), markdownTable(res))
  await writeFile(join(out, 'latest.svg'), svgChart(res))
  log(`results: ${join(out, `${stamp}.json`)} (+ latest.json, latest.md, latest.svg)`)
  if (v.readme === true) {
    const doc = join(REPO, BENCH_DOC)
    await writeFile(doc, withTable(await readFile(doc, 'utf8'), markdownTable(res)))
    log(`${BENCH_DOC} table updated`)
  }
  if (v.json === true) process.stdout.write(JSON.stringify(res) + '\n')
  else process.stdout.write(markdownTable(res))
  return 0
}

main().then((code) => { process.exitCode = code }, (err) => {
  console.error(`bench: ${(err as Error).stack ?? String(err)}`)
  process.exitCode = 1
})
