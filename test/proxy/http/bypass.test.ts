// Bypass regressions (after Envoy's /foo/../bar and friends): what the policy judges is what the
// backend receives.
import t from 'tap'
import { ADDR, RawClient, billingSnapshot, get, post, startBackend, startProxy, type Peer, type RuleSpec, type Tap } from '../../helpers/http-proxy.js'

async function setup (t: Tap, overrides: Partial<Record<Peer, RuleSpec[]>> = {}) {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot(overrides))
  return { be, px }
}

const denied: Array<[string, string, string]> = [
  ['dot-dot out of invoices', ADDR.AUDITING, get('/api/v1/invoices/../charge')],
  ['encoded dot-dot', ADDR.AUDITING, get('/api/v1/invoices/%2e%2e/charge')],
  ['mixed-case encoded dot-dot', ADDR.AUDITING, get('/api/v1/invoices/%2E./charge')],
  ['query string is part of the path', ADDR.MONITORING, get('/healthz?x=1')],
  ['prefix is not a match (full match)', ADDR.MONITORING, get('/healthz/extra')],
  ['method is case-sensitive and exact', ADDR.MONITORING, 'HEAD /healthz HTTP/1.1\r\nHost: b\r\n\r\n']
]
for (const [name, addr, req] of denied) {
  t.test(`denied: ${name}`, async t => {
    const { be, px } = await setup(t)
    const c = await RawClient.connect(t, px.port, addr)
    c.write(req)
    t.equal((await c.response())?.status, 403)
    t.equal(be.received(), '')
  })
}

const refused: Array<[string, string, string]> = [
  ['encoded slash', ADDR.AUDITING, get('/api/v1/invoices/..%2fcharge')],
  ['encoded backslash', ADDR.AUDITING, get('/api/v1/invoices/..%5Ccharge')],
  ['raw backslash', ADDR.AUDITING, get('/api/v1/invoices/..\\charge')],
  ['bad escape', ADDR.AUDITING, get('/api/v1/invoices/%zz')],
  ['non-ASCII byte', ADDR.AUDITING, get('/api/v1/invoices/\u00e9')]
]
for (const [name, addr, req] of refused) {
  t.test(`refused: ${name}`, async t => {
    const { be, px } = await setup(t)
    const c = await RawClient.connect(t, px.port, addr)
    c.write(Buffer.from(req, 'latin1'))
    t.equal((await c.response())?.status, 400)
    t.equal(be.received(), '')
  })
}

t.test('the backend receives the normalised path', async t => {
  const { be, px } = await setup(t)
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write(post('/api/v1/invoices/../charge', 'a') + post('//api//v1/./charge', 'b'))
  t.equal((await c.response())?.status, 200)
  t.equal((await c.response())?.status, 200)
  t.strictSame(be.requests.map(r => r.url), ['/api/v1/charge', '/api/v1/charge'])
  t.notMatch(be.received(), /\.\.|\/\//, 'no dot segments or double slashes on the wire')
})

t.test('double encoding is decoded once, never twice', async t => {
  const { be, px } = await setup(t)
  const c = await RawClient.connect(t, px.port, ADDR.AUDITING)
  c.write(get('/api/v1/invoices/%252e%252e/charge'))
  t.equal((await c.response())?.status, 200, 'an invoices path with a literal %2e in it')
  t.equal(be.requests[0].url, '/api/v1/invoices/%252e%252e/charge')
})

t.test('absolute-form to the same host becomes origin-form', async t => {
  const { be, px } = await setup(t)
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write('GET http://billing:8080/healthz HTTP/1.1\r\nHost: billing:8080\r\n\r\n')
  t.equal((await c.response())?.status, 200)
  t.equal(be.requests[0].url, '/healthz')
})

t.test('host rule matches the Host header verbatim, port included', async t => {
  const { be, px } = await setup(t, { monitoring: [{ method: 'GET', path: '/healthz', host: 'billing' }] })
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write(get('/healthz', 'billing:8080'))
  t.equal((await c.response())?.status, 403, 'billing:8080 is not billing')
  c.write(get('/healthz', 'billing'))
  t.equal((await c.response())?.status, 200)
  t.equal(be.requests.length, 1)
})

t.test('header rules: name case-insensitive, value exact', async t => {
  const { be, px } = await setup(t, { auditing: [{ method: 'GET', path: '/api/v1/invoices/.*', headers: [{ name: 'x-audit', value: 'yes' }] }] })
  const c = await RawClient.connect(t, px.port, ADDR.AUDITING)
  c.write(get('/api/v1/invoices/1', 'b', 'X-AUDIT: yes\r\n'))
  t.equal((await c.response())?.status, 200)
  c.write(get('/api/v1/invoices/1', 'b', 'X-Audit: Yes\r\n'))
  t.equal((await c.response())?.status, 403)
  c.write(get('/api/v1/invoices/1', 'b'))
  t.equal((await c.response())?.status, 403)
  t.equal(be.requests.length, 1)
})

t.test('CONNECT and Upgrade are denied unless a rule allows the method', async t => {
  const { be, px } = await setup(t)
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write('CONNECT billing:443 HTTP/1.1\r\nHost: billing:443\r\n\r\n')
  t.equal((await c.response())?.status, 403)
  t.ok(await c.waitClose())
  const d = await RawClient.connect(t, px.port, ADDR.AUDITING)
  d.write('GET /ws HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n')
  t.equal((await d.response())?.status, 403)
  t.equal(be.received(), '')
})

// An h2c upgrade (RFC 7540 §3.2) turns the connection into HTTP/2 that this proxy only relays:
// one allowed GET would open a pipe on which any method and path reach the backend unjudged.
const h2cUpgrades: Array<[string, string]> = [
  ['h2c', 'h2c'],
  ['h2c among other offers', 'websocket, H2C'],
  ['HTTP/2.0', 'HTTP/2.0']
]
for (const [name, offer] of h2cUpgrades) {
  t.test(`an upgrade to HTTP (${name}) is refused and never reaches the backend`, async t => {
    const { be, px } = await setup(t)
    const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
    c.write(`GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: ${offer}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n`)
    const r = await c.response()
    t.equal(r?.status, 400)
    t.ok(await c.waitClose())
    t.equal(be.received(), '')
    t.match(px.logs.find(l => l.msg === 'http request'), { verdict: 'rejected', reason: 'upgrade-to-http' })
  })
}

t.test('an allowed WebSocket upgrade still reaches the backend', async t => {
  const { be, px } = await setup(t, { monitoring: [{ method: 'GET', path: '/ws' }] })
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write('GET /ws HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n')
  await c.response(1000)
  t.match(be.received(), /^GET \/ws HTTP\/1.1\r\n[^]*Upgrade: websocket\r\n/)
})
