/**
 * The soak: the demo's lab and `warden run` under steady load for N minutes, while the policy
 * changes every second and workloads come and go, as on a busy node.
 *
 *   npm run soak -- --minutes 30 [--http-rate 200] [--out bench/results]
 *
 * Load (each stream in its workload's namespace, bench/soak-client.ts): allowed and denied HTTP
 * through the HTTP proxy, allowed and refused DNS queries through the DNS proxy, HTTPS to a
 * learned toFQDNs address, and TCP connects the kernel drops. Churn: a policy file rewritten
 * every second (a rule for the churning workloads whose port alternates), and every two seconds
 * a workload added or removed, with a new `pod-template-hash` each time it comes back.
 *
 * It reports what a node's operator would ask: allowed requests lost or wrongly answered (must
 * be 0), denied ones that got through, the agent's resident memory and heap at start and end,
 * its event-loop delay, the policy versions it went through, and the kernel maps' fill levels.
 * Exit status 1 when an allowed request was lost or a denied one got through. Not a test: its
 * figures go to the benchmarks document.
 */
import { execFile, spawn } from 'node:child_process'
import { cpSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { get } from 'node:http'
import { join } from 'node:path'
import { parseArgs, promisify } from 'node:util'
import { DemoSession, repoRoot, internetAddress, type DemoConfig } from '../demo/session.js'
import { labDown, labUp, type LabHost } from '../lab/lab.js'
import type { Stream, StreamResult } from './soak-client.js'

const exec = promisify(execFile)

const CFG: DemoConfig = {
  workDir: '/run/warden-soak',
  nsPrefix: 'wsk-',
  ifPrefix: 'wsk-',
  subnet: '198.19.210',
  bpffs: '/sys/fs/bpf/warden-soak',
  routeTable: 2290,
  proxyPort: 15201,
  dnsProxyPort: 15253,
  metricsPort: 9964,
  denyResponse: '403',
  policies: '/run/warden-soak-policies',
  dnsTtl: 5
}
/** Workloads that come and go: namespaces `wskc-<n>`, veths `wskc<n>`, addresses .150 + n. */
const CHURN_SLOTS = 8
const CHURN_PREFIX = 'wskc-'

interface Sample { at: number, rss: number, heap: number, loopP99: number, loopMax: number, version: number }

function usage (): never {
  console.error('Usage: npm run soak -- [--minutes N] [--http-rate N] [--out DIR]')
  process.exit(2)
}

async function scrape (): Promise<Record<string, number>> {
  const text = await new Promise<string>((resolve, reject) => {
    get(`http://127.0.0.1:${CFG.metricsPort}/metrics`, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (c: string) => { body += c }).on('end', () => resolve(body))
    }).on('error', reject)
  })
  const out: Record<string, number> = {}
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const [k, v] = line.split(' ')
    out[k] = Number(v)
  }
  return out
}

async function mapFill (): Promise<Record<string, { entries: number, max: number }>> {
  const out: Record<string, { entries: number, max: number }> = {}
  for (const name of ['l7p_ct', 'l7p_ipcache', 'l7p_policy', 'l7p_endpoints']) {
    const pin = join(CFG.bpffs, name)
    try {
      const show = JSON.parse((await exec('bpftool', ['-j', 'map', 'show', 'pinned', pin])).stdout) as { max_entries: number }
      const dump = JSON.parse((await exec('bpftool', ['-j', 'map', 'dump', 'pinned', pin], { maxBuffer: 512 * 1024 * 1024 })).stdout) as unknown[]
      out[name] = { entries: dump.length, max: show.max_entries }
    } catch (err) {
      out[name] = { entries: -1, max: -1 }
      console.error(`soak: cannot read ${pin}: ${(err as Error).message}`)
    }
  }
  return out
}

function churnHosts (): LabHost[] {
  return Array.from({ length: CHURN_SLOTS }, (_, n) => ({ name: String(n), ipv4: `${CFG.subnet}.${150 + n}`, hostIf: `wskc${n}` }))
}

/** The churn policy: the churning workloads accept checkout on a port that alternates. */
function churnPolicy (i: number): string {
  return `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: soak-churn
spec:
  endpointSelector:
    matchLabels:
      app: churn
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: checkout-service
    toPorts:
    - ports:
      - port: "${9000 + (i % 2)}"
        protocol: TCP
`
}

/** auditing-service may look up www.google.com only (and reach billing): its other queries are refused. */
const AUDITING_DNS = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: soak-auditing-dns
spec:
  endpointSelector:
    matchLabels:
      app: auditing-service
  egress:
  - toEndpoints:
    - matchLabels:
        'k8s:io.kubernetes.pod.namespace': kube-system
        'k8s:k8s-app': kube-dns
    toPorts:
    - ports:
      - port: "53"
        protocol: UDP
      rules:
        dns:
        - matchName: "www.google.com"
  - toEndpoints:
    - matchLabels:
        app: billing-service
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
`

async function runClient (s: DemoSession, from: string, stream: Stream): Promise<StreamResult> {
  const script = join(repoRoot(), 'dist', 'bench', 'soak-client.js')
  return await new Promise((resolve) => {
    const child = spawn('ip', ['netns', 'exec', s.ns(from), process.execPath, script, JSON.stringify(stream)], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.setEncoding('utf8').on('data', (c: string) => { out += c })
    child.stderr.setEncoding('utf8').on('data', (c: string) => { err += c })
    child.once('exit', (code) => {
      try {
        resolve(JSON.parse(out.trim().split('\n').pop() ?? '') as StreamResult)
      } catch {
        resolve({ name: stream.name, sent: 0, right: 0, wrong: 1, samples: [`client exited ${String(code)}: ${err.slice(-500)}`], pending: 0 })
      }
    })
  })
}

async function main (): Promise<number> {
  let args
  try {
    args = parseArgs({ options: { minutes: { type: 'string' }, 'http-rate': { type: 'string' }, out: { type: 'string' }, help: { type: 'boolean' } } }).values
  } catch { usage() }
  if (args.help === true) usage()
  const minutes = Number(args.minutes ?? '1')
  const httpRate = Number(args['http-rate'] ?? '200')
  if (!(minutes > 0) || !(httpRate > 0)) usage()
  if (process.getuid?.() !== 0) { console.error('soak: needs root (namespaces, eBPF)'); return 2 }
  const seconds = Math.round(minutes * 60)
  const outDir = args.out ?? join(repoRoot(), 'bench', 'results')

  rmSync(CFG.policies as string, { recursive: true, force: true })
  mkdirSync(CFG.policies as string, { recursive: true })
  cpSync(join(repoRoot(), 'demo', 'policies'), CFG.policies as string, { recursive: true })
  writeFileSync(join(CFG.policies as string, 'soak-auditing-dns.yaml'), AUDITING_DNS)
  writeFileSync(join(CFG.policies as string, 'soak-churn.yaml'), churnPolicy(0))
  const churnSpec = { prefix: CHURN_PREFIX, hosts: churnHosts() }
  await labDown(churnSpec)
  console.error(`soak: ${minutes} min, HTTP ${httpRate} req/s allowed + denied streams; building the lab ...`)
  const s = await DemoSession.open(CFG, (m) => console.error(`soak: ${m}`))
  const timers: NodeJS.Timeout[] = []
  try {
    await labUp(churnSpec)
    const endpointsFile = join(CFG.workDir, 'endpoints.yaml')
    const baseEndpoints = readFileSync(endpointsFile, 'utf8')
    const slots = new Array<string | null>(CHURN_SLOTS).fill(null)
    let churnTick = 0
    let generation = 0
    const writeEndpoints = (): void => {
      let text = baseEndpoints.trimEnd() + '\n'
      slots.forEach((hash, n) => {
        if (hash === null) return
        text += `  - name: churn-${n}-${hash}\n    labels: {app: churn, pod-template-hash: "${hash}"}\n    ipv4: ${CFG.subnet}.${150 + n}\n    interface: wskc${n}\n`
      })
      writeFileSync(endpointsFile + '.tmp', text)
      // a rename, as a CNI writes its state: the watcher never reads half a file
      renameSync(endpointsFile + '.tmp', endpointsFile)
    }

    const billing = `http://${s.endpointAddress('billing-service')}:8080`
    const kubeDns = s.endpointAddress('kube-dns')
    const google = internetAddress(CFG, 'inet-google')
    const streams: Array<[string, Stream]> = [
      ['checkout-service', { kind: 'http', name: 'checkout POST /api/v1/charge (allowed)', rate: httpRate, seconds, origin: billing, method: 'POST', path: '/api/v1/charge', expect: 404, connections: 8 }],
      ['checkout-service', { kind: 'http', name: 'checkout DELETE /api/v1/charge (denied)', rate: httpRate / 4, seconds, origin: billing, method: 'DELETE', path: '/api/v1/charge', expect: 403, connections: 2 }],
      ['auditing-service', { kind: 'http', name: 'auditing GET /api/v1/invoices/7 (allowed)', rate: httpRate / 4, seconds, origin: billing, method: 'GET', path: '/api/v1/invoices/7', expect: 404, connections: 2 }],
      ['prometheus', { kind: 'http', name: 'prometheus GET /healthz (allowed)', rate: httpRate / 10, seconds, origin: billing, method: 'GET', path: '/healthz', expect: 200, connections: 1 }],
      ['data-exporter', { kind: 'dns', name: 'exporter DNS api.github.com (allowed)', rate: 50, seconds, server: kubeDns, query: 'api.github.com', expect: 'answer' }],
      ['auditing-service', { kind: 'dns', name: 'auditing DNS api.github.com (refused)', rate: 20, seconds, server: kubeDns, query: 'api.github.com', expect: 'EREFUSED' }],
      ['data-exporter', { kind: 'https', name: 'exporter HTTPS api.github.com (toFQDNs)', rate: 10, seconds, server: kubeDns, host: 'api.github.com', ca: s.githubCa, expect: 404 }],
      ['data-exporter', { kind: 'tcp-drop', name: 'exporter TCP www.google.com:443 (dropped)', rate: 5, seconds, ip: google, port: 443, timeoutMs: 1000 }]
    ]

    const samples: Sample[] = []
    const sample = async (): Promise<void> => {
      try {
        const m = await scrape()
        samples.push({
          at: Date.now(),
          rss: m.warden_process_resident_memory_bytes,
          heap: m.warden_process_heap_used_bytes,
          loopP99: m.warden_event_loop_delay_p99_seconds,
          loopMax: m.warden_event_loop_delay_max_seconds,
          version: m.warden_policy_version
        })
      } catch (err) {
        console.error(`soak: metrics: ${(err as Error).message}`)
      }
    }
    await sample()
    const fillStart = await mapFill()
    const started = Date.now()
    const clients = streams.map(async ([from, stream]) => await runClient(s, from, stream))
    let policyEdits = 0
    // written and renamed, as a config tool does: the watcher never reads half a file
    const churnFile = join(CFG.policies as string, 'soak-churn.yaml')
    timers.push(setInterval(() => {
      writeFileSync(churnFile + '.tmp', churnPolicy(++policyEdits))
      renameSync(churnFile + '.tmp', churnFile)
    }, 1000))
    timers.push(setInterval(() => {
      const n = churnTick++ % CHURN_SLOTS
      slots[n] = slots[n] === null ? (++generation).toString(16).padStart(10, '0') : null
      writeEndpoints()
    }, 2000))
    timers.push(setInterval(() => {
      void sample()
      const last = samples[samples.length - 1]
      if (last !== undefined) {
        console.error(`soak: ${Math.round((Date.now() - started) / 1000)} s: policy v${last.version}, rss ${(last.rss / 2 ** 20).toFixed(1)} MiB, heap ${(last.heap / 2 ** 20).toFixed(1)} MiB, loop p99 ${(last.loopP99 * 1000).toFixed(1)} ms`)
      }
    }, 10_000))
    const results = await Promise.all(clients)
    for (const t of timers) clearInterval(t)
    await sample()
    // the proxies' and the kernel's own counters: where a lost answer went
    let counters: Record<string, number> = {}
    try {
      counters = Object.fromEntries(Object.entries(await scrape()).filter(([k, v]) => v !== 0 && /^warden_(dns|http|datapath)_/.test(k)))
    } catch (err) {
      console.error(`soak: metrics: ${(err as Error).message}`)
    }
    const fillEnd = await mapFill()
    const logLines = s.agentLog().split('\n')
    const errors = logLines.filter((l) => l.includes('"level":50') || l.includes('"level":60')).slice(0, 20)
    // what to read when something went wrong: warnings and errors, kernel drops, DNS decisions
    const notable = logLines.filter((l) => /"level":[456]0|flow dropped|"msg":"dns: ip|snapshot in the kernel/.test(l) ||
      (l.includes('"msg":"dns query"') && !l.includes('"verdict":"allowed"'))).slice(-5000)

    const allowedBad = results.filter((r) => !r.name.endsWith('(denied)') && !r.name.endsWith('(refused)') && !r.name.endsWith('(dropped)'))
      .reduce((n, r) => n + r.wrong + r.pending, 0)
    const deniedBad = results.filter((r) => r.name.endsWith('(denied)') || r.name.endsWith('(refused)') || r.name.endsWith('(dropped)'))
      .reduce((n, r) => n + r.wrong, 0)
    const first = samples[0]
    const last = samples[samples.length - 1]
    const report = {
      date: new Date().toISOString(),
      minutes,
      policyEdits,
      endpointChanges: churnTick,
      policyVersions: { start: first?.version, end: last?.version },
      allowedLostOrWrong: allowedBad,
      deniedThatGotThrough: deniedBad,
      rssMiB: { start: first?.rss / 2 ** 20, end: last?.rss / 2 ** 20, max: Math.max(...samples.map((x) => x.rss)) / 2 ** 20 },
      heapMiB: { start: first?.heap / 2 ** 20, end: last?.heap / 2 ** 20, max: Math.max(...samples.map((x) => x.heap)) / 2 ** 20 },
      eventLoopDelayMs: { p99SinceStart: (last?.loopP99 ?? NaN) * 1000, max: (last?.loopMax ?? NaN) * 1000 },
      maps: { start: fillStart, end: fillEnd },
      streams: results,
      counters,
      agentErrors: errors,
      samples
    }
    mkdirSync(outDir, { recursive: true })
    const file = join(outDir, `soak-${report.date.replace(/[:.]/g, '-')}.json`)
    writeFileSync(file, JSON.stringify(report, null, 1) + '\n')
    writeFileSync(file.replace(/\.json$/, '.agent.log'), notable.join('\n') + '\n')
    printTable(report, results)
    console.error(`soak: results in ${file}`)
    return allowedBad === 0 && deniedBad === 0 ? 0 : 1
  } finally {
    for (const t of timers) clearInterval(t)
    await s.close()
    await labDown(churnSpec)
    rmSync(CFG.policies as string, { recursive: true, force: true })
  }
}

function printTable (r: { minutes: number, policyEdits: number, endpointChanges: number, allowedLostOrWrong: number, deniedThatGotThrough: number, rssMiB: Record<string, number>, heapMiB: Record<string, number>, eventLoopDelayMs: Record<string, number>, maps: { start: Record<string, { entries: number, max: number }>, end: Record<string, { entries: number, max: number }> }, agentErrors: string[] }, streams: StreamResult[]): void {
  const f = (n: number): string => Number.isFinite(n) ? n.toFixed(1) : 'n/a'
  console.log(`| stream | sent | as policy says | otherwise | unanswered |\n|---|---:|---:|---:|---:|`)
  for (const s of streams) console.log(`| ${s.name} | ${s.sent} | ${s.right} | ${s.wrong} | ${s.pending} |`)
  console.log('')
  console.log(`- ${r.minutes} min, ${r.policyEdits} policy edits, ${r.endpointChanges} workload changes`)
  console.log(`- allowed requests lost or wrongly answered: **${r.allowedLostOrWrong}**; denied that got through: **${r.deniedThatGotThrough}**`)
  console.log(`- agent RSS ${f(r.rssMiB.start)} -> ${f(r.rssMiB.end)} MiB (max ${f(r.rssMiB.max)}); heap ${f(r.heapMiB.start)} -> ${f(r.heapMiB.end)} MiB (max ${f(r.heapMiB.max)})`)
  console.log(`- event-loop delay p99 ${f(r.eventLoopDelayMs.p99SinceStart)} ms, max ${f(r.eventLoopDelayMs.max)} ms`)
  for (const [name, e] of Object.entries(r.maps.end)) console.log(`- ${name}: ${r.maps.start[name]?.entries ?? '?'} -> ${e.entries} of ${e.max} entries`)
  if (r.agentErrors.length > 0) console.log(`- agent error lines: ${r.agentErrors.length} (first: ${r.agentErrors[0].slice(0, 300)})`)
}

main().then((code) => { process.exitCode = code }, (err: Error) => {
  console.error(`soak: ${err.stack ?? err.message}`)
  process.exitCode = 1
})
