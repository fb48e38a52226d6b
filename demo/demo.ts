/**
 * `warden demo`: the seed's two patterns, end to end, on this machine.
 *
 * A lab of network namespaces stands in for the pods of the seed's manifests (what a CNI plugin
 * would have made), real servers play the services (nginx, dnsmasq), `warden run` enforces the
 * seed's two policies unchanged, and every verification the seed describes runs with curl from
 * inside the workloads. Everything is torn down at the end, on Ctrl-C and on failure.
 */
import { spawn, execFile } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync, rmSync, existsSync, openSync, closeSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { parse as parseYaml } from 'yaml'
import { labUp, labDown, type LabHost } from '../lab/lab.js'
import { uninstall } from '../redirect-bpf/src/index.js'
import { startBilling, startDnsmasq, startHttpsHost, stop, isAlive, makeCert, readLog, type Started } from './services.js'

/** Everything a second demo (a test) changes to run beside the first. */
export interface DemoConfig {
  /** Scratch directory: generated endpoints file, server configs, logs, certificates, state. */
  workDir: string
  /** Network namespaces are `<nsPrefix><workload name>`. */
  nsPrefix: string
  /** Host-side interface prefix replacing `wd-` of demo/endpoints.yaml (keep names <= 15 chars). */
  ifPrefix: string
  /** First three octets replacing `198.19.0` of demo/endpoints.yaml. */
  subnet: string
  bpffs: string
  routeTable: number
  proxyPort: number
  dnsProxyPort: number
  metricsPort: number
  denyResponse: '403' | 'reset'
}

export const DEFAULT_DEMO: DemoConfig = {
  workDir: '/run/warden-demo',
  nsPrefix: 'wd-',
  ifPrefix: 'wd-',
  subnet: '198.19.0',
  bpffs: '/sys/fs/bpf/warden-demo',
  routeTable: 2004,
  proxyPort: 15001,
  dnsProxyPort: 15053,
  metricsPort: 9962,
  denyResponse: '403'
}

export interface CheckResult {
  name: string
  command: string
  expected: string
  observed: string
  pass: boolean
  /** Where warden (like Cilium) differs from what the seed document says. */
  note?: string
}

interface DemoState {
  config: DemoConfig
  servers: Started[]
  agentPid?: number
  hosts: LabHost[]
}

export function repoRoot (): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir)
    if (up === dir) throw new Error('cannot find the warden checkout')
    dir = up
  }
  return dir
}

interface DemoEndpoint { name: string, namespace?: string, ipv4: string, interface: string }

/** demo/endpoints.yaml with this run's subnet and interface names. */
function renderEndpoints (cfg: DemoConfig): { text: string, endpoints: DemoEndpoint[] } {
  const src = readFileSync(join(repoRoot(), 'demo', 'endpoints.yaml'), 'utf8')
  const text = src.replaceAll('198.19.0.', `${cfg.subnet}.`).replaceAll('interface: wd-', `interface: ${cfg.ifPrefix}`)
  const endpoints = (parseYaml(text) as { endpoints: DemoEndpoint[] }).endpoints
  return { text, endpoints }
}

/** The lab: one namespace per workload, plus two "internet" hosts that are not endpoints. */
function labHosts (cfg: DemoConfig, endpoints: DemoEndpoint[]): LabHost[] {
  // Workloads resolve each other through /etc/hosts (like Kubernetes service names); the
  // internet names resolve ONLY through DNS, so the DNS proxy sees (and learns) them.
  const hosts: LabHost[] = endpoints.map((e) => ({ name: e.name, ipv4: e.ipv4, hostIf: e.interface }))
  hosts.push({ name: 'inet-github', ipv4: `${cfg.subnet}.100`, hostIf: `${cfg.ifPrefix}inet-gh` })
  hosts.push({ name: 'inet-google', ipv4: `${cfg.subnet}.101`, hostIf: `${cfg.ifPrefix}inet-gg` })
  return hosts
}

function ns (cfg: DemoConfig, name: string): string { return cfg.nsPrefix + name }

interface Exec { code: number, stdout: string, stderr: string }

async function execIn (netns: string, argv: string[], timeoutMs: number): Promise<Exec> {
  return await new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', netns, ...argv], { timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as NodeJS.ErrnoException & { code?: unknown }).code === 'number' ? (err as unknown as { code: number }).code : -1
      resolve({ code, stdout: String(stdout), stderr: String(stderr) })
    })
  })
}

function describe (r: Exec): string {
  if (r.code === 28) return 'timed out (curl exit 28)'
  if (r.code === 56) return 'connection reset (curl exit 56)'
  if (r.code === 7) return 'connection refused (curl exit 7)'
  const out = r.stdout.trim().split('\n').map((l) => l.trim()).filter((l) => l !== '')
  if (r.code !== 0) return `curl exit ${r.code} ${out.join(' ')}`.trim()
  return out.join(' ')
}

interface CheckSpec {
  name: string
  from: string
  curl: string[]
  expected: string
  ok (r: Exec): boolean
  note?: string
}

function checks (cfg: DemoConfig): CheckSpec[] {
  const code = ['-s', '-o', '/dev/null', '-w', '%{http_code}']
  const l7Denied = cfg.denyResponse === '403'
    ? { expected: '403 Access denied', ok: (r: Exec) => r.code === 0 && /Access denied/.test(r.stdout) && /403$/.test(r.stdout.trim()) }
    : { expected: 'connection reset', ok: (r: Exec) => r.code === 56 }
  const seedNote = 'seed says "times out"; Cilium (and warden) deny an L4-allowed peer at L7 with ' +
    (cfg.denyResponse === '403' ? '403 Access denied' : 'a reset (--deny-response reset)')
  const ca = join(cfg.workDir, 'certs', 'api.github.com.crt')
  return [
    {
      name: 'checkout POST /api/v1/charge',
      from: 'checkout-service',
      curl: [...code, '-X', 'POST', 'http://billing-service:8080/api/v1/charge', '--max-time', '5'],
      expected: '404 (allowed; nginx has no such page)',
      ok: (r) => r.code === 0 && r.stdout.trim() === '404'
    },
    {
      name: 'checkout GET /api/v1/invoices/123',
      from: 'checkout-service',
      curl: ['-s', '-w', '\n%{http_code}', '-X', 'GET', 'http://billing-service:8080/api/v1/invoices/123', '--max-time', '5'],
      ...l7Denied,
      note: seedNote
    },
    {
      name: 'auditing GET /api/v1/invoices/123',
      from: 'auditing-service',
      curl: [...code, '-X', 'GET', 'http://billing-service:8080/api/v1/invoices/123', '--max-time', '5'],
      expected: '404 (allowed)',
      ok: (r) => r.code === 0 && r.stdout.trim() === '404'
    },
    {
      name: 'auditing POST /api/v1/charge',
      from: 'auditing-service',
      curl: ['-s', '-w', '\n%{http_code}', '-X', 'POST', 'http://billing-service:8080/api/v1/charge', '--max-time', '5'],
      ...l7Denied,
      note: seedNote
    },
    {
      name: 'monitoring GET /healthz',
      from: 'prometheus',
      curl: [...code, 'http://billing-service:8080/healthz', '--max-time', '5'],
      expected: '200 (allowed)',
      ok: (r) => r.code === 0 && r.stdout.trim() === '200'
    },
    {
      name: 'data-exporter to billing-service:8080',
      from: 'data-exporter',
      curl: [...code, 'http://billing-service:8080/healthz', '--connect-timeout', '3', '--max-time', '5'],
      expected: 'timed out (no rule allows it at L4: dropped in the kernel)',
      ok: (r) => r.code === 28
    },
    {
      name: 'data-exporter HEAD https://api.github.com',
      from: 'data-exporter',
      curl: ['-s', '-I', 'https://api.github.com', '--connect-timeout', '5', '--max-time', '8', '--cacert', ca],
      expected: 'HTTP/2 404 (connection made to the name toFQDNs allows)',
      ok: (r) => r.code === 0 && /^HTTP\/2 404/.test(r.stdout.trim())
    },
    {
      name: 'data-exporter HEAD https://www.google.com',
      from: 'data-exporter',
      curl: ['-s', '-I', 'https://www.google.com', '--connect-timeout', '5', '--max-time', '8', '-k'],
      expected: 'timed out (resolved through the DNS proxy, but no toFQDNs rule allows it)',
      ok: (r) => r.code === 28
    }
  ]
}

function statePath (cfg: DemoConfig): string { return join(cfg.workDir, 'state.json') }

async function startAgent (cfg: DemoConfig, hosts: LabHost[]): Promise<number> {
  const root = repoRoot()
  const log = openSync(join(cfg.workDir, 'agent.log'), 'a')
  const args = [join(root, 'bin', 'warden.js'), 'run',
    '--policies', join(root, 'demo', 'policies'),
    '--endpoints', join(cfg.workDir, 'endpoints.yaml'),
    '--bpffs', cfg.bpffs, '--route-table', String(cfg.routeTable),
    '--proxy-port', String(cfg.proxyPort), '--dns-proxy-port', String(cfg.dnsProxyPort),
    '--state-dir', join(cfg.workDir, 'state'), '--deny-response', cfg.denyResponse,
    '--metrics', `127.0.0.1:${cfg.metricsPort}`]
  for (const h of hosts) if (h.name.startsWith('inet-')) args.push('--uplink', h.hostIf)
  const child = spawn(process.execPath, args, { stdio: ['ignore', log, log], detached: true })
  closeSync(log)
  child.unref()
  const pid = child.pid as number
  const deadline = Date.now() + 30_000
  while (Date.now() < deadline) {
    if (readLog(join(cfg.workDir, 'agent.log')).includes('warden agent ready')) return pid
    if (!isAlive(pid)) break
    await sleep(100)
  }
  throw new Error(`warden run did not become ready; its log:\n${readLog(join(cfg.workDir, 'agent.log')).split('\n').slice(-20).join('\n')}`)
}

/** Stops whatever a (possibly partial) demo left: agent, kernel state, servers, lab, files. */
export async function teardown (cfg: DemoConfig): Promise<void> {
  let state: DemoState | undefined
  try { state = JSON.parse(readFileSync(statePath(cfg), 'utf8')) as DemoState } catch {}
  if (state?.agentPid !== undefined) await stop({ name: 'warden run', pid: state.agentPid }, 5000)
  await uninstall({ bpffs: cfg.bpffs, routeTable: cfg.routeTable }).catch(() => {})
  for (const s of state?.servers ?? []) await stop(s)
  const hosts = state?.hosts ?? labHosts(cfg, renderEndpoints(cfg).endpoints)
  await labDown({ prefix: cfg.nsPrefix, hosts })
  rmSync(cfg.workDir, { recursive: true, force: true })
}

export interface DemoRun { results: CheckResult[], ok: boolean }

export async function runDemo (cfg: DemoConfig, opts: { keep?: boolean, print?: (s: string) => void } = {}): Promise<DemoRun> {
  const print = opts.print ?? ((s: string) => console.log(s))
  await teardown(cfg) // a previous run that was killed hard
  mkdirSync(join(cfg.workDir, 'certs'), { recursive: true })
  const { text, endpoints } = renderEndpoints(cfg)
  writeFileSync(join(cfg.workDir, 'endpoints.yaml'), text)
  const hosts = labHosts(cfg, endpoints)
  const kubeDns = endpoints.find((e) => e.name === 'kube-dns') as DemoEndpoint
  const state: DemoState = { config: cfg, servers: [], hosts }
  const save = (): void => writeFileSync(statePath(cfg), JSON.stringify(state, null, 2))
  save()

  let interrupted = false
  const onSignal = (): void => { interrupted = true }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  let keepRunning = false
  try {
    print('warden demo: building the lab (namespaces, veths, routes) ...')
    await labUp({ prefix: cfg.nsPrefix, hosts, dns: kubeDns.ipv4 })
    state.servers.push(startBilling(cfg.workDir, ns(cfg, 'billing-service')))
    makeCert(join(cfg.workDir, 'certs'), 'api.github.com')
    state.servers.push(startHttpsHost(join(cfg.workDir, 'certs'), ns(cfg, 'inet-github'), 'api.github.com'))
    state.servers.push(startHttpsHost(join(cfg.workDir, 'certs'), ns(cfg, 'inet-google'), 'www.google.com'))
    state.servers.push(startDnsmasq(cfg.workDir, ns(cfg, 'kube-dns'), kubeDns.ipv4, [
      { name: 'api.github.com', ipv4: `${cfg.subnet}.100` },
      { name: 'www.google.com', ipv4: `${cfg.subnet}.101` }
    ], 30))
    save()
    print('warden demo: starting `warden run` on the seed\'s two policies ...')
    state.agentPid = await startAgent(cfg, hosts)
    save()
    await sleep(300) // nginx and dnsmasq bind while the agent starts; give the slowest a moment

    const results: CheckResult[] = []
    for (const c of checks(cfg)) {
      if (interrupted) throw new Error('interrupted')
      const r = await execIn(ns(cfg, c.from), ['curl', ...c.curl], 15_000)
      results.push({
        name: c.name,
        command: `ip netns exec ${ns(cfg, c.from)} curl ${c.curl.map((a) => (/[\s%{}\\]/.test(a) ? `'${a.replace(/\n/g, '\\n')}'` : a)).join(' ')}`,
        expected: c.expected,
        observed: describe(r),
        pass: c.ok(r),
        note: c.note
      })
    }
    const ok = results.every((r) => r.pass)
    print(renderTable(results))
    print(ok ? `\nall ${results.length} checks passed` : `\n${results.filter((r) => !r.pass).length} of ${results.length} checks FAILED`)
    if (!ok) print(`\nlast lines of the agent's log:\n${readLog(join(cfg.workDir, 'agent.log')).split('\n').slice(-15).join('\n')}`)
    if (opts.keep === true && !interrupted) {
      keepRunning = true
      print(keepInstructions(cfg))
    }
    return { results, ok }
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    if (!keepRunning) {
      print('warden demo: tearing down ...')
      await teardown(cfg)
    }
  }
}

function renderTable (rows: CheckResult[]): string {
  const head = ['check', 'expected', 'observed', 'result']
  const body = rows.map((r) => [r.name, r.expected, r.observed, r.pass ? 'pass' : 'FAIL'])
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)))
  const line = (cells: string[]): string => '| ' + cells.map((c, i) => c.padEnd(widths[i])).join(' | ') + ' |'
  const out = [line(head), '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...body.map(line)]
  out.push('', 'commands:')
  for (const r of rows) out.push(`  ${r.name}: ${r.command}`)
  const notes = rows.filter((r) => r.note !== undefined)
  if (notes.length > 0) {
    out.push('', 'where warden follows Cilium rather than the seed:')
    for (const r of notes) out.push(`  ${r.name}: ${r.note as string}`)
  }
  return out.join('\n')
}

function keepInstructions (cfg: DemoConfig): string {
  const n = (s: string): string => ns(cfg, s)
  return `
The lab and the agent are still running. Try by hand:
  ip netns exec ${n('checkout-service')} curl -s -X POST http://billing-service:8080/api/v1/charge -o /dev/null -w "%{http_code}\\n"
  ip netns exec ${n('checkout-service')} curl -s http://billing-service:8080/api/v1/invoices/123
  ip netns exec ${n('auditing-service')} curl -s http://billing-service:8080/api/v1/invoices/123 -o /dev/null -w "%{http_code}\\n"
  ip netns exec ${n('data-exporter')} curl -s -I https://api.github.com --cacert ${cfg.workDir}/certs/api.github.com.crt
  ip netns exec ${n('data-exporter')} curl -s -I -k https://www.google.com --connect-timeout 5
  curl -s http://127.0.0.1:${cfg.metricsPort}/metrics
  tail -f ${cfg.workDir}/agent.log     # pino JSON: one line per request, DNS query and kernel flow
Edit ${resolve(repoRoot(), 'demo', 'policies')} and watch the agent pick it up. Remove it all with:
  warden demo --down`
}
