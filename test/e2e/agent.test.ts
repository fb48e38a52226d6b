// Needs root and the real kernel (namespaces, tc eBPF, bpf_sk_assign); CI runs as root.
// `warden run` as an operator sees it: policy edits reach the kernel, a bad edit keeps the last
// good policy, and a stopped agent keeps L3/L4 enforcement while the L7 port fails closed.
import t from 'tap'
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { DemoSession, DEFAULT_DEMO, repoRoot, teardown, type DemoConfig } from '../../demo/session.js'

const policies = mkdtempSync(join(tmpdir(), 'warden-e2e-agent-'))
cpSync(join(repoRoot(), 'demo', 'policies'), policies, { recursive: true })
const billingFile = join(policies, 'billing-policy.yaml')
const billing = readFileSync(billingFile, 'utf8')

const cfg: DemoConfig = {
  ...DEFAULT_DEMO,
  workDir: '/run/warden-e2e-agent',
  nsPrefix: 'wda-',
  ifPrefix: 'wda-',
  subnet: '198.19.30',
  bpffs: '/sys/fs/bpf/wdt-agent',
  routeTable: 2320,
  proxyPort: 17020,
  dnsProxyPort: 17120,
  metricsPort: 17220,
  policies
}

t.teardown(async () => {
  await teardown(cfg)
  rmSync(policies, { recursive: true, force: true })
})

async function charge (s: DemoSession, from = 'checkout-service'): Promise<string> {
  const r = await s.exec(from, ['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '-X', 'POST',
    'http://billing-service:8080/api/v1/charge', '--connect-timeout', '2', '--max-time', '4'])
  return r.code === 28 ? 'timeout' : r.code === 0 ? r.stdout.trim() : `curl exit ${r.code}`
}

async function until (what: () => Promise<string>, want: string, ms = 10_000): Promise<string> {
  const deadline = Date.now() + ms
  let got = await what()
  while (got !== want && Date.now() < deadline) { await sleep(200); got = await what() }
  return got
}

t.test('policy edits, a bad edit, and a stopped agent', async (t) => {
  const s = await DemoSession.open(cfg)
  t.equal(await charge(s), '404', 'checkout may POST /api/v1/charge')

  // Rule 1 (checkout) removed: checkout is no longer allowed on 8080 at all -> kernel drop.
  const withoutCheckout = billing.replace(/ {2}# Rule 1:[\s\S]*?(?= {2}# Rule 2:)/, '')
  t.not(withoutCheckout, billing, 'the edit removes rule 1')
  writeFileSync(billingFile, withoutCheckout)
  t.equal(await until(async () => await charge(s), 'timeout'), 'timeout', 'after the edit, checkout is dropped in the kernel')

  writeFileSync(billingFile, billing)
  t.equal(await until(async () => await charge(s), '404'), '404', 'restoring the file restores the access')

  // A broken edit: reported with its location, and the last good version stays in force.
  // Access lines name the file too (their rule): look at one line written since the edit.
  const from = s.agentLog().length
  writeFileSync(billingFile, billing.replace('path: "/api/v1/charge"', 'path: "/api/(v1"'))
  const isReport = (l: string): boolean => /billing-policy\.yaml:\d+:\d+|"file":"[^"]*billing-policy\.yaml"/.test(l) && /api\/\(v1/.test(l)
  const reported = await until(async () => s.agentLog().slice(from).split('\n').some(isReport) ? 'reported' : 'not yet', 'reported')
  t.equal(reported, 'reported', 'the bad edit is logged with file and line')
  t.equal(await charge(s), '404', 'the last good policy stays in force')
  writeFileSync(billingFile, billing)

  // Agent stopped: the program and maps stay. L3/L4 keeps working (prometheus -> kube-dns is
  // plain allowed traffic), the L7 port has no proxy and fails closed.
  await s.stopAgent()
  const dns = await s.exec('prometheus', [process.execPath, '-e', `const r=new (require('dns').Resolver)();` +
    `r.setServers(['${s.kubeDns}']);r.resolve4('api.github.com',(e,a)=>console.log(e?e.code:a.join(',')))`])
  t.match(dns.stdout.trim(), /^198\.19\.30\.\d+$/, 'with the agent stopped, allowed L3/L4 traffic still flows')
  t.equal(await charge(s), 'timeout', 'with the agent stopped, the L7 port fails closed (no bypass)')

  await s.startAgent()
  t.equal(await until(async () => await charge(s), '404'), '404', 'the restarted agent serves the L7 port again')

  // auditing relabelled as checkout: the HTTP proxy must decide with the address's new identity,
  // not one it remembered (auditing's old identity, which no rule allows to POST a charge).
  t.equal(await charge(s, 'auditing-service'), '403', 'auditing may not POST a charge')
  const endpointsFile = join(cfg.workDir, 'endpoints.yaml')
  const endpoints = readFileSync(endpointsFile, 'utf8')
  const relabelled = endpoints.replace('labels: {app: auditing-service}', 'labels: {app: checkout-service}')
  t.not(relabelled, endpoints, 'the edit relabels auditing')
  writeFileSync(endpointsFile, relabelled)
  t.equal(await until(async () => await charge(s, 'auditing-service'), '404'), '404', 'its next request is decided with its new identity (allowed)')
  writeFileSync(endpointsFile, endpoints)
  t.equal(await until(async () => await charge(s, 'auditing-service'), '403'), '403', 'and with its own labels back, denied again')
})
