// CONNECT (a tunnel when a rule allows the method, 403 otherwise) and `Expect: 100-continue`
// (the 100 is the upstream's; a denied request gets its 403 at once and its body never moves).
import t from 'tap'
import net from 'node:net'
import { ADDR, RawClient, billingSnapshot, sleep, startBackend, startProxy, type Tap } from '../../helpers/http-proxy.js'

/** A raw backend; `received` is everything it was sent, all connections. */
async function rawBackend (t: Tap, onConn: (s: net.Socket, received: () => string) => void): Promise<{ port: number, received: () => string }> {
  let all = ''
  const conns = new Set<net.Socket>()
  const srv = net.createServer(s => {
    conns.add(s)
    s.on('close', () => conns.delete(s))
    s.on('data', (d: Buffer) => { all += d.toString('latin1') })
    onConn(s, () => all)
  })
  await new Promise<void>(resolve => srv.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { for (const s of conns) s.destroy(); await new Promise(resolve => srv.close(resolve)) })
  return { port: (srv.address() as net.AddressInfo).port, received: () => all }
}

async function until (cond: () => boolean, ms = 2000): Promise<void> {
  for (let waited = 0; waited < ms && !cond(); waited += 20) await sleep(20)
}

t.test('CONNECT allowed by a rule (method CONNECT) becomes a two-way tunnel', async t => {
  const be = await rawBackend(t, s => {
    let tunnel = false
    s.on('data', (d: Buffer) => {
      if (!tunnel) {
        tunnel = true
        s.write('HTTP/1.1 200 Connection Established\r\n\r\n')
        const early = d.toString('latin1').split('\r\n\r\n')[1]
        if (early !== '') s.write('echo:' + early)
        return
      }
      s.write('echo:' + d.toString('latin1'))
    })
  })
  const px = await startProxy(t, be.port, await billingSnapshot({ monitoring: [{ method: 'CONNECT' }] }))
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  // Bytes right behind the CONNECT head are tunnel payload: held until the upstream said 2xx.
  c.write('CONNECT billing:443 HTTP/1.1\r\nHost: billing:443\r\n\r\nearly')
  const r = await c.response()
  t.equal(r?.status, 200)
  await until(() => c.rest() === 'echo:early')
  t.equal(c.rest(), 'echo:early', 'payload sent with the CONNECT head reached the upstream after its 200')
  c.write('GET /admin HTTP/1.1\r\nHost: billing\r\n\r\n')
  await until(() => c.rest().includes('/admin'))
  t.equal(c.rest(), 'echo:earlyecho:GET /admin HTTP/1.1\r\nHost: billing\r\n\r\n', 'HTTP inside the tunnel is opaque payload, both ways')
  t.match(be.received(), /^CONNECT billing:443 HTTP\/1.1\r\nHost: billing:443\r\n\r\nearlyGET \/admin/)
  t.match(px.logs.find(l => l.msg === 'http request'), { level: 30, method: 'CONNECT', verdict: 'allowed', status: 200, rule: { index: 2 } })
  t.equal(px.proxy.metrics().allowed, 1, 'the tunnelled bytes are not requests')
})

t.test('a rule that does not name the method allows other requests but never a CONNECT tunnel', async t => {
  // A host- or header-only rule matches any method. A CONNECT it allowed would become a pipe whose
  // later requests no rule judges (the required host or header could be left out): 403.
  const be = await rawBackend(t, s => {
    s.on('data', () => { s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok') })
  })
  const px = await startProxy(t, be.port, await billingSnapshot({ monitoring: [{ host: 'billing(:443)?' }] }))
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write('GET /anything HTTP/1.1\r\nHost: billing\r\n\r\n')
  t.equal((await c.response())?.status, 200, 'the host-only rule allows a GET')
  const d = await RawClient.connect(t, px.port, ADDR.MONITORING)
  d.write('CONNECT billing:443 HTTP/1.1\r\nHost: billing:443\r\n\r\n')
  t.equal((await d.response())?.status, 403, 'but not a CONNECT')
  t.notMatch(be.received(), /CONNECT/, 'the CONNECT never reached the backend')
})

t.test('a tunnel carries megabytes both ways intact, with a slow reader on each side, and passes each half-close on', async t => {
  // The proxy reads into one shared buffer (proxy/src/http/reads.ts) and must copy what it
  // relays: a write that waits for a slow reader would otherwise send bytes of a later read.
  const SIZE = 8 * 1024 * 1024
  const pattern = (seed: number): Buffer => { const b = Buffer.allocUnsafe(SIZE); for (let i = 0; i < SIZE; i++) b[i] = (i * 31 + seed + (i >> 12)) & 0xff; return b }
  const up = pattern(7)
  const down = pattern(91)
  const upstreamGot: Buffer[] = []
  let upstreamSawEnd = false
  const be = await rawBackend(t, s => {
    let tunnel = false
    s.on('data', (d: Buffer) => {
      if (!tunnel) {
        tunnel = true
        s.pause() // a slow reader: the client -> upstream direction backs up
        s.write('HTTP/1.1 200 Connection Established\r\n\r\n')
        s.write(down, () => { s.end() })
        setTimeout(() => { s.resume() }, 300)
        return
      }
      upstreamGot.push(d)
    })
    s.on('end', () => { upstreamSawEnd = true })
  })
  const px = await startProxy(t, be.port, await billingSnapshot({ monitoring: [{ method: 'CONNECT' }] }))
  const c = net.connect({ host: '127.0.0.1', port: px.port, localAddress: ADDR.MONITORING, allowHalfOpen: true })
  t.teardown(() => { c.destroy() })
  await new Promise<void>((resolve, reject) => { c.once('connect', resolve); c.once('error', reject) })
  const got: Buffer[] = []
  c.pause() // a slow reader here too: the upstream -> client direction backs up
  c.on('data', (d: Buffer) => { got.push(d) })
  c.write('CONNECT billing:443 HTTP/1.1\r\nHost: billing:443\r\n\r\n')
  await sleep(100)
  c.end(up)
  await sleep(300)
  c.resume()
  await new Promise<void>(resolve => c.once('end', resolve))
  const all = Buffer.concat(got)
  const head = all.indexOf('\r\n\r\n') + 4
  t.match(all.subarray(0, head).toString('latin1'), /^HTTP\/1.1 200 /)
  t.ok(all.subarray(head).equals(down), `the client got the upstream's ${SIZE} bytes intact`)
  await until(() => upstreamSawEnd, 5000)
  t.ok(Buffer.concat(upstreamGot).equals(up), `the upstream got the client's ${SIZE} bytes intact`)
  t.ok(upstreamSawEnd, "the client's half-close reached the upstream")
})

t.test('CONNECT denied (no rule allows the method): 403, connection closed, nothing forwarded', async t => {
  const be = await rawBackend(t, () => {})
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write('CONNECT billing:443 HTTP/1.1\r\nHost: billing:443\r\n\r\nsecret tunnel bytes')
  const r = await c.response()
  t.equal(r?.status, 403)
  t.equal(r?.body, 'Access denied\r\n')
  t.ok(await c.waitClose(), 'closed: what follows a CONNECT head is not HTTP')
  await sleep(50)
  t.equal(be.received(), '', 'the upstream saw nothing, not even a connection\'s worth of bytes')
  t.match(px.logs.find(l => l.msg === 'http request'), { level: 40, method: 'CONNECT', verdict: 'denied', reason: 'ingress-no-rule-match' })
})

t.test('Expect: 100-continue on an allowed request: the 100 comes from the upstream, then the body flows', async t => {
  const be = await rawBackend(t, (s, received) => {
    let continued = false
    s.on('data', () => {
      const all = received()
      const end = all.indexOf('\r\n\r\n')
      if (end === -1) return
      if (!continued) { continued = true; s.write('HTTP/1.1 100 Continue\r\nX-From: backend\r\n\r\n') }
      if (all.length - end - 4 >= 10) s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
    })
  })
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write('POST /api/v1/charge HTTP/1.1\r\nHost: billing\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n')
  const cont = await c.response()
  t.equal(cont?.status, 100)
  t.equal(cont?.headers['x-from'], 'backend', 'relayed from the upstream, not made up by the proxy')
  t.match(be.received(), /\r\nExpect: 100-continue\r\n(?:[^\r\n]+\r\n)*\r\n$/, 'the head went upstream with its Expect, and no body yet')
  c.write('0123456789')
  const r = await c.response()
  t.equal(r?.status, 200)
  t.equal(r?.body, 'ok')
  t.ok(be.received().endsWith('\r\n\r\n0123456789'), 'the body followed the head')
  t.notOk(c.closed, 'the connection stays usable')
  t.match(px.logs.find(l => l.msg === 'http request'), { status: 200, bytesIn: 10, verdict: 'allowed' })
})

t.test('Expect: 100-continue on a denied request: 403 at once, no 100, the body is never forwarded', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.AUDITING)
  c.write('POST /api/v1/charge HTTP/1.1\r\nHost: billing\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n')
  const r = await c.response()
  t.equal(r?.status, 403, 'the first (and only) response is the 403, not a 100')
  t.equal(r?.headers.connection, 'close')
  c.write('0123456789') // a client that sends the body anyway
  t.ok(await c.waitClose())
  t.equal(c.rest(), '', 'nothing after the 403')
  await sleep(50)
  t.equal(be.received(), '', 'neither the head nor the body reached the backend')
  t.equal(be.connections, 0)
})
