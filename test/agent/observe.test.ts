// The event ring, the observe filters, and how a kernel event finds its rule (no kernel needed:
// the seed billing policy compiled by the policy store).
import t from 'tap'
import { EventRing } from '../../agent/observe/ring.js'
import { matches, parseFilter } from '../../agent/observe/filter.js'
import { fromFlow, type ObservedEvent } from '../../agent/observe/event.js'
import { ADDR, billingSnapshot, identityOf } from '../helpers/http-proxy.js'

function ev (i: number, verdict = 'allowed'): ObservedEvent {
  return {
    time: new Date(i).toISOString(), type: 'l3l4', protocol: 'TCP', verdict, reason: '',
    source: { ip: '10.0.0.1', port: 1000 + i, identity: 300, endpoint: 'default/a', labels: ['k8s:app=a'] },
    destination: { ip: '10.0.0.2', port: 80, identity: 301, endpoint: 'prod/b', labels: ['k8s:app=b'] }
  }
}

t.test('the ring keeps the last N, oldest first, and feeds subscribers', async (t) => {
  const r = new EventRing(3)
  const seen: number[] = []
  const stop = r.subscribe((e) => seen.push(e.source.port))
  for (let i = 0; i < 5; i++) r.push(ev(i))
  t.strictSame(r.last(10).map((e) => e.source.port), [1002, 1003, 1004], 'only the capacity is kept')
  t.strictSame(r.last(2).map((e) => e.source.port), [1003, 1004])
  t.strictSame(r.last(10, (e) => e.source.port !== 1003).map((e) => e.source.port), [1002, 1004])
  t.equal(r.total, 5)
  stop()
  r.push(ev(9))
  t.strictSame(seen, [1000, 1001, 1002, 1003, 1004], 'unsubscribed')
  t.throws(() => new EventRing(0), { code: 'WARDEN_ERR_CONFIG' })
})

t.test('filters', async (t) => {
  const f = (q: string): ReturnType<typeof parseFilter> => parseFilter(new URLSearchParams(q))
  const e = ev(1, 'dropped')
  t.ok(matches(e, f('from=default/a&to=prod/b')))
  t.ok(matches(e, f('from=a&to=prod/')), 'bare name and namespace/')
  t.ok(matches(e, f('from=10.0.0.1&to=301&port=80')), 'address, identity, port')
  t.ok(matches(e, f('to=app=b&verdict=dropped&type=l3l4')), 'label')
  t.notOk(matches(e, f('from=prod/b')))
  t.notOk(matches(e, f('verdict=allowed')))
  t.notOk(matches(e, f('type=http')))
  t.notOk(matches(e, f('port=81')))
  t.throws(() => f('type=tcp'), { code: 'WARDEN_ERR_API_FILTER' })
  t.throws(() => f('port=70000'), { code: 'WARDEN_ERR_API_FILTER' })
  t.throws(() => f('from='), { code: 'WARDEN_ERR_API_FILTER' })
})

t.test('a kernel event names the rule the program found, or why none did', async (t) => {
  const snap = await billingSnapshot()
  const billing = snap.endpoints.find((e) => e.name === 'billing-service')
  if (billing === undefined) throw new Error('no billing')
  const checkout = identityOf(snap, 'checkout-service')
  const base = { time: 0, endpointId: billing.id, dstIdentity: billing.identity, srcIp: ADDR.CHECKOUT, dstIp: billing.ipv4, srcPort: 40000, dstPort: 8080, protocol: 6, direction: 'ingress' as const, ifindex: 1 }
  const redirected = fromFlow({ ...base, srcIdentity: checkout, verdict: 'redirected-http', reason: 'new_redirect_http' }, snap)
  t.match(redirected, { type: 'l3l4', verdict: 'redirected-http', destination: { endpoint: 'default/billing-service' }, rule: { file: /billing-policy\.yaml$/, policy: 'default/billing-l7-policy', section: 'ingress' } })
  t.ok((redirected.rule?.line ?? 0) > 0, 'with its line')
  const stranger = fromFlow({ ...base, srcIdentity: 2, srcIp: ADDR.STRANGER, verdict: 'dropped', reason: 'drop_policy', dstPort: 9999 }, snap)
  t.equal(stranger.rule, undefined)
  t.match(stranger.ruleNote, /default deny/)
  t.strictSame(stranger.source.labels, ['reserved:world'])
})
