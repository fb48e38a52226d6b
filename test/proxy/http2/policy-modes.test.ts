/**
 * HTTP/2 streams get what HTTP/1 requests get from the policy (loopback, no kernel): audit mode
 * forwards a stream policy would deny and reports it as `audit`; a matching rule's
 * headerMatches mismatch actions edit the forwarded headers; every stream's decision reaches the
 * agent's event ring (`warden observe`).
 */
import t from 'tap'
import type { Snapshot } from '../../../policy-store/src/index.js'
import type { L7Decision } from '../../../proxy/src/decision.js'
import { ADDR, billingSnapshot, startProxy } from '../../helpers/http-proxy.js'
import { h2Client, h2Request, startH2Backend } from '../../helpers/h2.js'

function auditing (snap: Snapshot, name: string): Snapshot {
  return { ...snap, version: snap.version + 1, endpoints: snap.endpoints.map((e) => e.name === name ? { ...e, audit: true as const } : e) }
}

t.test('audit: a stream policy would deny is forwarded, logged and reported as audit; audit off denies the next stream', async (t) => {
  const be = await startH2Backend(t)
  const enforcing = await billingSnapshot()
  const decisions: L7Decision[] = []
  const px = await startProxy(t, be.port, auditing(enforcing, 'billing-service'), {}, { onDecision: (d) => decisions.push(d) })
  const c = h2Client(t, px.port, ADDR.CHECKOUT)
  const r = await h2Request(c, { ':method': 'GET', ':path': '/api/v1/invoices/1' })
  t.equal(r.status, 200, 'forwarded')
  t.equal(be.streams.length, 1)
  t.match(px.logs.find((l) => l.msg === 'http request'), { protocol: 'HTTP/2', verdict: 'audit', reason: 'ingress-no-rule-match', status: 200 })
  t.match(px.proxy.metrics(), { audited: 1, h2_denied: 0 })
  t.match(decisions[0], { type: 'http', verdict: 'audit', reason: 'ingress-no-rule-match', srcIp: ADDR.CHECKOUT, http: { method: 'GET', path: '/api/v1/invoices/1', status: 200 } })

  px.setSnapshot({ ...enforcing, version: enforcing.version + 2 })
  const no = await h2Request(c, { ':method': 'GET', ':path': '/api/v1/invoices/2' })
  t.equal(no.status, 403, 'audit off: the next stream on the same connection is denied')
  t.equal(be.streams.length, 1, 'the denied stream never reached the backend')
  t.match(decisions[1], { verdict: 'denied', http: { status: 403 } })
  const ok = await h2Request(c, { ':method': 'POST', ':path': '/api/v1/charge' }, 'x')
  t.equal(ok.status, 200)
  t.match(decisions[2], { verdict: 'allowed', rule: { policy: 'default/billing-l7-policy' } })
})

t.test('headerMatches mismatch actions edit what an HTTP/2 stream forwards', async (t) => {
  const cases: Array<{ mismatch: string, sent: Record<string, string>, want: string | undefined }> = [
    { mismatch: 'ADD', sent: {}, want: 'blue' },
    { mismatch: 'ADD', sent: { 'x-tenant': 'red' }, want: 'red, blue' },
    { mismatch: 'REPLACE', sent: { 'x-tenant': 'red' }, want: 'blue' },
    { mismatch: 'DELETE', sent: { 'x-tenant': 'red' }, want: undefined },
    { mismatch: 'LOG', sent: { 'x-tenant': 'red' }, want: 'red' }
  ]
  for (const k of cases) {
    const be = await startH2Backend(t)
    const px = await startProxy(t, be.port, await billingSnapshot({ auditing: [{ method: 'GET', path: '/api/v1/invoices/.*', headers: [{ name: 'X-Tenant', value: 'blue', mismatch: k.mismatch }] }] }))
    const c = h2Client(t, px.port, ADDR.AUDITING)
    const r = await h2Request(c, { ':method': 'GET', ':path': '/api/v1/invoices/1', ...k.sent })
    t.equal(r.status, 200, `${k.mismatch}: allowed`)
    const seen = be.streams[0]?.headers['x-tenant']
    t.equal(Array.isArray(seen) ? seen.join(', ') : seen, k.want, `${k.mismatch} with ${JSON.stringify(k.sent)}`)
  }
})
