// HTTP proxy behaviour on loopback (no kernel): the seed billing policy's checks, pipelining,
// keep-alive across a policy edit, both deny modes, access log and counters.
import t from 'tap'
import { ADDR, BILLING_PORT, RawClient, billingSnapshot, identityOf, get, post, startBackend, startProxy } from '../../helpers/http-proxy.js'

t.test('seed billing policy: the six checks', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const cases: Array<[string, string, string, number]> = [
    ['checkout POST /api/v1/charge', ADDR.CHECKOUT, post('/api/v1/charge', '{"amount":1}'), 200],
    ['checkout GET /api/v1/invoices/1', ADDR.CHECKOUT, get('/api/v1/invoices/1'), 403],
    ['auditing GET /api/v1/invoices/42', ADDR.AUDITING, get('/api/v1/invoices/42'), 200],
    ['auditing POST /api/v1/charge', ADDR.AUDITING, post('/api/v1/charge', 'x'), 403],
    ['monitoring GET /healthz', ADDR.MONITORING, get('/healthz'), 200],
    ['stranger GET /healthz', ADDR.STRANGER, get('/healthz'), 403]
  ]
  for (const [name, addr, req, status] of cases) {
    const c = await RawClient.connect(t, px.port, addr)
    c.write(req)
    const r = await c.response()
    t.equal(r?.status, status, name)
    if (status === 403) {
      t.equal(r?.body, 'Access denied\r\n', `${name}: Cilium's body`)
      t.equal(r?.headers['content-type'], 'text/plain')
      t.equal(r?.headers['content-length'], '15')
    }
  }
  t.strictSame(be.requests.map(r => `${r.method} ${r.url}`), ['POST /api/v1/charge', 'GET /api/v1/invoices/42', 'GET /healthz'],
    'the backend saw only the allowed requests')
  t.notMatch(be.received(), /invoices\/1 |charge HTTP\/1.1\r\nHost: billing:8080\r\nContent-Length: 1\r\n/, 'not a byte of the denied ones')
})

t.test('pipelining with a denied request in the middle: order kept, the next one served', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.AUDITING)
  c.write(get('/api/v1/invoices/1') + get('/api/v1/charge') + get('/api/v1/invoices/3'))
  const r1 = await c.response()
  const r2 = await c.response()
  const r3 = await c.response()
  t.equal(r1?.body, 'backend saw GET /api/v1/invoices/1')
  t.equal(r2?.status, 403)
  t.equal(r3?.body, 'backend saw GET /api/v1/invoices/3')
  t.strictSame(be.requests.map(r => r.url), ['/api/v1/invoices/1', '/api/v1/invoices/3'])
  t.notOk(c.closed, 'connection still open')
})

t.test('a pipelined burst leaves the connection open for the next burst (allowed and denied last)', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.AUDITING)
  for (const last of [get('/api/v1/invoices/3'), get('/api/v1/charge')]) {
    c.write(get('/api/v1/invoices/1') + get('/api/v1/invoices/2') + last)
    const statuses = [(await c.response())?.status, (await c.response())?.status, (await c.response())?.status]
    t.strictSame(statuses, [200, 200, last.includes('charge') ? 403 : 200], 'three answers, in order')
  }
  c.write(get('/api/v1/invoices/4'))
  t.equal((await c.response())?.body, 'backend saw GET /api/v1/invoices/4', 'and a request after the bursts is served on the same connection')
  t.notOk(c.closed, 'still open')
  t.equal(px.proxy.metrics().connections_total, 1, 'one client connection throughout')
})

t.test('keep-alive connection picks up a policy edit on the next request', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write(get('/healthz'))
  t.equal((await c.response())?.status, 200)
  px.setSnapshot(await billingSnapshot({ monitoring: [{ method: 'GET', path: '/readyz' }] }))
  c.write(get('/healthz'))
  t.equal((await c.response())?.status, 403, 'old permission gone on the same connection')
  c.write(get('/readyz'))
  t.equal((await c.response())?.status, 200, 'new permission applies')
  t.equal(be.connections, 1, 'one upstream connection reused for both allowed requests')
})

t.test('deny mode reset: TCP RST, nothing forwarded', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot(), { denyResponse: 'reset' })
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write(get('/api/v1/invoices/1'))
  t.equal(await c.response(), null, 'no HTTP response')
  t.ok(c.closed, 'closed')
  t.ok(c.reset, 'by a reset (ECONNRESET)')
  t.equal(be.received(), '')
})

t.test('denied request with a body: 403 then close; body never forwarded', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.AUDITING)
  c.write('POST /api/v1/charge HTTP/1.1\r\nHost: billing\r\nContent-Length: 100000\r\n\r\nsecret')
  const r = await c.response()
  t.equal(r?.status, 403)
  t.equal(r?.headers.connection, 'close')
  t.ok(await c.waitClose(), 'connection closed')
  t.equal(be.received(), '')
})

t.test('denied request keeps an HTTP/1.0 non-keep-alive client semantics (close)', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.STRANGER)
  c.write('GET /healthz HTTP/1.0\r\n\r\n')
  const r = await c.response()
  t.equal(r?.status, 403)
  t.ok(await c.waitClose())
})

t.test('access log: one record per request, denied at warn with the reason, allowed with the rule', async t => {
  const be = await startBackend(t)
  const snap = await billingSnapshot()
  const px = await startProxy(t, be.port, snap)
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write(post('/api/v1/charge', 'abc'))
  await c.response()
  c.write(get('/api/v1/charge'))
  await c.response()
  const recs = px.logs.filter(l => l.msg === 'http request')
  t.equal(recs.length, 2)
  const [ok, no] = recs
  t.match(ok, {
    level: 30, srcIdentity: identityOf(snap, 'checkout-service'), src: 'default/checkout-service', dst: `127.0.0.10:${BILLING_PORT}`,
    dstEndpoint: 'default/billing-service', method: 'POST', path: '/api/v1/charge', verdict: 'allowed', status: 200, bytesIn: 3,
    rule: { file: 'billing-policy.yaml', policy: 'default/billing-l7-policy', section: 'ingress', index: 0 }
  })
  t.ok(Array.isArray(ok.srcLabels) && ok.srcLabels.includes('k8s:app=checkout-service'), 'source labels')
  t.ok(typeof ok.bytesOut === 'number' && ok.bytesOut > 0 && typeof ok.durationMs === 'number')
  t.match(no, { level: 40, verdict: 'denied', reason: 'ingress-no-rule-match', status: 403, method: 'GET', path: '/api/v1/charge' })
  t.equal(no.rule, undefined)
  const m = px.proxy.metrics()
  t.equal(m.requests, 2)
  t.equal(m.allowed, 1)
  t.equal(m.denied_ingress_no_rule_match, 1)
  t.equal(m.connections_active, 1)
})

t.test('no L7 table for the destination port: denied (fail closed)', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot(), {}, { dstPort: BILLING_PORT + 1 })
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write(post('/api/v1/charge', 'x'))
  t.equal((await c.response())?.status, 403)
  t.equal(px.proxy.metrics().denied_no_l7_table, 1)
  t.equal(be.received(), '')
})
