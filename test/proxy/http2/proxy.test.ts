/**
 * The HTTP/2 proxy on loopback (no kernel): streams decided by the same rules as HTTP/1
 * requests, forwarded over h2c with trailers, denied with Cilium's 403 or a stream reset, and
 * HTTP/1 still served on the same port.
 */
import t from 'tap'
import http2 from 'node:http2'
import net from 'node:net'
import { ADDR, billingSnapshot, get, RawClient, startProxy } from '../../helpers/http-proxy.js'
import { h2Client, h2Request, startH2Backend } from '../../helpers/h2.js'
import { startBackend } from '../../helpers/http-proxy.js'

const { NGHTTP2_CANCEL } = http2.constants

t.test('an allowed stream reaches the backend with the normalised path; a denied one gets 403 Access denied', async t => {
  const be = await startH2Backend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = h2Client(t, px.port, ADDR.CHECKOUT)
  const ok = await h2Request(c, { ':method': 'POST', ':path': '/api//v1/./charge', 'x-extra': 'kept' }, 'amount=1')
  t.equal(ok.status, 200)
  t.equal(ok.body.toString(), 'backend saw POST /api/v1/charge')
  t.equal(be.streams.length, 1)
  t.equal(be.streams[0].headers['x-extra'], 'kept')
  t.equal(be.streams[0].body.toString(), 'amount=1')
  const no = await h2Request(c, { ':method': 'GET', ':path': '/api/v1/charge' })
  t.equal(no.status, 403)
  t.equal(no.body.toString(), 'Access denied\r\n')
  t.equal(no.headers['content-type'], 'text/plain')
  t.equal(be.streams.length, 1, 'the denied stream never reached the backend')
  const lines = px.logs.filter(l => l.msg === 'http request')
  t.equal(lines.length, 2, 'one line per stream')
  t.match(lines[0], { protocol: 'HTTP/2', method: 'POST', path: '/api/v1/charge', verdict: 'allowed', status: 200, bytesIn: 8 })
  t.match(lines[1], { protocol: 'HTTP/2', method: 'GET', verdict: 'denied', reason: 'ingress-no-rule-match', status: 403 })
  const m = px.proxy.metrics()
  t.equal(m.h2_allowed, 1)
  t.equal(m.h2_denied, 1)
  t.equal(m.requests, 0, 'no HTTP/1 request counted')
  t.same(be.resets, [], 'a completed exchange resets nothing upstream')
})

t.test('--deny-response reset resets the stream, not the connection', async t => {
  const be = await startH2Backend(t)
  const px = await startProxy(t, be.port, await billingSnapshot(), { denyResponse: 'reset' })
  const c = h2Client(t, px.port, ADDR.CHECKOUT)
  const no = await h2Request(c, { ':method': 'GET', ':path': '/nope' })
  t.equal(no.status, 0, 'no response head')
  t.equal(no.rstCode, NGHTTP2_CANCEL)
  const ok = await h2Request(c, { ':method': 'POST', ':path': '/api/v1/charge' }, 'x')
  t.equal(ok.status, 200, 'the same connection carries the next stream')
  t.equal(be.streams.length, 1)
})

t.test('response trailers (grpc-status) are relayed and logged', async t => {
  const be = await startH2Backend(t, (stream) => {
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true })
    stream.on('wantTrailers', () => { stream.sendTrailers({ 'grpc-status': '7', 'grpc-message': 'nope' }) })
    stream.end(Buffer.from([0, 0, 0, 0, 0]))
  })
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = h2Client(t, px.port, ADDR.CHECKOUT)
  const r = await h2Request(c, { ':method': 'POST', ':path': '/api/v1/charge', 'content-type': 'application/grpc', te: 'trailers' }, Buffer.from([0, 0, 0, 0, 0]))
  t.equal(r.status, 200)
  t.equal(r.trailers?.['grpc-status'], '7')
  t.equal(r.trailers?.['grpc-message'], 'nope')
  t.equal(r.body.length, 5)
  t.match(px.logs.find(l => l.msg === 'http request'), { protocol: 'HTTP/2', grpcStatus: '7', status: 200 })
})

t.test('a client that did not say te: trailers gets the response without them, cleanly ended', async t => {
  const be = await startH2Backend(t, (stream) => {
    stream.respond({ ':status': 200 }, { waitForTrailers: true })
    stream.on('wantTrailers', () => { stream.sendTrailers({ 'x-checksum': 'abc' }) })
    stream.end('body')
  })
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = h2Client(t, px.port, ADDR.CHECKOUT)
  const r = await h2Request(c, { ':method': 'POST', ':path': '/api/v1/charge' }, 'x')
  t.equal(r.status, 200)
  t.equal(r.body.toString(), 'body')
  t.equal(r.trailers, null, 'no trailers')
  t.equal(r.rstCode, 0, 'ended with END_STREAM, not a reset')
  const withTe = await h2Request(c, { ':method': 'POST', ':path': '/api/v1/charge', te: 'trailers' }, 'x')
  t.equal(withTe.trailers?.['x-checksum'], 'abc', 'with te: trailers they are relayed')
})

t.test('a policy edit applies to the next stream on the same connection', async t => {
  const be = await startH2Backend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = h2Client(t, px.port, ADDR.CHECKOUT)
  t.equal((await h2Request(c, { ':method': 'GET', ':path': '/open' })).status, 403)
  px.setSnapshot(await billingSnapshot({ checkout: [{ method: 'GET', path: '/open' }] }))
  t.equal((await h2Request(c, { ':method': 'GET', ':path': '/open' })).status, 200)
})

t.test('HTTP/1.1 and HTTP/2 on the same port', async t => {
  const be1 = await startBackend(t)
  const px = await startProxy(t, be1.port, await billingSnapshot())
  const raw = await RawClient.connect(t, px.port, ADDR.AUDITING)
  raw.write(get('/api/v1/invoices/7'))
  const r = await raw.response()
  t.equal(r?.status, 200)
  // a client whose preface arrives a byte at a time is still HTTP/2
  const { connect } = await import('node:net')
  const s = connect({ host: '127.0.0.1', port: px.port, localAddress: ADDR.AUDITING })
  t.teardown(() => { s.destroy() })
  await new Promise(resolve => s.once('connect', resolve))
  const pre = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')
  for (const b of pre) { s.write(Buffer.from([b])); await new Promise(resolve => setTimeout(resolve, 2)) }
  const got: Buffer[] = []
  s.on('data', (d: Buffer) => got.push(d))
  await new Promise(resolve => setTimeout(resolve, 100))
  const all = Buffer.concat(got)
  t.ok(all.length >= 9 && all[3] === 4, 'the proxy answers with a SETTINGS frame')
})

t.test('an unreachable upstream gives 503; a reset by the upstream resets the client stream', async t => {
  const be = await startH2Backend(t, (stream) => { stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR) })
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = h2Client(t, px.port, ADDR.CHECKOUT)
  const r = await h2Request(c, { ':method': 'POST', ':path': '/api/v1/charge' }, 'x')
  t.equal(r.rstCode, http2.constants.NGHTTP2_INTERNAL_ERROR, 'the upstream\'s code')
  const { unacceptingPort } = await import('../../helpers/http-proxy.js')
  const gone = await new Promise<number>((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => { const p = (srv.address() as net.AddressInfo).port; srv.close(() => resolve(p)) })
  })
  const px2 = await startProxy(t, gone, await billingSnapshot())
  const c2 = h2Client(t, px2.port, ADDR.CHECKOUT)
  const r2 = await h2Request(c2, { ':method': 'POST', ':path': '/api/v1/charge' }, 'x')
  t.equal(r2.status, 503)
  t.equal(r2.body.toString(), 'upstream connect error\r\n')
  const px3 = await startProxy(t, await unacceptingPort(t), await billingSnapshot(), { upstreamConnectTimeoutMs: 200 })
  const c3 = h2Client(t, px3.port, ADDR.CHECKOUT)
  t.equal((await h2Request(c3, { ':method': 'POST', ':path': '/api/v1/charge' }, 'x')).status, 503, 'connect timeout')
})

t.test('the query is part of the path the rules match, and is forwarded', async t => {
  const be = await startH2Backend(t)
  const px = await startProxy(t, be.port, await billingSnapshot({ checkout: [{ method: 'GET', path: '/q\\?a=1' }] }))
  const c = h2Client(t, px.port, ADDR.CHECKOUT)
  t.equal((await h2Request(c, { ':method': 'GET', ':path': '/q?a=1' })).status, 200)
  t.equal((await h2Request(c, { ':method': 'GET', ':path': '/q?a=2' })).status, 403)
  t.equal(be.streams[0].headers[':path'], '/q?a=1')
})

t.test('a client that says GOAWAY gets its streams finished and the proxy carries on', async t => {
  const be = await startH2Backend(t, (stream) => {
    setTimeout(() => { stream.respond({ ':status': 200 }); stream.end('late') }, 100)
  })
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = h2Client(t, px.port, ADDR.CHECKOUT)
  const pending = h2Request(c, { ':method': 'POST', ':path': '/api/v1/charge' }, 'x')
  for (let i = 0; i < 100 && be.streams.length === 0; i++) await new Promise(resolve => setTimeout(resolve, 10))
  c.close() // GOAWAY while the stream waits for its response
  t.equal((await pending).status, 200, 'the stream in flight completes')
  await new Promise(resolve => c.once('close', resolve))
  for (let i = 0; i < 50 && px.proxy.metrics().h2_connections_active > 0; i++) await new Promise(resolve => setTimeout(resolve, 10))
  t.equal(px.proxy.metrics().h2_connections_active, 0, 'the connection is gone')
  const c2 = h2Client(t, px.port, ADDR.CHECKOUT)
  t.equal((await h2Request(c2, { ':method': 'POST', ':path': '/api/v1/charge' }, 'x')).status, 200, 'the next connection is served')
})

t.test('a client that cancels a stream cancels the upstream stream with the same code', async t => {
  const be = await startH2Backend(t, undefined, () => {}) // never answers
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = h2Client(t, px.port, ADDR.CHECKOUT)
  const req = c.request({ ':method': 'POST', ':path': '/api/v1/charge', ':authority': 'billing:8080' })
  req.on('error', () => {})
  req.write('partial')
  for (let i = 0; i < 100 && px.proxy.metrics().h2_allowed === 0; i++) await new Promise(resolve => setTimeout(resolve, 10))
  await new Promise(resolve => setTimeout(resolve, 50))
  req.close(http2.constants.NGHTTP2_CANCEL)
  for (let i = 0; i < 100 && be.resets.length === 0; i++) await new Promise(resolve => setTimeout(resolve, 10))
  t.same(be.resets, [http2.constants.NGHTTP2_CANCEL], 'the backend saw RST_STREAM CANCEL')
  t.match(px.logs.find(l => l.msg === 'http request'), { protocol: 'HTTP/2', verdict: 'allowed', reason: 'client-reset' })
})

t.test('a backend GOAWAY retires its session: the next stream opens a new one', async t => {
  let sessions = 0
  const be = await startH2Backend(t, (stream) => {
    stream.respond({ ':status': 200 })
    stream.end('ok')
    stream.session?.goaway(http2.constants.NGHTTP2_NO_ERROR, stream.id ?? 0)
  })
  be.server.on('session', () => { sessions++ })
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = h2Client(t, px.port, ADDR.CHECKOUT)
  for (let i = 0; i < 3; i++) {
    t.equal((await h2Request(c, { ':method': 'POST', ':path': '/api/v1/charge' }, 'x')).status, 200, `stream ${i + 1}`)
  }
  t.equal(sessions, 3, 'one upstream session per stream, each retired by its GOAWAY')
})

t.test('flow control end to end: a backend that does not read holds the client back, then gets every byte', async t => {
  const got: Buffer[] = []
  let resume: (() => void) | null = null
  const be = await startH2Backend(t, undefined, (stream) => {
    stream.pause()
    resume = () => {
      stream.on('data', (d: Buffer) => got.push(d))
      stream.on('end', () => { stream.respond({ ':status': 200 }); stream.end() })
      stream.resume()
    }
  })
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = h2Client(t, px.port, ADDR.CHECKOUT)
  const body = Buffer.alloc(8 << 20, 0x61)
  const req = c.request({ ':method': 'POST', ':path': '/api/v1/charge', ':authority': 'billing:8080' })
  req.on('error', () => {})
  let finished = false
  req.end(body, () => { finished = true })
  await new Promise(resolve => setTimeout(resolve, 500))
  t.notOk(finished, 'the client cannot finish sending 8 MiB while the backend reads nothing')
  t.ok(px.proxy.metrics().h2_allowed === 1 && resume !== null, 'the stream was forwarded')
  const status = new Promise<number>(resolve => req.on('response', (h) => resolve(Number(h[':status']))))
  ;(resume as unknown as () => void)()
  t.equal(await status, 200)
  t.equal(Buffer.concat(got).length, body.length, 'every byte arrived once the backend read')
})

t.test('a preface cut short and never completed gets the head timeout', async t => {
  const be = await startH2Backend(t)
  const px = await startProxy(t, be.port, await billingSnapshot(), { headersTimeoutMs: 200 })
  const raw = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  raw.write('PRI * HTTP/2.0\r\n')
  const r = await raw.response(3000)
  t.equal(r?.status, 408, 'answered 408 once the head timeout passed')
  t.ok(await raw.waitClose(), 'and closed')
  t.equal(px.proxy.metrics().h2_connections_total, 0, 'never taken as HTTP/2')
})
