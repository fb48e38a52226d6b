/**
 * The per-request decision path of the HTTP proxy, without sockets: `normalizeTarget`, the
 * connection's policy refresh (a snapshot reference compare when nothing changed) and
 * `ConnectionPolicy.decide` (the shared `decideHttp`) on the seed billing policy compiled by the
 * policy store (rows "decision only" leave normalisation out). The target: policy
 * evaluation under 0.2 us per request.
 * Times are CPU time of this process (the machine is shared).
 *
 * Build, then run from the repository root: `node dist/bench/micro/decide.js` (N=2000000).
 */
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { loadSnapshot, lookupIpcache, MemoryIdentityAllocator } from '../../policy-store/src/index.js'
import { normalizeTarget } from '../../proxy/src/http/normalize.js'
import { ConnectionPolicy, RequestView } from '../../proxy/src/http/policy.js'

const N = Number(process.env.N ?? 2_000_000)

/** CPU time (user + system) since `t0`, in ns: wall-clock means little on a shared, loaded machine. */
function cpuNs (t0: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(t0)
  return (d.user + d.system) * 1000
}

const dir = await mkdtemp(join(tmpdir(), 'warden-decide-bench-'))
await mkdir(join(dir, 'p'))
await copyFile(resolve('demo/policies/billing-policy.yaml'), join(dir, 'p', 'billing-policy.yaml'))
await writeFile(join(dir, 'endpoints.yaml'), `endpoints:
  - {name: billing-service, labels: {app: billing-service}, ipv4: 127.0.0.10, interface: wdb-billing}
  - {name: auditing-service, labels: {app: auditing-service}, ipv4: 127.0.0.3, interface: wdb-auditing}
  - {name: prometheus, labels: {app: prometheus, system: monitoring}, ipv4: 127.0.0.4, interface: wdb-prom}
`)
const { snapshot: snap } = await loadSnapshot({ policies: join(dir, 'p'), endpoints: join(dir, 'endpoints.yaml'), allocator: new MemoryIdentityAllocator(), watch: false })
await rm(dir, { recursive: true, force: true })

function run (label: string, srcIp: string, method: string, target: string, want: boolean, normalize = true): void {
  const pol = new ConnectionPolicy(srcIp, '127.0.0.10', 8080, lookupIpcache(snap, srcIp), lookupIpcache(snap, '127.0.0.10'))
  const view = new RequestView()
  view.headers = ['Host', 'billing:8080', 'User-Agent', 'bench', 'Accept', '*/*']
  view.method = method
  view.host = 'billing:8080'
  let ok = 0
  view.path = target
  const once = (): void => {
    if (normalize) {
      const p = normalizeTarget(target)
      if (p === null) throw new Error('not normalisable')
      view.path = p
    }
    pol.refresh(snap)
    if (pol.decide(view)) ok++
  }
  for (let i = 0; i < 100_000; i++) once()
  ok = 0
  const t0 = process.cpuUsage()
  for (let i = 0; i < N; i++) once()
  const ns = cpuNs(t0) / N
  if ((ok === N) !== want) throw new Error(`${label}: unexpected verdict`)
  console.log(`${label.padEnd(44)} ${ns.toFixed(1).padStart(6)} ns/request`)
}

for (let r = 0; r < 2; r++) {
  run('allowed GET /healthz (literal)', '127.0.0.4', 'GET', '/healthz', true)
  run('allowed GET /api/v1/invoices/42 (prefix)', '127.0.0.3', 'GET', '/api/v1/invoices/42?full=1', true)
  run('denied GET /api/v1/charge (no rule matches)', '127.0.0.4', 'GET', '/api/v1/charge', false)
  run('denied, stranger (no rules for identity)', '127.0.0.99', 'GET', '/healthz', false)
  run('  decision only: allowed GET /healthz', '127.0.0.4', 'GET', '/healthz', true, false)
  run('  decision only: allowed invoices (prefix)', '127.0.0.3', 'GET', '/api/v1/invoices/42?full=1', true, false)
  run('  decision only: denied GET /api/v1/charge', '127.0.0.4', 'GET', '/api/v1/charge', false, false)
}
