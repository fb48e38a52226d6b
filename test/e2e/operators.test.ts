// Needs root and the real kernel (namespaces, tc eBPF, bpf_sk_assign); CI runs as root.
// What an operator sees of a running agent through its local API: `warden status` and the lists,
// `warden observe` naming the rule of a kernel drop and of a denied HTTP request, `--follow`
// streaming, and the seed's checks in audit mode (nothing dropped or denied, each would-be denial
// reported with its rule), then audit off (enforced again). Its own lab: names wdo-*, subnet
// 198.19.176.0/24, ports 17600-17602, route table 2700, bpffs /sys/fs/bpf/wdo-operators.
import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { cpSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { DemoSession, DEFAULT_DEMO, repoRoot, teardown, type DemoConfig } from '../../demo/session.js'
import { demoChecks } from '../../demo/demo.js'
import { runCli } from '../helpers/cli.js'

const scratch = mkdtempSync(join(tmpdir(), 'warden-e2e-operators-'))
const policies = join(scratch, 'policies')
cpSync(join(repoRoot(), 'demo', 'policies'), policies, { recursive: true })
const sock = join(scratch, 'api', 'warden.sock')
const api = ['--api-socket', sock]

const cfg: DemoConfig = {
  ...DEFAULT_DEMO,
  workDir: '/run/warden-e2e-operators',
  nsPrefix: 'wdo-',
  ifPrefix: 'wdo-',
  subnet: '198.19.176',
  bpffs: '/sys/fs/bpf/wdo-operators',
  routeTable: 2700,
  proxyPort: 17600,
  dnsProxyPort: 17601,
  metricsPort: 17602,
  policies,
  // two HTTP proxies: the worker thread's decisions reach the agent's event ring too
  agentArgs: [...api, '--http-workers', '2']
}

const children: ChildProcess[] = []
let session: DemoSession | undefined
t.teardown(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM')
  await teardown(cfg)
  rmSync(scratch, { recursive: true, force: true })
})

interface Ev { type: string, verdict: string, reason: string, source: { endpoint?: string }, destination: { endpoint?: string }, rule?: { file: string, line: number, policy: string }, ruleNote?: string, http?: { method: string, path: string } }

async function cli (...argv: string[]): Promise<{ code: number, out: string, err: string }> { return await runCli([...argv, ...api]) }
async function json<T> (...argv: string[]): Promise<T> {
  const r = await cli(...argv, '--json')
  if (r.code !== 0 && argv[0] !== 'status') throw new Error(`warden ${argv.join(' ')}: exit ${r.code}: ${r.err}`)
  return JSON.parse(r.out) as T
}
async function events (...filters: string[]): Promise<Ev[]> {
  const r = await cli('observe', '--json', ...filters)
  return r.out.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Ev)
}
async function curl (s: DemoSession, from: string, argv: string[]): Promise<string> {
  const r = await s.exec(from, ['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--connect-timeout', '2', '--max-time', '4', ...argv])
  return r.code === 28 ? 'timeout' : r.code === 0 ? r.stdout.trim() : `curl exit ${r.code}`
}
async function until<T> (what: () => Promise<T>, ok: (v: T) => boolean, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms
  let got = await what()
  while (!ok(got) && Date.now() < deadline) { await sleep(200); got = await what() }
  return got
}
const invoices = ['http://billing-service:8080/api/v1/invoices/123']
const exporterToBilling = ['http://billing-service:8080/healthz']

t.test('no agent: a clear message and exit 1', async (t) => {
  const r = await cli('status')
  t.equal(r.code, 1)
  t.match(r.err, /no warden agent is running on .*warden\.sock.*WARDEN_ERR_AGENT_NOT_RUNNING/)
})

t.test('an enforcing agent', async (t) => {
  const s = session = await DemoSession.open(cfg)
  t.equal(statSync(sock).mode & 0o777, 0o600, 'the API socket is mode 0600')

  const st = await cli('status')
  t.equal(st.code, 0, 'status: healthy')
  t.match(st.out, /Health:\s+ok/)
  t.match(st.out, /Endpoints:\s+6\/6 attached/)
  t.match(st.out, /Audit mode:\s+off/)
  const sj = await json<{ files: { loaded: string[] }, policy: { kernel: number } }>('status')
  t.equal(sj.files.loaded.length, 2, 'both policy files loaded')
  t.ok(sj.policy.kernel >= 1)

  const eps = await json<Array<{ endpoint: string, state: string, ingress: string }>>('endpoint', 'list')
  t.match(eps.find((e) => e.endpoint === 'default/billing-service'), { state: 'attached', ingress: 'enforcing' }, 'billing is attached and enforced')
  t.match((await cli('endpoint', 'list')).out, /default\/billing-service\s+\d+\s+198\.19\.176\.10\s+wdo-billing\s+attached/)
  const ids = await json<Array<{ labels: string[], endpoints: string[] }>>('identity', 'list')
  t.ok(ids.some((i) => i.labels.includes('k8s:app=billing-service') && i.endpoints.includes('default/billing-service')), 'billing\'s identity is listed with its labels and endpoint')

  const sel = await json<{ kernel: Array<{ direction: string, port: string, verdict: string, rule?: { file: string, line: number, policy: string } }>, l7: Array<{ kind: string, match: string, rule: { file: string, policy: string } }> }>('policy', 'selected', 'default/billing-service')
  const l7Entry = sel.kernel.find((k) => k.direction === 'ingress' && k.port === '8080' && k.verdict === 'redirect-http')
  t.ok(l7Entry?.rule?.file.endsWith('billing-policy.yaml') === true && l7Entry.rule.line > 0, 'the kernel redirect on 8080 names its file and line')
  t.ok(sel.l7.some((r) => r.kind === 'http' && /POST/.test(r.match) && r.rule.file.endsWith('billing-policy.yaml')), 'the HTTP rules are listed with their rule')

  // A kernel drop and an HTTP denial, then the events that name their reason and rule.
  t.equal(await curl(s, 'data-exporter', exporterToBilling), 'timeout', 'data-exporter -> billing is dropped in the kernel')
  t.equal(await curl(s, 'checkout-service', invoices), '403', 'checkout GET invoices is denied')
  const drop = (await until(async () => await events('--last', '50', '--verdict', 'dropped', '--from', 'default/data-exporter'), (e) => e.length > 0))[0]
  t.ok(drop !== undefined, 'observe --last shows the kernel drop')
  t.equal(drop?.type, 'l3l4')
  t.equal(drop?.reason, 'drop_policy', 'with its reason')
  t.equal(drop?.destination.endpoint, 'default/billing-service')
  t.match(drop?.ruleNote ?? '', /default deny/, 'and why no rule decided')
  const denied = (await until(async () => await events('--last', '50', '--type', 'http', '--verdict', 'denied'), (e) => e.length > 0))[0]
  t.equal(denied?.source.endpoint, 'default/checkout-service', 'observe --last shows the denied request')
  t.equal(denied?.http?.path, '/api/v1/invoices/123')
  t.match(denied?.rule, { file: /billing-policy\.yaml$/, policy: 'default/billing-l7-policy' }, 'with the rule whose HTTP rules did not match')
  // every request is in the stream, whichever of the two HTTP proxies took its connection
  for (let i = 0; i < 6; i++) t.equal(await curl(s, 'checkout-service', [`http://billing-service:8080/api/v1/invoices/w${i}`]), '403')
  const spread = await until(async () => await events('--type', 'http', '--from', 'default/checkout-service'), (e) => e.filter((x) => /\/w\d$/.test(x.http?.path ?? '')).length === 6)
  t.equal(spread.filter((x) => /\/w\d$/.test(x.http?.path ?? '')).length, 6, 'each request of either HTTP proxy is reported')
  t.match(st.out, /HTTP proxy:\s+2\/2 running/)
  t.match((await cli('observe', '--last', '5', '--type', 'http')).out, /checkout-service .* GET billing-service:8080\/api\/v1\/invoices\/w5 -> 403 DENIED reason=ingress-no-rule-match rule=.*billing-policy\.yaml:\d+/)

  // --follow streams: a new request shows up while the command runs.
  const follow = spawn(process.execPath, [join(repoRoot(), 'bin', 'warden.js'), 'observe', '--follow', '--json', '--type', 'http', '--from', 'checkout-service', ...api], { stdio: ['ignore', 'pipe', 'pipe'] })
  children.push(follow)
  let streamed = ''
  follow.stdout?.on('data', (d: Buffer) => { streamed += d.toString() })
  await until(async () => (await json<{ events: { followers: number } }>('status')).events.followers, (n) => n > 0)
  t.equal(await curl(s, 'checkout-service', ['-X', 'POST', 'http://billing-service:8080/api/v1/charge']), '404')
  const line = await until(async () => streamed, (x) => /"verdict":"allowed"/.test(x))
  t.match(line, /"path":"\/api\/v1\/charge"/, 'observe --follow streams the new request')
  follow.kill('SIGTERM')

  // fqdn list: api.github.com learned for data-exporter through the DNS proxy
  const gh = await s.exec('data-exporter', ['curl', '-s', '-o', '/dev/null', '-I', 'https://api.github.com', '--connect-timeout', '5', '--max-time', '8', '--cacert', s.githubCa])
  t.equal(gh.code, 0, 'data-exporter reaches api.github.com')
  const names = await json<Array<{ endpoint: string, name: string, ip: string, zombie: boolean }>>('fqdn', 'list')
  t.ok(names.some((n) => n.name === 'api.github.com.' && n.endpoint === 'default/data-exporter' && n.ip === '198.19.176.100' && !n.zombie), 'fqdn list shows the learned name and address')

  const q = (await events('--type', 'dns', '--from', 'default/data-exporter')).find((e) => (e as Ev & { dns?: { name: string } }).dns?.name === 'api.github.com.')
  t.match(q, { verdict: 'allowed', destination: { endpoint: 'kube-system/kube-dns' }, rule: { file: /egress-fqdn-policy\.yaml$/, policy: 'default/egress-to-github-api' } }, 'the DNS decision with its rule')

  // An endpoint whose interface is not there: pending, and status exits 1.
  const epFile = join(cfg.workDir, 'endpoints.yaml')
  const endpoints = readFileSync(epFile, 'utf8')
  writeFileSync(epFile, endpoints + '  - {name: ghost, labels: {app: ghost}, ipv4: 198.19.176.77, interface: wdo-ghost}\n')
  const pending = await until(async () => await cli('status'), (r) => r.code === 1)
  t.equal(pending.code, 1, 'status exits 1 with an endpoint not attached')
  t.match(pending.out, /default\/ghost pending: interface not found/)
  t.match(await json<Array<{ endpoint: string, state: string }>>('endpoint', 'list'), [{}, {}, {}, {}, {}, {}, { endpoint: 'default/ghost', state: 'pending' }])
  writeFileSync(epFile, endpoints)
  t.equal((await until(async () => await cli('status'), (r) => r.code === 0)).code, 0, 'healthy again once it is gone')

  // A rejected file: status reports it with file:line:col and exits 1; fixed, healthy again.
  const broken = join(policies, 'broken.yaml')
  writeFileSync(broken, 'apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: broken}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromPorts: 1\n')
  const bad = await until(async () => await cli('status'), (r) => r.code === 1)
  t.equal(bad.code, 1, 'status exits 1 with a rejected file')
  t.match(bad.out, /broken\.yaml:\d+:\d+: /, 'and prints the rejection as file:line:col')
  rmSync(broken)
  t.equal((await until(async () => await cli('status'), (r) => r.code === 0)).code, 0, 'healthy again once the file is gone')
})

t.test('audit mode for the whole node, then per endpoint, then off', async (t) => {
  const s = session
  if (s === undefined) { t.fail('the lab did not come up'); return }
  await s.stopAgent()
  cfg.agentArgs = [...api, '--http-workers', '2', '--policy-audit-mode']
  await s.startAgent()
  t.match((await cli('status')).out, /Audit mode:\s+on for the whole node/)
  // the seed's checks: every one the policy would deny or drop now goes through
  const checks = demoChecks(cfg, s.githubCa)
  for (const c of checks) {
    const r = await s.exec(c.from, ['curl', ...c.curl])
    t.ok(r.code === 0, `${c.name}: let through (curl exit ${r.code})`)
    if (c.expected.startsWith('403')) t.match(r.stdout, /404$/, `${c.name}: forwarded, not denied`)
  }
  // every audit event the checks make, not just the first of each kind: the workers' decisions
  // reach the main thread in batches, so one can come after another
  const expected = (e: Ev[]): boolean =>
    e.some((x) => x.type === 'l3l4' && x.source.endpoint === 'default/data-exporter' && x.destination.endpoint === 'default/billing-service') &&
    e.some((x) => x.type === 'l3l4' && x.source.endpoint === 'default/data-exporter' && x.destination.endpoint === undefined) &&
    e.some((x) => x.type === 'http' && x.source.endpoint === 'default/checkout-service' && x.http?.path === '/api/v1/invoices/123') &&
    e.some((x) => x.type === 'http' && x.source.endpoint === 'default/auditing-service' && x.http?.method === 'POST')
  const audits = await until(async () => await events('--verdict', 'audit'), expected)
  t.notOk((await events('--verdict', 'dropped', '--from', 'default/data-exporter')).length > 0, 'nothing from data-exporter dropped')
  t.notOk((await events('--verdict', 'denied')).length > 0, 'nothing denied')
  const k = audits.find((e) => e.type === 'l3l4' && e.source.endpoint === 'default/data-exporter' && e.destination.endpoint === 'default/billing-service')
  t.equal(k?.reason, 'drop_policy', 'the would-be kernel drop is reported with its reason')
  const h = audits.filter((e) => e.type === 'http')
  t.ok(h.some((e) => e.source.endpoint === 'default/checkout-service' && e.http?.path === '/api/v1/invoices/123' && e.reason === 'ingress-no-rule-match' && e.rule?.file.endsWith('billing-policy.yaml') === true), 'the would-be HTTP denial (checkout GET) with its rule')
  t.ok(h.some((e) => e.source.endpoint === 'default/auditing-service' && e.http?.method === 'POST'), 'and auditing POST')
  const g = audits.find((e) => e.type === 'l3l4' && e.source.endpoint === 'default/data-exporter' && e.destination.endpoint === undefined)
  t.ok(g !== undefined, 'the would-be drop of data-exporter -> www.google.com is reported')
  // the worker thread reports its counters every second
  const metrics = await until(async () => await (await fetch(`http://127.0.0.1:${cfg.metricsPort}/metrics`)).text(), (m) => /warden_http_audited_total [2-9]/.test(m))
  t.match(metrics, /warden_http_audited_total [2-9]/, 'HTTP audit verdicts counted apart (checkout GET, auditing POST)')
  t.match(metrics, /warden_datapath_audit_policy_total [1-9]/, 'kernel audit verdicts counted apart')
  t.match(metrics, /warden_http_denied_ingress_no_rule_match_total 0/, 'and not as denials')

  // Per endpoint: billing and data-exporter audit (each end's own policy decides its direction);
  // then audit off enforces at once.
  await s.stopAgent()
  cfg.agentArgs = api
  const epFile = join(cfg.workDir, 'endpoints.yaml')
  const endpoints = readFileSync(epFile, 'utf8')
  const auditing = endpoints.replace('interface: wdo-billing', 'interface: wdo-billing\n    audit: true').replace('interface: wdo-exporter', 'interface: wdo-exporter\n    audit: true')
  t.not(auditing, endpoints)
  writeFileSync(epFile, auditing)
  await s.startAgent()
  t.match((await cli('status')).out, /Audit mode:\s+on for default\/billing-service, default\/data-exporter/)
  t.equal(await curl(s, 'checkout-service', invoices), '404', 'billing audits: checkout GET is forwarded')
  t.equal(await curl(s, 'data-exporter', exporterToBilling), '200', 'both ends audit: data-exporter reaches billing')
  writeFileSync(epFile, endpoints)
  t.equal(await until(async () => await curl(s, 'checkout-service', invoices), (r) => r === '403'), '403', 'audit off: the next request is denied')
  t.equal(await curl(s, 'data-exporter', exporterToBilling), 'timeout', 'audit off: a new connection is dropped')
  await s.stopAgent()
})
