/**
 * `warden demo --nodes 2`: the seed's scenario across two nodes of a cluster lab
 * (lab/cluster.ts). billing-service and kube-dns on node a, their clients (checkout, auditing,
 * prometheus, data-exporter) on node b: every HTTP check and every DNS lookup crosses the nodes.
 * api.github.com and www.google.com are hosts outside the cluster, named by the lab DNS only.
 * One agent per node, inside the node's namespace, sharing identities through the lab's etcd
 * (docs/cluster.md). The same checks and table as the one-node demo (demo.ts), and one line
 * more: node a's access log names the client pod of node b.
 *
 * Its names are its own (`wdc2-` namespaces, 198.19.140.0/22, its own ports and work
 * directory), so it runs beside the one-node demo.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { clusterDown, clusterUp, etcdEndpoint, externalNs, parseClusterSpec, podNs, type ClusterSpec } from '../lab/cluster.js'
import { NodeAgent } from '../lab/cluster-agents.js'
import { isAlive, startBilling, startDnsmasq, startHttpsHost, stop, type Started } from './services.js'
import { DEFAULT_DEMO, repoRoot, type DemoConfig, type Exec } from './session.js'
import { renderTable, runChecks, type CheckResult } from './demo.js'
import { completeLines } from './log-lines.js'

const SPEC = `
prefix: wdc2-
workDir: /run/warden-demo-2nodes
underlay: 198.19.140.0/24
etcd: {ip: 198.19.140.2, clientPort: 23806, peerPort: 23807}
dns: 198.19.141.53
nodes:
  - name: a
    ip: 198.19.140.11
    podCIDR: 198.19.141.0/24
    endpoints:
      - {name: billing-service, labels: {app: billing-service, class: sensitive}, ipv4: 198.19.141.10, interface: lxc-billing}
      - {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}, ipv4: 198.19.141.53, interface: lxc-kubedns}
  - name: b
    ip: 198.19.140.12
    podCIDR: 198.19.142.0/24
    endpoints:
      - {name: checkout-service, labels: {app: checkout-service}, ipv4: 198.19.142.11, interface: lxc-checkout}
      - {name: auditing-service, labels: {app: auditing-service}, ipv4: 198.19.142.12, interface: lxc-auditing}
      - {name: prometheus, labels: {app: prometheus, system: monitoring}, ipv4: 198.19.142.13, interface: lxc-prom}
      - {name: data-exporter, labels: {app: data-exporter}, ipv4: 198.19.142.14, interface: lxc-exporter}
external:
  - {name: github, ip: 198.19.140.100}
  - {name: google, ip: 198.19.140.101}
`

/** The cluster lab of the two-node demo. */
export function twoNodeSpec (): ClusterSpec { return parseClusterSpec(SPEC, 'demo/two-nodes.ts') }

/** The demo's config for the checks (demo.ts demoChecks): only denyResponse and the ports matter here. */
export const TWO_NODE_DEMO: DemoConfig = {
  ...DEFAULT_DEMO,
  workDir: '/run/warden-demo-2nodes',
  nsPrefix: 'wdc2-',
  ifPrefix: 'lxc-',
  subnet: '198.19.141',
  bpffs: '/run/warden-demo-2nodes/bpffs',
  routeTable: 2440,
  proxyPort: 17340,
  dnsProxyPort: 17341,
  metricsPort: 17342
}

interface State { servers: Started[], agents: Array<{ node: string, pid: number }> }

function statePath (spec: ClusterSpec): string { return join(spec.workDir, 'demo.json') }

function readState (spec: ClusterSpec): State {
  try { return JSON.parse(readFileSync(statePath(spec), 'utf8')) as State } catch { return { servers: [], agents: [] } }
}

/** Stop what a (possibly partial or --keep) run left: agents and servers by PID, then the lab. */
export async function teardownTwoNodes (spec: ClusterSpec = twoNodeSpec()): Promise<void> {
  const state = readState(spec)
  for (const a of state.agents) {
    // only if it is still the agent this demo started (a PID can be reused)
    const argv = (() => { try { return readFileSync(`/proc/${a.pid}/cmdline`, 'utf8') } catch { return '' } })()
    if (isAlive(a.pid) && argv.includes(spec.workDir)) await stop({ name: `warden run (node ${a.node})`, pid: a.pid }, 5000)
  }
  for (const s of state.servers) await stop(s)
  await clusterDown(spec)
}

export class TwoNodeSession {
  readonly spec = twoNodeSpec()
  readonly agents: Map<string, NodeAgent>
  private readonly state: State = { servers: [], agents: [] }
  private readonly where = new Map<string, string>()

  constructor (readonly cfg: DemoConfig = TWO_NODE_DEMO) {
    const args = (node: string): string[] => {
      const n = this.spec.nodes.find((x) => x.name === node)
      if (n === undefined) throw new Error(`no node ${node}`)
      return ['--proxy-port', String(cfg.proxyPort), '--dns-proxy-port', String(cfg.dnsProxyPort),
        '--route-table', String(cfg.routeTable), '--deny-response', cfg.denyResponse,
        '--metrics', `127.0.0.1:${cfg.metricsPort}`,
        '--kvstore', etcdEndpoint(this.spec), '--node-name', node, '--node-ip', n.ip, '--pod-cidr', n.podCidr]
    }
    const policies = cfg.policies ?? join(repoRoot(), 'demo', 'policies')
    this.agents = new Map(this.spec.nodes.map((n) => [n.name, new NodeAgent(this.spec, n.name, { policies, args: args(n.name) })]))
    for (const n of this.spec.nodes) for (const e of n.endpoints) this.where.set(e.name, podNs(this.spec, n.name, e.name))
    for (const x of this.spec.external) this.where.set(x.name, externalNs(this.spec, x.name))
  }

  /** The lab, the servers and both agents; on failure everything made so far is removed. */
  static async open (cfg: DemoConfig = TWO_NODE_DEMO, print: (s: string) => void = () => {}): Promise<TwoNodeSession> {
    const s = new TwoNodeSession(cfg)
    await teardownTwoNodes(s.spec)
    try {
      print('building the two-node lab (nodes, underlay, routes, etcd) ...')
      await clusterUp(s.spec)
      const dir = s.spec.workDir
      const certs = join(dir, 'certs')
      mkdirSync(certs, { recursive: true })
      s.started(startBilling(dir, s.ns('billing-service')))
      s.started(startHttpsHost(dir, 'github', s.ns('github'), 'api.github.com', certs))
      s.started(startHttpsHost(dir, 'google', s.ns('google'), 'www.google.com', certs))
      const ip = (name: string): string => s.spec.external.find((x) => x.name === name)?.ip ?? ''
      s.started(startDnsmasq(dir, s.ns('kube-dns'), s.kubeDns, [
        { name: 'api.github.com', ipv4: ip('github') }, { name: 'www.google.com', ipv4: ip('google') }
      ], cfg.dnsTtl ?? 30))
      print('starting `warden run` on each node (the seed\'s policies, one etcd) ...')
      for (const [node, a] of s.agents) {
        await a.start()
        s.state.agents.push({ node, pid: a.pid as number })
        s.save()
      }
      await s.waitReady()
      return s
    } catch (err) {
      await teardownTwoNodes(s.spec)
      throw err
    }
  }

  get kubeDns (): string { return '198.19.141.53' }
  get githubCa (): string { return join(this.spec.workDir, 'certs', 'api.github.com.crt') }
  ns (name: string): string {
    const ns = this.where.get(name)
    if (ns === undefined) throw new Error(`no workload or host ${name} in the two-node demo`)
    return ns
  }

  private started (s: Started): void { this.state.servers.push(s); this.save() }
  private save (): void { if (existsSync(this.spec.workDir)) writeFileSync(statePath(this.spec), JSON.stringify(this.state, null, 2)) }

  async exec (from: string, argv: string[], timeoutMs = 15_000): Promise<Exec> {
    return await new Promise((resolve) => {
      execFile('ip', ['netns', 'exec', this.ns(from), ...argv], { timeout: timeoutMs }, (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1
        resolve({ code, stdout: String(stdout), stderr: String(stderr) })
      })
    })
  }

  /**
   * The servers answer in their namespaces, and the path from node b to billing-service works
   * (prometheus GET /healthz: allowed once node a's agent knows prometheus's identity from etcd).
   */
  private async waitReady (): Promise<void> {
    const probes: Array<[string, string[]]> = [
      ['billing-service', ['curl', '-s', '-o', '/dev/null', 'http://127.0.0.1:8080/healthz']],
      ['github', ['curl', '-s', '-k', '-o', '/dev/null', 'https://127.0.0.1/']],
      ['google', ['curl', '-s', '-k', '-o', '/dev/null', 'https://127.0.0.1/']],
      ['kube-dns', [process.execPath, '-e', `const r=new (require('dns').Resolver)();r.setServers(['${this.kubeDns}']);` +
        "r.resolve4('api.github.com',(e)=>process.exit(e?1:0))"]],
      ['prometheus', ['curl', '-s', '-f', '-o', '/dev/null', '--max-time', '2', 'http://billing-service:8080/healthz']]
    ]
    for (const [name, argv] of probes) {
      const deadline = Date.now() + 20_000
      while ((await this.exec(name, argv, 4000)).code !== 0) {
        if (Date.now() > deadline) throw new Error(`${name}: not ready after 20 s`)
        await sleep(100)
      }
    }
  }

  /** Node a's access-log line for the last request from `client` (a workload of node b), if any. */
  accessLineFor (client: string): Record<string, unknown> | undefined {
    const ip = this.spec.nodes.flatMap((n) => n.endpoints).find((e) => e.name === client)?.ipv4
    const log = this.agents.get('a')?.log() ?? ''
    // whole lines only: the agent is still writing, and its last line may be there in part
    const lines = completeLines(log).filter((l) => l.includes('"http request"')).map((l) => JSON.parse(l) as Record<string, unknown>)
    return lines.reverse().find((l) => String(l.src).includes(client) || l.src === ip)
  }

  async close (): Promise<void> { await teardownTwoNodes(this.spec) }
}

/**
 * Run the two-node demo: the checks of demo.ts across the nodes, the table, and the line from
 * node a's access log that names the client pod of node b.
 */
export async function runTwoNodeDemo (cfg: DemoConfig = TWO_NODE_DEMO, opts: { keep?: boolean, print?: (s: string) => void } = {}): Promise<{ results: CheckResult[], ok: boolean }> {
  const print = opts.print ?? ((s: string) => console.log(s))
  let interrupted = false
  const onSignal = (): void => { interrupted = true }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  let session: TwoNodeSession | undefined
  let keepRunning = false
  try {
    session = await TwoNodeSession.open(cfg, (m) => print(`warden demo --nodes 2: ${m}`))
    const results = await runChecks(session, () => interrupted)
    await sleep(300) // node a's log lines are flushed every 100 ms
    const line = session.accessLineFor('checkout-service')
    const labels = Array.isArray(line?.srcLabels) ? (line?.srcLabels as string[]) : []
    const named = line !== undefined && (String(line.src).includes('checkout-service') || labels.includes('k8s:app=checkout-service'))
    results.push({
      name: 'node a\'s access log names the client pod of node b',
      command: `grep '"http request"' ${session.agents.get('a')?.logPath ?? ''} | grep 198.19.142.11`,
      expected: 'checkout-service (its labels, from etcd), not an address',
      observed: line === undefined ? 'no line' : `src ${String(line.src)} ${labels.join(',')} ${String(line.method)} ${String(line.path)} ${String(line.verdict)}`,
      pass: named
    })
    const ok = results.every((r) => r.pass)
    print(renderTable(results))
    if (line !== undefined) print(`\nnode a's access log, the request from node b:\n  ${JSON.stringify(line)}`)
    print(ok ? `\nall ${results.length} checks passed` : `\n${results.filter((r) => !r.pass).length} of ${results.length} checks FAILED`)
    if (!ok) {
      for (const [node, a] of session.agents) print(`\nlast lines of node ${node}'s agent log (${a.logPath}):\n${a.log().split('\n').slice(-10).join('\n')}`)
    }
    if (opts.keep === true && !interrupted) {
      keepRunning = true
      print(`\nThe lab and both agents are still running (namespaces wdc2-*; logs in ${session.spec.workDir}/<node>/agent.log).` +
        `\n  ip netns exec ${session.ns('checkout-service')} curl -s -X POST http://billing-service:8080/api/v1/charge -o /dev/null -w "%{http_code}\\n"` +
        '\nRemove it all with: warden demo --nodes 2 --down')
    }
    return { results, ok }
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    if (!keepRunning) {
      print('warden demo --nodes 2: tearing down ...')
      if (session !== undefined) await session.close()
      else await teardownTwoNodes()
    }
  }
}
