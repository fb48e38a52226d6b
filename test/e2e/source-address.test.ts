// Needs root and the real kernel (namespaces, tc eBPF, bpf_sk_assign, IP_TRANSPARENT); CI runs as root.
// The HTTP and DNS proxies keep the client's source address upstream: the backend (a real
// nginx) and kube-dns (dnsmasq) log the client pod, not the node; policy is still enforced; and
// the replies, addressed to the client pod, reach the proxy's socket and never the pod itself.
import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { poll } from '../helpers/poll.js'
import { DemoSession, DEFAULT_DEMO, teardown, type DemoConfig } from '../../demo/session.js'

const cfg: DemoConfig = {
  ...DEFAULT_DEMO,
  workDir: '/run/warden-e2e-wdc-src',
  nsPrefix: 'wdc-s-',
  ifPrefix: 'wdcs-',
  subnet: '198.19.129',
  bpffs: '/sys/fs/bpf/wdc-src',
  routeTable: 2400,
  proxyPort: 17300,
  dnsProxyPort: 17301,
  metricsPort: 17302
}

t.teardown(async () => { await teardown(cfg) })

/** nginx's access log lines of billing-service (`$remote_addr - ...`). */
function billingLog (): string[] {
  try {
    return readFileSync(join(cfg.workDir, 'billing', 'access.log'), 'utf8').split('\n').filter((l) => l !== '')
  } catch { return [] }
}

/** TCP resets a namespace's kernel sent (Tcp OutRsts in /proc/net/snmp). */
async function outRsts (s: DemoSession, name: string): Promise<number> {
  const r = await s.exec(name, ['cat', '/proc/net/snmp'])
  const tcp = r.stdout.split('\n').filter((l) => l.startsWith('Tcp:'))
  const keys = (tcp[0] ?? '').split(/\s+/)
  const vals = (tcp[1] ?? '').split(/\s+/)
  return Number(vals[keys.indexOf('OutRsts')])
}

async function request (s: DemoSession, from: string, method: string, path: string, n = 1): Promise<string> {
  const url = `http://billing-service:8080${path}`
  const urls = Array.from({ length: n }, () => ['-o', '/dev/null', url]).flat()
  const r = await s.exec(from, ['curl', '-s', '-w', '%{http_code} ', '-X', method,
    '--connect-timeout', '2', '--max-time', '4', ...urls])
  return r.code === 28 ? 'timeout' : r.stdout.trim()
}

t.test('proxied connections keep the client address', async (t) => {
  const s = await DemoSession.open(cfg)
  const checkout = s.endpointAddress('checkout-service')
  const prometheus = s.endpointAddress('prometheus')
  const rstsBefore = await outRsts(s, 'checkout-service')

  const before = billingLog().length
  // three requests on one keep-alive connection, then a second connection
  t.equal(await request(s, 'checkout-service', 'POST', '/api/v1/charge', 3), '404 404 404', 'checkout may POST a charge (nginx answers 404)')
  t.equal(await request(s, 'checkout-service', 'POST', '/api/v1/charge'), '404', 'and again on a new connection')
  // nginx writes each access line after its response has gone: wait for the lines, not read once.
  const lines = (await poll(billingLog, (ls) => ls.length >= before + 4)).slice(before)
  t.equal(lines.length, 4, 'billing-service got the four requests')
  t.ok(lines.every((l) => l.startsWith(checkout + ' ')), `billing-service saw them from checkout-service (${checkout}): ${lines.join(' | ')}`)

  const seen = billingLog().length
  t.equal(await request(s, 'auditing-service', 'POST', '/api/v1/charge'), '403', 'auditing may not POST a charge: 403 from the proxy')
  t.equal(billingLog().length, seen, 'the denied request never reached billing-service')

  t.equal(await request(s, 'prometheus', 'GET', '/healthz'), '200', 'prometheus (system: monitoring) may GET /healthz')
  const last = (await poll(billingLog, (ls) => ls.length > seen)).at(-1) ?? ''
  t.ok(last.startsWith(prometheus + ' '), `billing-service saw prometheus (${prometheus}): ${last}`)

  // A reply of the proxy's upstream delivered to the client pod would find no socket there,
  // and the pod's kernel would answer it with a reset.
  t.equal(await outRsts(s, 'checkout-service'), rstsBefore, 'checkout-service got none of the upstream replies addressed to it')

  // DNS: the query forwarded by the DNS proxy reaches kube-dns (dnsmasq, --log-queries) from the client
  const exporter = s.endpointAddress('data-exporter')
  const r = await s.exec('data-exporter', [process.execPath, '-e', `const r=new (require('dns').Resolver)();r.setServers(['${s.kubeDns}']);` +
    "r.resolve4('api.github.com',(e,a)=>console.log(e?e.code:a.join(',')))"])
  t.match(r.stdout.trim(), /^198\.19\.129\.\d+$/, 'data-exporter resolves api.github.com through the DNS proxy')
  // (the lab's readiness probe asks kube-dns from its own namespace: the last query is ours)
  const queries = readFileSync(join(cfg.workDir, 'dnsmasq', 'queries.log'), 'utf8').split('\n').filter((l) => l.includes('query[A] api.github.com'))
  t.ok(queries.at(-1)?.endsWith(`from ${exporter}`), `kube-dns saw the query from data-exporter (${exporter}): ${queries.at(-1) ?? 'none'}`)

  const named = new RegExp(`"src":"default/checkout-service".*"path":"/api/v1/charge"|"path":"/api/v1/charge".*"src":"default/checkout-service"`)
  t.match(await poll(() => s.agentLog(), (log) => named.test(log)), named, 'the access log names checkout-service')
})
