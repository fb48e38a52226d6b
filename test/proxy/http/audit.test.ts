// Audit mode in the HTTP proxy (loopback, no kernel): a request policy would deny is forwarded,
// logged and reported as `audit` with the reason, counted apart from denials; turning audit off
// denies the next request on the same connection.
import t from 'tap'
import type { Snapshot } from '../../../policy-store/src/index.js'
import type { L7Decision } from '../../../proxy/src/decision.js'
import { ADDR, RawClient, billingSnapshot, get, startBackend, startProxy } from '../../helpers/http-proxy.js'

function auditing (snap: Snapshot, name: string): Snapshot {
  return { ...snap, version: snap.version + 1, endpoints: snap.endpoints.map((e) => e.name === name ? { ...e, audit: true as const } : e) }
}

t.test('the destination audits: forwarded, reported with the deny reason and the rule checked', async (t) => {
  const be = await startBackend(t)
  const enforcing = await billingSnapshot()
  const decisions: L7Decision[] = []
  const px = await startProxy(t, be.port, auditing(enforcing, 'billing-service'), {}, { onDecision: (d) => decisions.push(d) })
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write(get('/api/v1/invoices/1'))
  t.equal((await c.response())?.body, 'backend saw GET /api/v1/invoices/1', 'forwarded to the backend')
  const line = px.logs.find((l) => l.msg === 'http request')
  t.match(line, { level: 40, verdict: 'audit', reason: 'ingress-no-rule-match', status: 200 }, 'logged at warn as audit, with the reason')
  t.match(px.proxy.metrics(), { audited: 1, allowed: 0, denied_ingress_no_rule_match: 0 }, 'counted as audited, not denied')
  t.equal(decisions.length, 1)
  t.match(decisions[0], { type: 'http', verdict: 'audit', reason: 'ingress-no-rule-match', srcIp: ADDR.CHECKOUT, http: { method: 'GET', path: '/api/v1/invoices/1', status: 200 } })
  t.match(decisions[0].rule, { file: /billing-policy\.yaml$/, policy: 'default/billing-l7-policy' }, 'names the rule whose HTTP rules did not match')

  // audit off: the next request on the same connection is enforced
  px.setSnapshot({ ...enforcing, version: enforcing.version + 2 })
  c.write(get('/api/v1/invoices/2'))
  t.equal((await c.response())?.status, 403, 'audit off: the next request is denied')
  t.equal(decisions[1]?.verdict, 'denied')
  t.strictSame(be.requests.map((r) => r.url), ['/api/v1/invoices/1'], 'the backend saw only the audited request')
})

t.test('the source auditing does not lift the destination\'s ingress policy', async (t) => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, auditing(await billingSnapshot(), 'checkout-service'))
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write(get('/api/v1/invoices/1'))
  t.equal((await c.response())?.status, 403)
  t.equal(be.requests.length, 0)
})

t.test('a decision carries at most 512 characters of the path (the ring stays small)', async (t) => {
  const be = await startBackend(t)
  const decisions: L7Decision[] = []
  const px = await startProxy(t, be.port, await billingSnapshot(), {}, { onDecision: (d) => decisions.push(d) })
  const c = await RawClient.connect(t, px.port, ADDR.AUDITING)
  const long = '/api/v1/invoices/' + 'x'.repeat(4000)
  c.write(get(long))
  t.equal((await c.response())?.status, 200)
  t.equal(decisions[0]?.http?.path.length, 512)
  t.ok(decisions[0]?.http?.path.endsWith('...'))
  t.equal(px.logs.find((l) => l.msg === 'http request')?.path, long, 'the access log has the whole target')
})
