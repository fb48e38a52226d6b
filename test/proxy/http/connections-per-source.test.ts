// One client address may hold only its share of a worker's client connections (HTTP/1 and
// HTTP/2 together): one more from it is reset at accept while other addresses still connect, and
// the share comes back as its connections close. Loopback only; the clients sit on 127.0.78.x,
// addresses no endpoint has (world), so the proxy answers them itself with 403.
import t, { type Test } from 'tap'
import net from 'node:net'
import { RawClient, billingSnapshot, get, startBackend, startProxy, type ProxyFixture } from '../../helpers/http-proxy.js'
import { h2Client, h2Request } from '../../helpers/h2.js'
import { createHttpProxy } from '../../../proxy/src/http/index.js'
import pino from 'pino'

const A = '127.0.78.1'
const B = '127.0.78.2'

/** A connection from `from` that gets an answer (the proxy's 403 for world). */
async function answered (t: Test, px: ProxyFixture, from: string): Promise<RawClient> {
  const c = await RawClient.connect(t, px.port, from)
  c.write(get('/healthz'))
  const r = await c.response()
  t.equal(r?.status, 403, `a connection from ${from} is answered`)
  return c
}

/** A connection from `from` that the proxy resets at accept: no byte of an answer. */
async function refused (t: Test, px: ProxyFixture, from: string): Promise<void> {
  const s = net.connect({ host: '127.0.0.1', port: px.port, localAddress: from })
  t.teardown(() => { s.destroy() })
  s.on('connect', () => s.write(get('/healthz')))
  let got = ''
  // an answer means the connection was taken: close it so the test fails instead of waiting
  s.on('data', (d: Buffer) => { got += d.toString(); s.destroy() })
  const end = await new Promise<string>(resolve => { s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? '')); s.on('close', () => resolve('closed')) })
  t.equal(end, 'ECONNRESET', `a connection from ${from} is reset`)
  t.equal(got, '', 'with no response')
}

/** Until the proxy holds `n` client connections (closes reach it asynchronously). */
async function holding (px: ProxyFixture, n: number): Promise<void> {
  while (px.proxy.metrics().connections_active + px.proxy.metrics().h2_connections_active !== n) await new Promise(resolve => setTimeout(resolve, 10))
}

t.test('a source at its share is reset on one more connection; another source still connects', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot(), { maxConnectionsPerSource: 2 })
  const a1 = await answered(t, px, A)
  const a2 = await answered(t, px, A)
  await refused(t, px, A)
  await answered(t, px, B)
  await refused(t, px, A)
  const m = px.proxy.metrics()
  t.equal(m.connections_refused_source, 2, 'each refusal counted')
  t.equal(m.connections_refused, 0, 'not the global bound')
  const warned = px.logs.filter(l => l.code === 'WARDEN_ERR_HTTP_SOURCE_SHARE')
  t.equal(warned.length, 1, 'one warning for the source however often it tries')
  t.match(warned[0], { level: 40, src: A, srcIdentity: 2, held: 2, limit: 2 }, 'naming the address and its identity (world)')

  a1.socket.destroy()
  a2.socket.end()
  await holding(px, 1)
  await answered(t, px, A)
  await answered(t, px, A)
  await refused(t, px, A)
})

t.test('an h2c connection takes from the same share, and gives it back when it closes', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot(), { maxConnectionsPerSource: 2 })
  const h2 = h2Client(t, px.port, A)
  t.equal((await h2Request(h2, { ':method': 'GET', ':path': '/healthz' })).status, 403, 'the h2c connection is answered')
  t.equal(px.proxy.metrics().h2_connections_active, 1)
  await answered(t, px, A)
  await refused(t, px, A)
  await answered(t, px, B)

  h2.destroy()
  await holding(px, 2)
  await answered(t, px, A)
  await refused(t, px, A)
  t.equal(px.proxy.metrics().connections_refused_source, 2)
})

t.test('the share is a whole number from 1 to maxConnections', async t => {
  const deps = { snapshot: () => { throw new Error('unused') }, lookupIdentity: () => 0, logger: pino({ level: 'silent' }) }
  for (const bad of [0, 1.5, 101]) {
    t.throws(() => createHttpProxy(deps, { denyResponse: '403', maxConnections: 100, maxConnectionsPerSource: bad }), { code: 'WARDEN_ERR_HTTP_OPTIONS' }, `${bad} is refused`)
  }
})
