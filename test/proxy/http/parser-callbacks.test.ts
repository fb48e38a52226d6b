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
