/**
 * HTTP/2 limits and attacks, each driven by a raw-frame client (test/helpers/h2-frames.ts):
 * what the proxy answers on the wire, that the backend is spared, and that the proxy serves
 * the next connection afterwards.
 */
import t from 'tap'
import { ADDR, billingSnapshot, startProxy, type ProxyFixture, type Tap } from '../../helpers/http-proxy.js'
import { h2Client, h2Request, startH2Backend, type H2Backend } from '../../helpers/h2.js'
import { ERR, FLAG, FRAME, frame, headers, hpackInt, literal, RawH2, requestBlock, rstStream, settings, SETTING } from '../../helpers/h2-frames.js'
import type { HttpProxyOptions } from '../../../proxy/src/http/index.js'

const CHARGE = requestBlock('POST', '/api/v1/charge')

/** A backend that never answers (streams stay open until someone resets them). */
async function silentBackend (t: Tap): Promise<H2Backend> {
  return await startH2Backend(t, undefined, () => {})
}


async function proxyWith (t: Tap, be: H2Backend, opts: Partial<HttpProxyOptions>): Promise<ProxyFixture> {
  return await startProxy(t, be.port, await billingSnapshot(), opts)
}

/** The proxy still serves a well-behaved client. */
async function stillServes (t: Tap & { equal: typeof import("tap").default.equal }, px: ProxyFixture): Promise<void> {
  const c = h2Client(t, px.port, ADDR.CHECKOUT)
  t.equal((await h2Request(c, { ':method': 'GET', ':path': '/denied' })).status, 403, 'the proxy serves the next connection')
}

t.test('max concurrent streams: a client that respects it queues, one that exceeds it is cut off', async t => {
  const be = await startH2Backend(t)
  const px = await proxyWith(t, be, { h2MaxConcurrentStreams: 3 })
  const ok = h2Client(t, px.port, ADDR.CHECKOUT)
  await new Promise(resolve => ok.once('remoteSettings', resolve))
  const all = await Promise.all(Array.from({ length: 12 }, async () => await h2Request(ok, { ':method': 'POST', ':path': '/api/v1/charge' }, 'x')))
  t.same(all.map(r => r.status), Array(12).fill(200), 'twelve requests through three streams at a time')

  const silent = await silentBackend(t)
  const px2 = await proxyWith(t, silent, { h2MaxConcurrentStreams: 3 })
  const c = await RawH2.handshake(t, px2.port, ADDR.CHECKOUT)
  const f = await c.waitFor(x => x.type === FRAME.SETTINGS && (x.flags & FLAG.ACK) === 0)
  t.ok(f !== null && f.payload.includes(Buffer.from([0, SETTING.MAX_CONCURRENT_STREAMS, 0, 0, 0, 3])), 'SETTINGS_MAX_CONCURRENT_STREAMS 3 announced')
  await c.waitFor(x => x.type === FRAME.SETTINGS && (x.flags & FLAG.ACK) !== 0)
  for (const id of [1, 3, 5, 7]) c.write(headers(id, CHARGE, false))
  const g = await c.waitFor(x => x.type === FRAME.GOAWAY)
  t.equal(g?.payload.readUInt32BE(4), ERR.PROTOCOL_ERROR, 'a fourth stream past the acknowledged limit is a connection error: GOAWAY PROTOCOL_ERROR')
  t.equal(g?.payload.readUInt32BE(0), 5, 'the last stream processed is the third')
  t.ok(await c.waitClose(), 'closed')
  await stillServes(t, px2)
})

t.test('a header list over the limit resets the stream before any policy or upstream', async t => {
  const be = await startH2Backend(t)
  const px = await proxyWith(t, be, { h2MaxHeaderListSize: 1024 })
  const c = await RawH2.handshake(t, px.port, ADDR.CHECKOUT)
  c.write(headers(1, requestBlock('POST', '/api/v1/charge', [['x-big', 'a'.repeat(2000)]]), true))
  const code = await c.rst(1)
  t.not(code, null, 'RST_STREAM')
  t.equal(be.streams.length, 0, 'nothing reached the backend')
  c.write(headers(3, CHARGE, true))
  t.ok(await c.waitFor(x => x.type === FRAME.HEADERS && x.stream === 3), 'the connection carries the next stream')
})

t.test('an HPACK table size update above the announced size is a COMPRESSION_ERROR', async t => {
  const be = await startH2Backend(t)
  const px = await proxyWith(t, be, { h2HeaderTableSize: 4096, h2IdleTimeoutMs: 500 })
  const c = await RawH2.handshake(t, px.port, ADDR.CHECKOUT)
  c.write(headers(1, Buffer.concat([hpackInt(1 << 20, 5, 0x20), CHARGE]), true))
  t.equal(await c.goaway(), ERR.COMPRESSION_ERROR)
  t.ok(await c.waitClose(), 'closed')
  t.equal(be.streams.length, 0)
  await stillServes(t, px)
})

t.test('rapid reset: streams opened and cancelled get GOAWAY ENHANCE_YOUR_CALM after the limit', async t => {
  const be = await silentBackend(t)
  const px = await proxyWith(t, be, { h2MaxResetsPerSecond: 50 })
  const c = await RawH2.handshake(t, px.port, ADDR.CHECKOUT)
  const burst: Buffer[] = []
  for (let i = 0; i < 1000; i++) { const id = 1 + 2 * i; burst.push(headers(id, CHARGE, false), rstStream(id, ERR.CANCEL)) }
  c.write(Buffer.concat(burst))
  t.equal(await c.goaway(), ERR.ENHANCE_YOUR_CALM)
  t.ok(await c.waitClose(), 'closed')
  t.equal(px.proxy.metrics().h2_goaway_calm, 1)
  t.ok(px.proxy.metrics().h2_allowed <= 100, `bounded work: ${px.proxy.metrics().h2_allowed} of the 1000 streams reached the backend (limit 50 per second)`)
  await stillServes(t, px)
})

t.test('a CONTINUATION flood closes the connection', async t => {
  const be = await startH2Backend(t)
  const px = await proxyWith(t, be, {})
  const c = await RawH2.handshake(t, px.port, ADDR.CHECKOUT)
  const parts: Buffer[] = [headers(1, CHARGE, true, false)]
  for (let i = 0; i < 10000; i++) parts.push(frame(FRAME.CONTINUATION, 0, 1, literal('x-f', 'v')))
  c.write(Buffer.concat(parts))
  const code = await c.goaway()
  t.not(code, null, 'GOAWAY')
  t.ok(await c.waitClose(), 'closed')
  t.equal(be.streams.length, 0)
  await stillServes(t, px)
})

t.test('a SETTINGS flood gets GOAWAY ENHANCE_YOUR_CALM', async t => {
  const be = await startH2Backend(t)
  const px = await proxyWith(t, be, { h2MaxSettingsPerSecond: 20 })
  const c = await RawH2.handshake(t, px.port, ADDR.CHECKOUT)
  const parts: Buffer[] = []
  for (let i = 0; i < 500; i++) parts.push(settings([[SETTING.INITIAL_WINDOW_SIZE, 65535]]))
  c.write(Buffer.concat(parts))
  t.equal(await c.goaway(), ERR.ENHANCE_YOUR_CALM)
  t.ok(await c.waitClose(), 'closed')
  await stillServes(t, px)
})

t.test('a PING flood from a client that does not read its acknowledgements is cut off', async t => {
  const be = await startH2Backend(t)
  const px = await proxyWith(t, be, { h2IdleTimeoutMs: 500 })
  const c = await RawH2.handshake(t, px.port, ADDR.CHECKOUT)
  c.socket.pause() // never read: the proxy's PING ACKs pile up on its side
  const ping = frame(FRAME.PING, 0, 0, Buffer.alloc(8))
  const burst = Buffer.concat(Array.from({ length: 20000 }, () => ping))
  for (let i = 0; i < 10; i++) c.write(burst)
  c.socket.resume()
  t.equal(await c.goaway(10000), ERR.ENHANCE_YOUR_CALM)
  t.ok(await c.waitClose(), 'closed')
  await stillServes(t, px)
})

t.test('a zero-window stall ends at the stream idle timeout, and the upstream stream is reset', async t => {
  const be = await startH2Backend(t, (stream) => {
    stream.respond({ ':status': 200 })
    stream.end(Buffer.alloc(100_000))
  })
  const px = await proxyWith(t, be, { h2StreamIdleTimeoutMs: 300 })
  const c = await RawH2.handshake(t, px.port, ADDR.CHECKOUT, [[SETTING.INITIAL_WINDOW_SIZE, 0]])
  c.write(headers(1, CHARGE, true))
  t.ok(await c.waitFor(x => x.type === FRAME.HEADERS && x.stream === 1), 'the response head went out (no window needed)')
  t.equal(await c.rst(1), ERR.CANCEL, 'RST_STREAM CANCEL once idle')
  t.equal(c.frames.filter(x => x.type === FRAME.DATA).length, 0, 'no DATA past a zero window')
  t.match(px.logs.find(l => l.msg === 'http request'), { protocol: 'HTTP/2', reason: 'stream-idle-timeout' })
})

t.test('idle stream and idle connection timeouts', async t => {
  const be = await silentBackend(t)
  const px = await proxyWith(t, be, { h2StreamIdleTimeoutMs: 200, h2IdleTimeoutMs: 600 })
  const c = await RawH2.handshake(t, px.port, ADDR.CHECKOUT)
  c.write(headers(1, CHARGE, true))
  t.equal(await c.rst(1), ERR.CANCEL, 'a stream the upstream never answers is reset')
  for (let i = 0; i < 50 && be.resets.length === 0; i++) await new Promise(resolve => setTimeout(resolve, 20))
  t.same(be.resets, [ERR.CANCEL], 'and so is the upstream stream')
  t.equal(await c.goaway(), ERR.NO_ERROR, 'an idle connection gets GOAWAY NO_ERROR')
  t.ok(await c.waitClose(), 'and is closed')
})

t.test('malformed frames close the connection with the RFC error code; the proxy lives', async t => {
  const be = await startH2Backend(t)
  // A connection nghttp2 gave up on is closed when it goes quiet (connection.ts, onQuiet).
  const px = await proxyWith(t, be, { h2IdleTimeoutMs: 500 })
  const c1 = await RawH2.handshake(t, px.port, ADDR.CHECKOUT)
  c1.write(frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(5))) // not a multiple of 6
  t.equal(await c1.goaway(), ERR.FRAME_SIZE_ERROR)
  t.ok(await c1.waitClose())
  const c2 = await RawH2.handshake(t, px.port, ADDR.CHECKOUT)
  c2.write(frame(FRAME.DATA, 0, 0, Buffer.from('x'))) // DATA on stream 0
  t.equal(await c2.goaway(), ERR.PROTOCOL_ERROR)
  t.ok(await c2.waitClose())
  const c3 = await RawH2.handshake(t, px.port, ADDR.CHECKOUT)
  c3.write(headers(2, CHARGE, true)) // even stream id from a client
  t.equal(await c3.goaway(), ERR.PROTOCOL_ERROR)
  t.equal(be.streams.length, 0)
  t.match(px.logs.find(l => l.code === 'WARDEN_ERR_HTTP2_SESSION'), { level: 40, src: ADDR.CHECKOUT, msg: 'http2 connection error' }, 'logged with who')
  await stillServes(t, px)
})
