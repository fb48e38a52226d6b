// Upstream side: down (503), reset (502), large streamed bodies both ways, chunked and HEAD
// responses, pooled reuse across clients, WebSocket upgrade turning into a raw pipe.
import t from 'tap'
import net from 'node:net'
import { createHash } from 'node:crypto'
import { ADDR, RawClient, billingSnapshot, get, sleep, startBackend, startProxy, unacceptingPort, type ProxyFixture, type Tap } from '../../helpers/http-proxy.js'
import type { Snapshot } from '../../../policy-store/src/types.js'

async function rawBackend (t: Tap, onConn: (s: net.Socket) => void): Promise<number> {
  const srv = net.createServer(onConn)
  await new Promise<void>(resolve => srv.listen(0, '127.0.0.1', resolve))
  const conns = new Set<net.Socket>()
  srv.on('connection', s => { conns.add(s); s.on('close', () => conns.delete(s)) })
  t.teardown(async () => { for (const s of conns) s.destroy(); await new Promise(resolve => srv.close(resolve)) })
  return (srv.address() as net.AddressInfo).port
}

t.test('upstream down: 503 and the error is counted', async t => {
  // A port nobody listens on: bind one, note it, close it.
  const tmp = net.createServer()
  await new Promise<void>(resolve => tmp.listen(0, '127.0.0.1', resolve))
  const port = (tmp.address() as net.AddressInfo).port
  await new Promise(resolve => tmp.close(resolve))
  const px = await startProxy(t, port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write(get('/healthz'))
  const r = await c.response()
  t.equal(r?.status, 503)
  t.equal(px.proxy.metrics().upstream_errors_connect, 1)
  t.match(px.logs.find(l => l.msg === 'http request'), { status: 503, reason: 'upstream-connect', level: 40 })
})

t.test('upstream connect never completes: 503 after upstreamConnectTimeoutMs', async t => {
  const port = await unacceptingPort(t)
  // The precondition, checked: a plain connect to that port does not complete either.
  const probe = net.connect({ host: '127.0.0.1', port })
  let probed = false
  probe.on('connect', () => { probed = true })
  probe.on('error', () => {})
  t.teardown(() => { probe.destroy() })
  const px = await startProxy(t, port, await billingSnapshot(), { upstreamConnectTimeoutMs: 300 })
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write(get('/healthz'))
  const r = await c.response(5000)
  t.equal(r?.status, 503)
  t.equal(r?.body, 'upstream connect error\r\n')
  t.equal(r?.headers.connection, 'close')
  t.ok(await c.waitClose(), 'client connection closed')
  t.notOk(probed, 'the port really does not accept (the 503 came from the timeout, not a refusal)')
  const m = px.proxy.metrics()
  t.equal(m.upstream_errors_connect_timeout, 1)
  t.equal(m.upstream_errors_connect, 0)
  t.equal(m.upstream_open, 0, 'the half-open upstream socket is gone')
  t.match(px.logs.find(l => l.msg === 'http request'), { level: 40, status: 503, reason: 'upstream-connect-timeout' })
})

t.test('upstream resets after reading the request: 502', async t => {
  const port = await rawBackend(t, s => { s.once('data', () => s.resetAndDestroy()) })
  const px = await startProxy(t, port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write(get('/healthz'))
  t.equal((await c.response())?.status, 502)
  t.equal(px.proxy.metrics().upstream_errors_reset, 1)
})

t.test('upstream sends a malformed response: 502, never relayed', async t => {
  const port = await rawBackend(t, s => { s.once('data', () => s.write('HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab')) })
  const px = await startProxy(t, port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write(get('/healthz'))
  t.equal((await c.response())?.status, 502)
})

t.test('bytes past the end of a response are not relayed (response splitting)', async t => {
  const port = await rawBackend(t, s => {
    s.once('data', () => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged'))
  })
  const px = await startProxy(t, port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write(get('/healthz'))
  const r = await c.response()
  t.equal(r?.body, 'ok')
  await sleep(50)
  t.equal(c.rest(), '', 'not one byte past the end of the first response')
  c.write(get('/healthz'))
  const r2 = await c.response(1000)
  t.not(r2?.body, 'forged', 'the forged response is never delivered')
  t.notMatch(c.rest(), /forged/)
})

t.test('stale pooled connection closed by the server: body-less request retried on a fresh one', async t => {
  let n = 0
  const port = await rawBackend(t, s => {
    const me = ++n
    s.on('data', () => {
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n${me}`)
      if (me === 1) setTimeout(() => s.destroy(), 20) // closes while pooled, without saying so
    })
  })
  const px = await startProxy(t, port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write(get('/healthz'))
  t.equal((await c.response())?.body, '1')
  await sleep(100)
  c.write(get('/healthz'))
  const r = await c.response()
  t.equal(r?.status, 200)
  t.equal(r?.body, '2', 'served by a new upstream connection')
})

t.test('large bodies stream both ways intact (content-length and chunked)', async t => {
  const be = await startBackend(t, (req, res) => {
    // echo the SHA-256 of what arrived, then stream 8 MiB back in 64 KiB writes (chunked)
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    let left = 8 * 1024 * 1024
    const block = Buffer.alloc(64 * 1024, 7)
    const write = (): void => {
      while (left > 0) { left -= block.length; if (!res.write(block)) { res.once('drain', write); return } }
      res.end()
    }
    write()
  })
  const px = await startProxy(t, be.port, await billingSnapshot())
  const big = Buffer.alloc(6 * 1024 * 1024)
  for (let i = 0; i < big.length; i++) big[i] = i % 251
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write(`POST /api/v1/charge HTTP/1.1\r\nHost: b\r\nContent-Length: ${big.length}\r\n\r\n`)
  c.write(big)
  // Response is chunked; read raw until the terminal chunk and de-chunk here.
  let raw = Buffer.alloc(0)
  await new Promise<void>(resolve => {
    c.socket.removeAllListeners('data')
    c.socket.on('data', (d: Buffer) => { raw = Buffer.concat([raw, d]); if (raw.subarray(-5).toString() === '0\r\n\r\n') resolve() })
  })
  t.equal(be.requests[0].body.length, big.length, 'request body length at the backend')
  t.equal(createHash('sha256').update(Buffer.from(be.requests[0].body, 'latin1')).digest('hex'), createHash('sha256').update(big).digest('hex'), 'request body intact')
  const headEnd = raw.indexOf('\r\n\r\n')
  t.match(raw.subarray(0, headEnd).toString(), /transfer-encoding: chunked/i)
  let p = headEnd + 4
  let total = 0
  let ok = true
  for (;;) {
    const eol = raw.indexOf('\r\n', p)
    const size = parseInt(raw.subarray(p, eol).toString(), 16)
    if (size === 0) break
    const data = raw.subarray(eol + 2, eol + 2 + size)
    if (data.some(b => b !== 7)) ok = false
    total += size
    p = eol + 2 + size + 2
  }
  t.equal(total, 8 * 1024 * 1024, 'response body length')
  t.ok(ok, 'response bytes intact')

  // chunked request body, re-framed by the proxy
  const c2 = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c2.write('POST /api/v1/charge HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n')
  for (let i = 0; i < 64; i++) c2.write(`4000;ext=1\r\n${'x'.repeat(0x4000)}\r\n`)
  c2.write('0\r\nX-Trailer: t\r\n\r\n')
  await sleep(200)
  for (let i = 0; i < 50 && be.requests.length < 2; i++) await sleep(50)
  t.equal(be.requests[1]?.body.length, 64 * 0x4000, 'chunked request body length')
  t.notMatch(be.received(), /ext=1/, 'chunk extensions are not forwarded')
})

t.test('a large content-length response reaches a slow client intact', async t => {
  // The proxy reads the upstream into one shared buffer (proxy/src/http/reads.ts): bytes it
  // writes to a client that is not reading must be its own copy, or a later read overwrites them.
  const SIZE = 8 * 1024 * 1024
  const body = Buffer.allocUnsafe(SIZE)
  for (let i = 0; i < SIZE; i++) body[i] = (i * 13 + (i >> 10)) & 0xff
  const be = await startBackend(t, (req, res) => {
    const b = req.url === '/healthz' ? body : Buffer.alloc(40_000, 'z')
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(b.length) })
    res.end(b)
  })
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.socket.removeAllListeners('data')
  c.socket.pause()
  const got: Buffer[] = []
  let n = 0
  c.socket.on('data', (d: Buffer) => { got.push(d); n += d.length })
  c.write('GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n')
  await sleep(200) // the proxy's writes to us back up meanwhile...
  // ...while another client's exchanges make the proxy read other bytes.
  const other = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  for (let i = 0; i < 10; i++) {
    other.write('POST /api/v1/charge HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n')
    t.equal((await other.response())?.body.length, 40_000)
  }
  c.socket.resume()
  for (let i = 0; i < 200; i++) {
    const all = Buffer.concat(got)
    const headEnd = all.indexOf('\r\n\r\n')
    if (headEnd !== -1 && n >= headEnd + 4 + SIZE) break
    await sleep(25)
  }
  const all = Buffer.concat(got)
  const headEnd = all.indexOf('\r\n\r\n') + 4
  t.match(all.subarray(0, headEnd).toString(), /^HTTP\/1.1 200 /)
  t.equal(all.length - headEnd, SIZE, 'response body length')
  t.ok(all.subarray(headEnd).equals(body), 'response bytes intact')
})

t.test('HEAD response: no body expected, connection reusable', async t => {
  const be = await startBackend(t, (req, res) => { res.writeHead(200, { 'content-length': 1000 }); res.end(req.method === 'HEAD' ? undefined : 'x'.repeat(1000)) })
  const px = await startProxy(t, be.port, await billingSnapshot({ monitoring: [{ method: 'HEAD|GET', path: '/healthz' }] }))
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write('HEAD /healthz HTTP/1.1\r\nHost: b\r\n\r\n')
  await sleep(100)
  t.match(c.rest(), /^HTTP\/1.1 200 OK\r\n[\s\S]*content-length: 1000\r\n[\s\S]*\r\n\r\n$/i, 'head only')
  c.socket.removeAllListeners('data')
  let more = ''
  c.socket.on('data', (d: Buffer) => { more += d.toString() })
  c.write(get('/healthz'))
  await sleep(100)
  t.match(more, /\r\n\r\nx{1000}$/, 'the next response follows')
})

t.test('one pooled upstream connection serves several clients in turn', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  for (let i = 0; i < 3; i++) {
    const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
    c.write(get('/healthz'))
    t.equal((await c.response())?.status, 200)
    c.socket.destroy()
    await sleep(20)
  }
  t.equal(be.connections, 1)
  t.equal(px.proxy.metrics().upstream_idle, 1)
})

t.test('WebSocket upgrade on an allowed request becomes a raw two-way pipe', async t => {
  const port = await rawBackend(t, s => {
    let upgraded = false
    s.on('data', (d: Buffer) => {
      if (!upgraded) {
        upgraded = true
        s.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nhello')
        return
      }
      s.write('echo:' + d.toString())
    })
  })
  const px = await startProxy(t, port, await billingSnapshot({ monitoring: [{ method: 'GET', path: '/ws' }] }))
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write('GET /ws HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n')
  const r = await c.response()
  t.equal(r?.status, 101)
  for (let i = 0; i < 20 && c.rest() !== 'hello'; i++) await sleep(20)
  t.equal(c.rest(), 'hello')
  c.write('GET / HTTP/1.1 is just payload now')
  for (let i = 0; i < 50 && !c.rest().includes('echo:'); i++) await sleep(20)
  t.equal(c.rest(), 'helloecho:GET / HTTP/1.1 is just payload now')
})

t.test('upstream accepts and never answers: 504 after upstreamResponseTimeoutMs, upstream connection destroyed', async t => {
  let received = ''
  let upstreamClosed = false
  const port = await rawBackend(t, s => {
    s.on('data', (d: Buffer) => { received += d.toString('latin1') }) // reads, never writes
    s.on('close', () => { upstreamClosed = true })
  })
  const px = await startProxy(t, port, await billingSnapshot(), { upstreamResponseTimeoutMs: 300 })
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write(get('/healthz'))
  const r = await c.response(5000)
  t.equal(r?.status, 504)
  t.equal(r?.body, 'upstream request timeout\r\n')
  t.equal(r?.headers.connection, 'close')
  t.ok(await c.waitClose(), 'client connection closed')
  t.match(received, /^GET \/healthz HTTP\/1.1\r\n/, 'the request did reach the upstream')
  for (let i = 0; i < 50 && !upstreamClosed; i++) await sleep(20)
  t.ok(upstreamClosed, 'the upstream connection was closed (it still owed a response)')
  const m = px.proxy.metrics()
  t.equal(m.upstream_errors_response_timeout, 1)
  t.equal(m.upstream_open, 0, 'not kept, not pooled')
  t.match(px.logs.find(l => l.msg === 'http request'), { level: 40, status: 504, reason: 'upstream-response-timeout', path: '/healthz' })
})

t.test('the response timeout starts when the request ends: a slow upload is not cut by it', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot(), { upstreamResponseTimeoutMs: 300 })
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write('POST /api/v1/charge HTTP/1.1\r\nHost: billing\r\nContent-Length: 6\r\n\r\nabc')
  await sleep(700) // longer than the response timeout, shorter than the body timeout
  c.write('def')
  const r = await c.response()
  t.equal(r?.status, 200)
  t.equal(be.requests[0]?.body, 'abcdef')
  t.equal(px.proxy.metrics().upstream_errors_response_timeout, 0)
})

t.test('a 100 Continue does not stop the response clock; 504 may follow it', async t => {
  const port = await rawBackend(t, s => {
    s.once('data', () => s.write('HTTP/1.1 100 Continue\r\n\r\n')) // then silence
  })
  const px = await startProxy(t, port, await billingSnapshot(), { upstreamResponseTimeoutMs: 300 })
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write(get('/healthz'))
  t.equal((await c.response())?.status, 100)
  t.equal((await c.response(5000))?.status, 504)
})

t.test('a slow-reading upstream and pipelined requests behind a large body: every request answered, in order', async t => {
  // The upstream does not read for a while, so the big body fills its socket (backpressure on
  // the client); the two small requests behind it are held while the first exchange runs.
  // The upstream's 'drain' must only lift the upstream pause, never the pipeline one: a client
  // read while a head is held would replace the held remainder (lost or reordered requests).
  const answered: string[] = []
  const port = await rawBackend(t, (s) => {
    s.pause()
    setTimeout(() => { s.resume() }, 300)
    let buf = Buffer.alloc(0)
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d])
      for (;;) {
        const end = buf.indexOf('\r\n\r\n')
        if (end === -1) return
        const head = buf.subarray(0, end).toString('latin1')
        const len = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? 0)
        if (buf.length < end + 4 + len) return
        const tag = /x-tag: *(\w+)/i.exec(head)?.[1] ?? '?'
        buf = buf.subarray(end + 4 + len)
        answered.push(tag)
        s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${tag.length + String(len).length + 1}\r\n\r\n${tag}:${len}`)
      }
    })
  })
  const px = await startProxy(t, port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  const big = Buffer.alloc(8 * 1024 * 1024, 1)
  const small = (tag: string): string => `POST /api/v1/charge HTTP/1.1\r\nHost: b\r\nX-Tag: ${tag}\r\nContent-Length: 0\r\n\r\n`
  c.write(Buffer.concat([Buffer.from(`POST /api/v1/charge HTTP/1.1\r\nHost: b\r\nX-Tag: big\r\nContent-Length: ${big.length}\r\n\r\n`), big,
    Buffer.from(small('two'))]))
  // The third arrives on its own while the second is held and the upstream still drains.
  setTimeout(() => { c.write(small('three')) }, 100)
  const bodies: string[] = []
  for (let i = 0; i < 3; i++) bodies.push((await c.response(10_000))?.body ?? 'none')
  t.same(bodies, [`big:${big.length}`, 'two:0', 'three:0'], 'three answers, in order')
  t.same(answered, ['big', 'two', 'three'], 'the upstream got each request once, in order')
})

// llhttp does not count the white space before a field value (nor empty lines before the status
// line) against maxHeaderBytes, so a head can grow without end and without a parse error; the
// proxy holds a head split across reads until it ends.
t.test('a response head that keeps growing is refused at maxHeaderBytes, not held', async t => {
  let sent = 0
  let upstreamClosed = false
  const port = await rawBackend(t, s => {
    s.on('close', () => { upstreamClosed = true })
    s.once('data', () => {
      s.write('HTTP/1.1 200 OK\r\nX-Pad:')
      const block = ' '.repeat(16 * 1024)
      const more = (): void => {
        if (s.destroyed || sent >= 8 * 1024 * 1024) return
        sent += block.length
        s.write(block, () => setImmediate(more))
      }
      more()
    })
  })
  const px = await startProxy(t, port, await billingSnapshot(), { maxHeaderBytes: 16384 })
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write(get('/healthz'))
  const r = await c.response(5000)
  t.equal(r?.status, 502)
  t.equal(px.proxy.metrics().upstream_errors_bad_response, 1)
  for (let i = 0; i < 50 && !upstreamClosed; i++) await sleep(20)
  t.ok(upstreamClosed, 'the upstream connection was dropped')
  t.ok(sent < 1024 * 1024, `the proxy stopped reading early (${sent} bytes sent)`)
})

t.test('a response head over maxHeaderBytes in one read is refused the same way', async t => {
  const port = await rawBackend(t, s => {
    s.once('data', () => { s.write(`HTTP/1.1 200 OK\r\nX-Pad:${' '.repeat(20000)}a\r\nContent-Length: 2\r\n\r\nok`) })
  })
  const px = await startProxy(t, port, await billingSnapshot(), { maxHeaderBytes: 16384 })
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write(get('/healthz'))
  t.equal((await c.response())?.status, 502)
})

// llhttp skips empty lines before a status line; the head relayed must start where llhttp's did.
const emptyLines: Array<[string, string, string]> = [
  ['before the response', '\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok', 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'],
  ['after a 100 Continue', 'HTTP/1.1 100 Continue\r\n\r\n\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
    'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok']
]
for (const [name, sent, relayed] of emptyLines) {
  t.test(`empty lines ${name} are not relayed as the head`, async t => {
    const port = await rawBackend(t, s => { s.once('data', () => { s.write(sent) }) })
    const px = await startProxy(t, port, await billingSnapshot())
    const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
    c.write(get('/healthz'))
    for (let i = 0; i < 50 && c.rest().length < relayed.length; i++) await sleep(20)
    await sleep(50)
    t.equal(c.rest(), relayed)
  })
}

// llhttp reads `099` as a final response with a body; the proxy took every status below 200 for
// an interim one and waited for another response: one request, two responses to the client.
/**
 * A backend answers the first request with `reply`; the client gets 502 and the proxy counts one
 * bad response. Returns the proxy for further checks.
 */
async function expectBadResponse (t: Tap & { equal: (a: unknown, b: unknown) => void }, reply: string, request = get('/healthz'), snapshot?: Promise<Snapshot>): Promise<ProxyFixture> {
  const port = await rawBackend(t, s => { s.once('data', () => { s.write(reply) }) })
  const px = await startProxy(t, port, await (snapshot ?? billingSnapshot()))
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write(request)
  t.equal((await c.response())?.status, 502)
  t.equal(px.proxy.metrics().upstream_errors_bad_response, 1)
  return px
}

t.test('a status below 100 is a bad response, never relayed', async t => {
  await expectBadResponse(t, 'HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi')
})

// A response that has no body whatever its head says (to HEAD, 204, 304) may still carry
// `Transfer-Encoding: chunked` (RFC 9110 allows it on a HEAD answer: the field the GET answer
// would have). No last chunk may follow it: the client would read those bytes as the start of
// its next response.
t.test('a HEAD answer with Transfer-Encoding: chunked gets no last chunk appended', async t => {
  const port = await rawBackend(t, s => {
    s.on('data', (d: Buffer) => {
      if (d.toString('latin1').startsWith('HEAD ')) s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n')
      else s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
    })
  })
  const px = await startProxy(t, port, await billingSnapshot({ monitoring: [{ method: 'HEAD|GET', path: '/healthz' }] }))
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write('HEAD /healthz HTTP/1.1\r\nHost: b\r\n\r\n')
  for (let i = 0; i < 50 && !c.rest().includes('\r\n\r\n'); i++) await sleep(20)
  await sleep(50)
  t.equal(c.rest(), 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n', 'the head, and nothing after it')
  c.write(get('/healthz'))
  for (let i = 0; i < 50 && !c.rest().endsWith('ok'); i++) await sleep(20)
  t.equal(c.rest(), 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok', 'the next response follows it directly')
})

for (const status of [204, 304]) {
  t.test(`a ${status} with Transfer-Encoding: chunked is relayed as its head alone`, async t => {
    const port = await rawBackend(t, s => { s.once('data', () => { s.write(`HTTP/1.1 ${status} X\r\nTransfer-Encoding: chunked\r\n\r\n`) }) })
    const px = await startProxy(t, port, await billingSnapshot())
    const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
    c.write(get('/healthz'))
    for (let i = 0; i < 50 && !c.rest().includes('\r\n\r\n'); i++) await sleep(20)
    await sleep(50)
    t.equal(c.rest(), `HTTP/1.1 ${status} X\r\nTransfer-Encoding: chunked\r\n\r\n`)
  })
}

// A 101 switches the upstream connection to another protocol. Only an upgrade request may get
// one, and only one llhttp takes for a switch (Upgrade + Connection: upgrade): else the proxy
// would open a pipe for a request the policy judged as plain HTTP, or pool a connection the
// backend no longer speaks HTTP on.
t.test('a 101 to a request that is no upgrade is a bad response, not a pipe', async t => {
  await expectBadResponse(t, 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw')
})

t.test('a 101 without the upgrade fields is a bad response; the connection is not pooled', async t => {
  const px = await expectBadResponse(t, 'HTTP/1.1 101 Switching Protocols\r\n\r\n',
    'GET /ws HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n',
    billingSnapshot({ monitoring: [{ method: 'GET', path: '/ws' }] }))
  await sleep(50)
  t.equal(px.proxy.metrics().upstream_idle, 0, 'not back in the pool')
})
