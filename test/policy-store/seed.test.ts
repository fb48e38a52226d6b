// The seed's two policies, unchanged, against a node with the seed's workloads: the
// expectations the demo checks, as trace cases.
import t from 'tap'
import { fileURLToPath } from 'node:url'
import { DIR, l7Key, loadSnapshot, openStore, PROTO, RESERVED, LOCAL_IDENTITY_BASE, lookupKernel } from '../../policy-store/src/index.js'
import { trace, verdict } from './helpers.js'

const fixtures = fileURLToPath(new URL('../fixtures/policies/', import.meta.url))
const opts = { policies: fixtures + 'seed', endpoints: fixtures + 'endpoints/seed.yaml' }

t.test('both seed policies load unchanged', async (t) => {
  const { errors, summary } = await loadSnapshot(opts)
  t.strictSame(errors, [])
  t.match(summary, { files: 2, policies: 2, rules: 5, endpoints: 7 })
})

t.test('billing: L7 rules per caller, everyone else dropped in the kernel', async (t) => {
  const { snapshot: s } = await loadSnapshot(opts)
  const billing = s.endpoints.find((e) => e.name === 'billing-service')!
  const id = (n: string): number => s.endpoints.find((e) => e.name === n)!.identity
  for (const caller of ['checkout-service', 'auditing-service', 'prometheus']) {
    t.equal(lookupKernel(s.kernel, billing.id, DIR.INGRESS, id(caller), PROTO.TCP, 8080)?.verdict, 'redirect-http', caller)
  }
  t.equal(lookupKernel(s.kernel, billing.id, DIR.INGRESS, id('other'), PROTO.TCP, 8080), undefined, 'other: no entry = drop')
  t.equal(lookupKernel(s.kernel, billing.id, DIR.INGRESS, RESERVED.WORLD, PROTO.TCP, 8080), undefined, 'world: drop')
  t.equal(lookupKernel(s.kernel, billing.id, DIR.INGRESS, id('checkout-service'), PROTO.TCP, 80), undefined, 'other port: drop')
  const table = s.http.get(l7Key(billing.id, DIR.INGRESS, 8080))
  t.ok(table)
  t.strictSame([...table!.byIdentity.keys()].sort(), [id('checkout-service'), id('auditing-service'), id('prometheus')].sort())
  t.equal(table!.anyIdentity, null)

  const cases: [string, string, string, string][] = [
    ['checkout-service', 'POST', '/api/v1/charge', 'allowed L7'],
    ['checkout-service', 'GET', '/api/v1/charge', 'denied L7'],
    ['checkout-service', 'POST', '/api/v1/charge?x=1', 'denied L7'], // the query string is part of :path
    ['checkout-service', 'POST', '/api/v1/charge/', 'denied L7'],
    ['auditing-service', 'GET', '/api/v1/invoices/42', 'allowed L7'],
    ['auditing-service', 'GET', '/api/v1/invoices/', 'allowed L7'],
    ['auditing-service', 'GET', '/api/v1/invoicesX', 'denied L7'], // anchoring
    ['auditing-service', 'GET', '/x/api/v1/invoices/1', 'denied L7'], // anchoring
    ['auditing-service', 'POST', '/api/v1/invoices/1', 'denied L7'],
    ['auditing-service', 'POST', '/api/v1/charge', 'denied L7'],
    ['prometheus', 'GET', '/healthz', 'allowed L7'],
    ['prometheus', 'GET', '/healthz/x', 'denied L7'],
    ['labels:system=monitoring,app=grafana', 'GET', '/healthz', 'allowed L7'],
    ['labels:system=monitoring@other', 'GET', '/healthz', 'denied L3'], // other namespace
    ['other', 'GET', '/healthz', 'denied L3']
  ]
  const extra = await loadSnapshot({ ...opts, extraLabelSets: [['k8s:app=grafana', 'k8s:io.kubernetes.pod.namespace=default', 'k8s:system=monitoring'], ['k8s:io.kubernetes.pod.namespace=other', 'k8s:system=monitoring']] })
  for (const [from, method, path, want] of cases) {
    t.equal(verdict(extra.snapshot, { from, to: 'billing-service', port: 8080, method, path }), want, `${from} ${method} ${path}`)
  }
  const r = trace(s, { from: 'checkout-service', to: 'billing-service', port: 8080, method: 'POST', path: '/api/v1/charge' })
  t.match(r.reason, { type: 'rule', policy: 'default/billing-l7-policy', rule: 'ingress[0]', line: 12 })
  const denied = trace(s, { from: 'other', to: 'billing-service', port: 8080 })
  t.equal(denied.reason.type, 'default-deny')
})

t.test('egress-fqdn: DNS redirected to kube-dns, 443 opens for learned IPs only', async (t) => {
  const store = await openStore({ ...opts, watch: false })
  t.teardown(() => store.close())
  const s = store.current()
  const exp = s.endpoints.find((e) => e.name === 'data-exporter')!
  const dns = s.endpoints.find((e) => e.name === 'kube-dns')!
  t.equal(lookupKernel(s.kernel, exp.id, DIR.EGRESS, dns.identity, PROTO.UDP, 53)?.verdict, 'redirect-dns')
  t.equal(lookupKernel(s.kernel, exp.id, DIR.EGRESS, dns.identity, PROTO.TCP, 53), undefined, 'rule says UDP only')
  t.equal(lookupKernel(s.kernel, exp.id, DIR.EGRESS, RESERVED.WORLD, PROTO.TCP, 443), undefined, 'nothing learned yet')
  t.ok(s.dns.get(l7Key(exp.id, DIR.EGRESS, 53))?.byIdentity.get(dns.identity)?.rules[0].test('anything.example.'))
  t.equal(verdict(s, { from: 'data-exporter', to: 'kube-system/kube-dns', port: 53, protocol: 'UDP', query: 'api.github.com' }), 'allowed L7')
  t.equal(verdict(s, { from: 'data-exporter', to: '140.82.112.6', port: 443 }), 'denied L3')

  let emitted = 0
  store.onSnapshot(() => { emitted++ })
  const learned = [
    { name: 'api.github.com.', ipv4: ['140.82.112.6', '140.82.112.5'], expiresAt: Date.now() + 60_000 },
    { name: 'evil.example.', ipv4: ['203.0.113.9'], expiresAt: Date.now() + 60_000 }
  ]
  const s2 = store.setLearnedNames(learned)
  t.equal(emitted, 1)
  t.equal(s2.version, s.version + 1)
  const gh = s2.ipcache.find((e) => e.prefix === '140.82.112.6/32')
  t.ok(gh !== undefined && gh.identity >= LOCAL_IDENTITY_BASE, 'fqdn identity from LOCAL_IDENTITY_BASE')
  t.equal(lookupKernel(s2.kernel, exp.id, DIR.EGRESS, gh!.identity, PROTO.TCP, 443)?.verdict, 'allow')
  t.equal(lookupKernel(s2.kernel, exp.id, DIR.EGRESS, gh!.identity, PROTO.TCP, 80), undefined)
  t.equal(s2.ipcache.find((e) => e.prefix === '203.0.113.9/32'), undefined, 'names no selector wants are not tracked')
  t.equal(verdict(s2, { from: 'data-exporter', to: '140.82.112.5', port: 443 }), 'allowed L4')
  t.equal(verdict(s2, { from: 'data-exporter', to: '203.0.113.9', port: 443 }), 'denied L3')
  // The same set again changes nothing; an empty set closes 443 again.
  t.equal(store.setLearnedNames([...learned].reverse()).version, s2.version)
  t.equal(emitted, 1)
  const s3 = store.setLearnedNames([])
  t.equal(lookupKernel(s3.kernel, exp.id, DIR.EGRESS, gh!.identity, PROTO.TCP, 443), undefined)
})
