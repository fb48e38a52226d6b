// Needs root (IP_TRANSPARENT on the upstream sockets); CI runs as root.
// HTTP/2 with `upstreamSource`: each upstream session leaves from the client's address, so the
// backend sees the client; a session carries only the streams of clients with that address; a
// source that cannot be bound answers the stream 503 instead of leaving from the proxy's own;
// and the pool of sessions stays within --h2-max-upstream-sessions whatever clients do.
import t from 'tap'
import { ADDR, billingSnapshot, startProxy } from '../../helpers/http-proxy.js'
import { h2Client, h2Request, heldGet, startH2Backend } from '../../helpers/h2.js'

const root = process.getuid?.() === 0

/** A backend that answers each stream with the address and port its session came from. */
async function peerBackend (t: Tap): Promise<Awaited<ReturnType<typeof startH2Backend>>> {
  return await startH2Backend(t, (stream) => {
    const s = stream.session?.socket
    stream.respond({ ':status': 200 })
    stream.end(`${s?.remoteAddress ?? ''}:${s?.remotePort ?? 0}`)
  })
}
type Tap = Parameters<typeof startH2Backend>[0]

t.test('the backend sees each client, and a session carries one client address', { skip: root ? false : 'needs root' }, async (t) => {
  const be = await peerBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot(), {}, { upstreamSource: (client) => client })
  const seen: string[] = []
  for (const from of [ADDR.MONITORING, ADDR.MONITORING, ADDR.AUDITING, ADDR.MONITORING]) {
    const c = h2Client(t, px.port, from)
    const path = from === ADDR.AUDITING ? '/api/v1/invoices/7' : '/healthz'
    const r = await h2Request(c, { ':method': 'GET', ':path': path })
    t.equal(r.status, 200, `a stream from ${from}`)
    seen.push(r.body.toString())
    c.close()
  }
  const [m1, m2, a1, m3] = seen.map((s) => s.split(':'))
  t.same([m1[0], m2[0], a1[0], m3[0]], [ADDR.MONITORING, ADDR.MONITORING, ADDR.AUDITING, ADDR.MONITORING], 'the backend saw each client\'s address')
  t.equal(m2[1], m1[1], 'the second client connection from .4 shared the upstream session of the first')
  t.equal(m3[1], m1[1], 'and so did the fourth')
  t.not(a1[1], m1[1], 'the client from .3 got a session of its own')
  t.equal(px.proxy.metrics().h2_upstream_sessions, 2)
})

t.test('two identities behind one kept address get a session each', { skip: root ? false : 'needs root' }, async (t) => {
  // Should not happen (an address has one identity), but if it does, a session must not carry
  // the streams of an identity the policy did not judge for it.
  const be = await peerBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot(), {}, { upstreamSource: () => '127.0.0.9' })
  const seen: string[] = []
  for (const [from, path] of [[ADDR.MONITORING, '/healthz'], [ADDR.AUDITING, '/api/v1/invoices/7'], [ADDR.MONITORING, '/healthz']]) {
    const r = await h2Request(h2Client(t, px.port, from), { ':method': 'GET', ':path': path })
    t.equal(r.status, 200, `a stream from ${from}`)
    seen.push(r.body.toString())
  }
  const [m1, a1, m2] = seen.map((s) => s.split(':'))
  t.same([m1[0], a1[0], m2[0]], ['127.0.0.9', '127.0.0.9', '127.0.0.9'], 'all from the kept address')
  t.not(a1[1], m1[1], 'the second identity did not get the first one\'s session')
  t.equal(m2[1], m1[1], 'the first identity\'s next client did')
})

t.test('a source address that cannot be bound: 503, not the proxy\'s own address', async (t) => {
  const be = await peerBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot(), {}, { upstreamSource: () => '300.0.0.1' })
  const c = h2Client(t, px.port, ADDR.MONITORING)
  const r = await h2Request(c, { ':method': 'GET', ':path': '/healthz' })
  t.equal(r.status, 503)
  t.equal(r.body.toString(), 'upstream connect error\r\n')
  t.equal(be.streams.length, 0, 'nothing reached the backend')
  t.match(px.logs.find((l) => l.msg === 'http request'), { protocol: 'HTTP/2', status: 503, reason: 'upstream-connect' })
  t.match(px.logs.find((l) => l.code === 'WARDEN_ERR_TRANSPARENT_SOCKET'), { src: ADDR.MONITORING }, 'the bind failure is logged with its code')
  t.equal(px.proxy.metrics().h2_upstream_sessions, 0, 'no session was opened from another address')
  t.equal(px.proxy.metrics().h2_upstream_errors_connect, 1)
})

t.test('upstream sessions stay within --h2-max-upstream-sessions', async (t) => {
  // Streams that stay open until released: sessions busy for as long as the test wants.
  const held: Array<() => void> = []
  const be = await startH2Backend(t, undefined, (stream, headers) => {
    stream.respond({ ':status': 200 })
    if (headers[':path'] === '/api/v1/charge') { stream.resume(); stream.end('charged'); return }
    stream.write('started')
    held.push(() => { if (!stream.closed) stream.end() })
  })
  // Without a kept source the key is destination and identity: one session per client identity here.
  const px = await startProxy(t, be.port, await billingSnapshot(), { h2MaxUpstreamSessions: 2 })
  const open = (from: string, path: string): { first: Promise<string>, done: Promise<number> } => {
    return heldGet(h2Client(t, px.port, from), path)
  }
  const mon = open(ADDR.MONITORING, '/healthz')
  const aud = open(ADDR.AUDITING, '/api/v1/invoices/7')
  t.equal(await mon.first, 'started')
  t.equal(await aud.first, 'started')
  t.equal(px.proxy.metrics().h2_upstream_sessions, 2, 'two identities, two sessions')

  // A third identity while both sessions are busy: refused, no third session.
  const c = h2Client(t, px.port, ADDR.CHECKOUT)
  const r = await h2Request(c, { ':method': 'POST', ':path': '/api/v1/charge' }, 'x')
  t.equal(r.status, 503, 'the pool is full of busy sessions: 503')
  t.match(px.logs.find((l) => l.msg === 'http request' && l.status === 503), { reason: 'upstream-sessions-full' })
  t.equal(px.proxy.metrics().h2_upstream_sessions, 2)
  t.equal(px.proxy.metrics().h2_upstream_sessions_full, 1)

  // Once the monitoring session is idle, the new identity takes its place.
  for (const release of held.splice(0)) release()
  t.equal(await mon.done, 200)
  t.equal(await aud.done, 200)
  const again = await h2Request(c, { ':method': 'POST', ':path': '/api/v1/charge' }, 'x')
  t.equal(again.status, 200, 'an idle session made room for the new key')
  t.ok(px.proxy.metrics().h2_upstream_sessions <= 2, 'still within the bound')
})
