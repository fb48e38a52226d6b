// Messages whose heads or ends reach the proxy through the less common parser callbacks: a
// response framed by the connection's close (the parser completes it from finish()), heads of
// more than 32 fields and messages after trailers (fields handed over in batches before
// headers-complete). Each must be relayed whole, and the proxy must live on.
import t from 'tap'
import net from 'node:net'
import { ADDR, RawClient, billingSnapshot, startBackend, startProxy, type Tap } from '../../helpers/http-proxy.js'

async function rawBackend (t: Tap, onConn: (s: net.Socket) => void): Promise<{ port: number, connections: () => number }> {
  const srv = net.createServer(onConn)
  let n = 0
  const conns = new Set<net.Socket>()
  srv.on('connection', s => { n++; conns.add(s); s.on('close', () => conns.delete(s)) })
  await new Promise<void>(resolve => srv.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { for (const s of conns) s.destroy(); await new Promise(resolve => srv.close(resolve)) })
  return { port: (srv.address() as net.AddressInfo).port, connections: () => n }
}

/** Send `request` from `localAddress` and collect every byte until the proxy closes (or `done` says enough). */
async function exchange (port: number, localAddress: string, request: string, done: (raw: string) => boolean = () => false): Promise<string> {
  return await new Promise<string>((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port, localAddress })
    let raw = ''
    const timer = setTimeout(() => { s.destroy(); resolve(raw) }, 3000)
    const finish = (): void => { clearTimeout(timer); s.destroy(); resolve(raw) }
    s.on('data', (d: Buffer) => { raw += d.toString('latin1'); if (done(raw)) finish() })
    s.on('error', finish)
    s.on('close', finish)
    s.write(request)
  })
}

const GET_HEALTHZ = 'GET /healthz HTTP/1.1\r\nHost: billing\r\n\r\n'

for (const [name, response] of [
  ['HTTP/1.0 without a length', 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until close'],
  ['HTTP/1.1 Connection: close without a length', 'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close']
] as const) {
  t.test(`close-delimited response (${name}): relayed whole, again and again; the proxy lives`, async t => {
    const be = await rawBackend(t, s => { s.once('data', () => { s.end(response) }) })
    const px = await startProxy(t, be.port, await billingSnapshot())
    // The parser completes such a response from inside finish(); the upstream connection is
    // freed in that callback. Several rounds: a use-after-free need not crash on the first.
    for (let i = 0; i < 12; i++) {
      const raw = await exchange(px.port, ADDR.MONITORING, GET_HEALTHZ)
      t.equal(raw.slice(raw.indexOf('\r\n\r\n') + 4), 'body until close', `round ${i}: the whole body`)
      t.match(raw, /^HTTP\/1\.[01] 200 OK\r\n/, `round ${i}: status`)
    }
    t.equal(be.connections(), 12, 'a fresh upstream connection each time (none reusable)')
    t.equal(px.proxy.metrics().upstream_open, 0, 'no upstream connection left open')
  })
}

t.test('a request with 33 to 100 header fields is forwarded with all of them', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  for (const n of [33, 64, 99]) {
    let extra = ''
    for (let i = 0; i < n - 1; i++) extra += `X-Field-${i}: v${i}\r\n`
    const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
    c.write(`GET /healthz HTTP/1.1\r\nHost: billing\r\n${extra}\r\n`)
    const r = await c.response()
    t.equal(r?.status, 200, `${n} fields: allowed`)
    const seen = be.requests[be.requests.length - 1]
    t.equal(seen?.url, '/healthz', `${n} fields: target intact`)
    t.equal(seen?.headers[`x-field-${n - 2}`], `v${n - 2}`, `${n} fields: the last field arrived`)
    t.equal(seen?.headers['x-field-0'], 'v0', `${n} fields: the first field arrived`)
  }
})

t.test('pipelined requests after a chunked request with trailers are forwarded', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  const charge = 'POST /api/v1/charge HTTP/1.1\r\nHost: billing\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n'
  const plain = 'POST /api/v1/charge HTTP/1.1\r\nHost: billing\r\nContent-Length: 2\r\n\r\nde'
  c.write(charge + plain + plain)
  for (let i = 0; i < 3; i++) t.equal((await c.response())?.status, 200, `response ${i + 1}`)
  t.strictSame(be.requests.map(r => [r.method, r.url, r.body]), [
    ['POST', '/api/v1/charge', 'abc'], ['POST', '/api/v1/charge', 'de'], ['POST', '/api/v1/charge', 'de']
  ])
  t.equal(be.requests[0].headers['x-checksum'], undefined, 'trailers are not headers')
})

t.test('after a chunked response with trailers, the next client on the pooled connection gets its whole response', async t => {
  let served = 0
  const be = await rawBackend(t, s => {
    s.on('data', () => {
      served++
      if (served === 1) s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\nX-Trailer: t\r\n\r\n')
      else s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nsecond\r\n7\r\n-whole!\r\n0\r\n\r\n')
    })
  })
  const px = await startProxy(t, be.port, await billingSnapshot())
  const ended = (raw: string): boolean => raw.endsWith('\r\n0\r\n\r\n')
  const first = await exchange(px.port, ADDR.MONITORING, GET_HEALTHZ, ended)
  t.match(first, /\r\n5\r\nfirst\r\n0\r\n/, 'first client: its body')
  const second = await exchange(px.port, ADDR.MONITORING, GET_HEALTHZ, ended)
  t.match(second, /^HTTP\/1\.1 200 OK\r\n/)
  t.ok(second.endsWith('\r\n6\r\nsecond\r\n7\r\n-whole!\r\n0\r\n\r\n'), 'second client: its whole body, chunked as announced')
  t.equal(be.connections(), 1, 'both went over the one pooled upstream connection')
})

t.test('a response with more than 32 header fields is relayed whole, and so is the next one', async t => {
  let fields = ''
  for (let i = 0; i < 40; i++) fields += `X-R-${i}: ${i}\r\n`
  const be = await rawBackend(t, s => {
    s.on('data', () => { s.write(`HTTP/1.1 200 OK\r\n${fields}Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n`) })
  })
  const px = await startProxy(t, be.port, await billingSnapshot())
  const ended = (raw: string): boolean => raw.endsWith('\r\n0\r\n\r\n')
  for (let i = 0; i < 2; i++) {
    const raw = await exchange(px.port, ADDR.MONITORING, GET_HEALTHZ, ended)
    t.match(raw, /X-R-39: 39\r\n/, `response ${i + 1}: every field`)
    t.ok(raw.endsWith('\r\n\r\n2\r\nok\r\n0\r\n\r\n'), `response ${i + 1}: chunked body intact`)
  }
})
