/**
 * A real `warden run` (the built dist/, as a child process) on a datapath lab's namespaces (root,
 * real kernel): lab number `n` gives the netns, veths, addresses, bpffs dir, route table and
 * ports (lab-fixture.ts's labLayout), the agent's policies, endpoints file, state, log and API
 * socket live in a temp dir of the test's own. Servers and clients run inside the namespaces as
 * small node programs. Everything (agent and processes by PID, kernel state, namespaces, files)
 * is removed in t.teardown, also when the test fails.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { labDown, labUp } from '../../lab/lab.js'
import { uninstall } from '../../redirect-bpf/src/index.js'
import { repoRoot } from '../../demo/session.js'
import { labLayout } from './lab-fixture.js'
import { runCli } from './cli.js'
import { poll } from './poll.js'

interface TapLike { teardown: (fn: () => unknown) => void }

export interface AgentLab {
  /** The agent's temp dir (policies/, endpoints.yaml, state/, agent.log, warden.sock). */
  dir: string
  sock: string
  metricsPort: number
  ns: (name: string) => string
  ip: (name: string) => string
  /** Write (or replace, by rename as an editor does) a policy file. */
  writePolicy: (file: string, text: string) => void
  /** Everything the agent wrote to stdout so far. */
  log: () => string
  /** `warden status --json` against this agent: the exit code and the parsed answer (null: no answer). */
  status: () => Promise<{ code: number, json: Status | null, text: string }>
  /** A node program run in namespace `ns`; ended by PID at teardown if still running. */
  run: (ns: string, source: string, args: string[]) => ChildProcess
}

/** What the e2e tests read of `warden status --json`. */
export interface Status {
  healthy: boolean
  degraded: string[]
  policy: { compiled: number, kernel: number, httpProxy: number, dnsProxy: number }
  http: { proxies: { total: number, running: number }, workers: Array<{ worker: number, running: boolean, policyVersion: number | null, behindSeconds: number, lagging: boolean }> }
}

// An HTTP/1.1 server answering 200 `ok` to everything, keep-alive.
const HTTP_SERVER = `
const s = require('http').createServer((req, res) => res.end('ok'))
s.listen(+process.argv[1], '0.0.0.0', () => console.log('ready'))
`

async function stopProcess (p: ChildProcess, ms = 10_000): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null || p.pid === undefined) return
  const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()))
  process.kill(p.pid, 'SIGTERM')
  const timer = setTimeout(() => { if (p.pid !== undefined && p.exitCode === null && p.signalCode === null) process.kill(p.pid, 'SIGKILL') }, ms)
  await exited
  clearTimeout(timer)
}

/**
 * Lab `n` with hosts `names` (each an endpoint `default/<name>` labelled `app: <name>`), the
 * policy files given, and `warden run` with `args` added, ready (its API answers) when this
 * resolves.
 */
export async function agentLab (t: TapLike, n: number, names: string[], policies: Record<string, string>, args: string[]): Promise<AgentLab> {
  const { prefix, eps, spec, opts } = labLayout(n, names)
  const dir = mkdtempSync(join(tmpdir(), `warden-agent-lab${n}-`))
  const children: ChildProcess[] = []
  // teardowns run last-registered first: the agent and the processes go before the lab
  t.teardown(async () => {
    await uninstall({ bpffs: opts.bpffs, routeTable: opts.routeTable }).catch(() => {})
    await labDown(spec).catch(() => {})
    rmSync(dir, { recursive: true, force: true })
  })
  t.teardown(async () => { for (const c of children) await stopProcess(c) })
  await labDown(spec) // leftovers of an earlier, killed run
  await uninstall({ bpffs: opts.bpffs, routeTable: opts.routeTable })
  await labUp(spec)

  const policyDir = join(dir, 'policies')
  writeFileSync(join(dir, 'endpoints.yaml'), 'endpoints:\n' + eps.map((e) =>
    `  - {name: ${e.name}, namespace: default, labels: {app: ${e.name}}, ipv4: ${e.ipv4}, interface: ${e.iface}}\n`).join(''))
  const writePolicy = (file: string, text: string): void => {
    // written beside, then renamed over the old one, as editors and atomic writers do
    const tmp = join(dir, `${file}.tmp`)
    writeFileSync(tmp, text)
    renameSync(tmp, join(policyDir, file))
  }
  mkdirSync(policyDir)
  for (const [file, text] of Object.entries(policies)) writeFileSync(join(policyDir, file), text)

  const sock = join(dir, 'warden.sock')
  const metricsPort = opts.proxyPort + 2
  const logPath = join(dir, 'agent.log')
  const logFd = openSync(logPath, 'a')
  const agent = spawn(process.execPath, [join(repoRoot(), 'bin', 'warden.js'), 'run',
    '--policies', policyDir, '--endpoints', join(dir, 'endpoints.yaml'),
    '--bpffs', opts.bpffs, '--route-table', String(opts.routeTable),
    '--proxy-port', String(opts.proxyPort), '--dns-proxy-port', String(opts.dnsProxyPort),
    '--state-dir', join(dir, 'state'), '--api-socket', sock, '--metrics', `127.0.0.1:${metricsPort}`, ...args],
  { stdio: ['ignore', logFd, logFd] })
  closeSync(logFd)
  children.push(agent)

  const lab: AgentLab = {
    dir,
    sock,
    metricsPort,
    ns: (name) => prefix + name,
    ip: (name) => eps.find((e) => e.name === name)?.ipv4 ?? '',
    writePolicy,
    log: () => readFileSync(logPath, 'utf8'),
    status: async () => {
      const r = await runCli(['status', '--json', '--api-socket', sock])
      let json: Status | null = null
      try { json = JSON.parse(r.out) as Status } catch { /* not JSON: json stays null, the text tells */ }
      return { code: r.code, json, text: r.out + r.err }
    },
    run: (ns, source, argv) => {
      const p = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', source, ...argv], { stdio: ['pipe', 'pipe', 'pipe'] })
      children.push(p)
      return p
    }
  }
  const up = await poll(async () => agent.exitCode === null ? await lab.status() : null, (s) => s === null || s.json !== null, 30_000, 200)
  if (up === null || up.json === null) throw new Error(`warden run did not start (exit ${String(agent.exitCode)}):\n${lab.log().slice(-4000)}`)
  return lab
}

/** An HTTP server on `port` in `ns`, answering 200 `ok`; resolves once it listens. */
export async function startHttpServer (lab: AgentLab, ns: string, port: number): Promise<void> {
  const p = lab.run(ns, HTTP_SERVER, [String(port)])
  let err = ''
  p.stderr?.on('data', (d) => { err += String(d) })
  await new Promise<void>((resolve, reject) => {
    p.stdout?.on('data', (d) => { if (String(d).includes('ready')) resolve() })
    p.once('exit', (code) => reject(new Error(`server in ${ns} exited ${String(code)}: ${err}`)))
  })
}

/** `curl` from namespace `ns`: the HTTP status, or `curl exit N`. A new connection each time. */
export async function curlStatus (ns: string, url: string): Promise<string> {
  const p = spawn('ip', ['netns', 'exec', ns, 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--connect-timeout', '2', '--max-time', '4', url])
  let out = ''
  p.stdout.on('data', (d) => { out += String(d) })
  const code = await new Promise<number | null>((resolve) => p.once('exit', (c) => resolve(c)))
  return code === 0 ? out.trim() : `curl exit ${String(code)}`
}
