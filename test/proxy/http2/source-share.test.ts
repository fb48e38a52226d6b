// Each client address has a share of the HTTP/2 upstream sessions
// (--h2-max-upstream-sessions-per-source): a client that keeps a slow stream open to every
// destination it may reach fills its own share and gets the 503, while another client still gets
// new sessions; at its share, a client's new session takes the place of its own idle one, never
// another client's. Run once with the node's address upstream and, as root, once with each
// session leaving from its client's address (IP_TRANSPARENT), as the agent does for endpoints.
import t from 'tap'
import type { ClientHttp2Session } from 'node:http2'
import { ADDR, billingSnapshot, startProxy } from '../../helpers/http-proxy.js'
import { h2Client, h2Request, heldGet, startH2Backend, type H2Backend, type HeldStream } from '../../helpers/h2.js'

const root = process.getuid?.() === 0
/** Original destination ports (billing-service's address), one backend each. */
const DST_PORTS = [18201, 18202, 18203, 18204]

/** A stream left open by its backend until released: it keeps its session busy. */
type Held = HeldStream

function open (c: ClientHttp2Session, path: string): Held {
  return heldGet(c, path, { 'x-hold': '1' })
}

for (const kept of [false, true]) {
  const name = kept ? 'with the client\'s address kept' : 'from the node\'s address'
  t.test(`one client at its share gets 503, another still gets sessions (${name})`, { skip: !kept || root ? false : 'needs root' }, async (t) => {
    // Every backend holds the streams that ask for it ('started', then nothing until released)
    // and answers the others at once.
    const held: Array<Array<() => void>> = DST_PORTS.map(() => [])
    const seen = DST_PORTS.map(() => 0)
    const backends: H2Backend[] = []
    for (let i = 0; i < DST_PORTS.length; i++) {
      backends.push(await startH2Backend(t, undefined, (stream, headers) => {
        seen[i]++
        stream.respond({ ':status': 200 })
        if (headers['x-hold'] === undefined) { stream.resume(); stream.end('answered'); return }
        stream.write('started')
        held[i].push(() => { if (!stream.closed) stream.end() })
      }))
    }
    // Sessions each backend was opened (the proxy's upstream sessions to it).
    const sessions = backends.map(() => 0)
    backends.forEach((be, i) => { be.server.on('session', () => { sessions[i]++ }) })
    const px = await startProxy(t, backends[0].port, await billingSnapshot({}, DST_PORTS),
      { h2MaxUpstreamSessions: 4, h2MaxUpstreamSessionsPerSource: 2 },
      { routes: DST_PORTS.map((dstPort, i) => ({ dstPort, backendPort: backends[i].port })), ...(kept ? { upstreamSource: (client: string) => client } : {}) })
    // One client connection per client and destination, as a pod reaching several servers.
    const a = px.routePorts.map((p) => h2Client(t, p, ADDR.MONITORING))
    const b = px.routePorts.map((p) => h2Client(t, p, ADDR.AUDITING))
    const A_PATH = '/healthz'
    const B_PATH = '/api/v1/invoices/7'

    // A fills its share: a busy session to each of two destinations.
    const a0 = open(a[0], A_PATH)
    const a1 = open(a[1], A_PATH)
    t.equal(await a0.first, 'started')
    t.equal(await a1.first, 'started')
    t.equal(px.proxy.metrics().h2_upstream_sessions, 2)

    // A tries to hold every destination of the pool: past its share, 503, and no session opened.
    const a2 = open(a[2], A_PATH)
    const a3 = open(a[3], A_PATH)
    t.equal(await a2.first, 'upstream connect error\r\n', 'A at its share: refused')
    t.equal(await a3.first, 'upstream connect error\r\n', 'and again for the fourth destination')
    // (Had the proxy forwarded them, the backends would hold them: let them end, not hang the test.)
    for (const release of [...held[2].splice(0), ...held[3].splice(0)]) release()
    t.equal(await a2.done, 503)
    t.equal(await a3.done, 503)
    t.match(px.logs.find((l) => l.msg === 'http request' && l.status === 503),
      { protocol: 'HTTP/2', src: /\/prometheus$/, reason: 'upstream-sessions-source-full' }, 'the log line names the client and why')
    t.same([seen[2], seen[3]], [0, 0], 'nothing reached the other backends')
    t.equal(px.proxy.metrics().h2_upstream_sessions_source_full, 2)
    t.equal(px.proxy.metrics().h2_upstream_sessions_full, 0, 'the pool itself is not full')
    t.equal(px.proxy.metrics().h2_upstream_sessions, 2)

    // B, meanwhile, gets new sessions, to the destinations A was refused.
    const b2 = open(b[2], B_PATH)
    const b3 = open(b[3], B_PATH)
    t.equal(await b2.first, 'started', 'B gets a session while A is at its share')
    t.equal(await b3.first, 'started', 'and a second one')
    t.equal(px.proxy.metrics().h2_upstream_sessions, 4)

    // B's stream to the fourth destination ends, then A's to the first: both sessions idle, B's
    // the longer. A's next new destination takes the place of A's own idle session, not B's.
    for (const release of held[3].splice(0)) release()
    t.equal(await b3.done, 200)
    for (const release of held[0].splice(0)) release()
    t.equal(await a0.done, 200)
    const again = open(a[2], A_PATH)
    t.equal(await again.first, 'started', 'A\'s idle session made room for A\'s new one')
    t.equal(px.proxy.metrics().h2_upstream_sessions, 4, 'still within the bound')
    t.equal(px.proxy.metrics().h2_upstream_sessions_source_full, 2, 'no further refusal')
    const bAgain = await h2Request(b[3], { ':method': 'GET', ':path': B_PATH })
    t.equal(bAgain.status, 200)
    t.equal(sessions[3], 1, 'B\'s idle session was kept: B\'s next stream went on it')
    // A is at its share again, both of its sessions busy: the first destination is refused now.
    const aAgain = await h2Request(a[0], { ':method': 'GET', ':path': A_PATH })
    t.equal(aAgain.status, 503, 'A\'s first destination needs a new session of A\'s share: 503')
    for (const list of held) for (const release of list.splice(0)) release()
    t.equal(await b2.done, 200, 'B\'s stream completed')
    t.equal(await a1.done, 200)
    t.equal(await again.done, 200)
    t.equal(px.logs.filter((l) => l.msg === 'http request' && String(l.src).endsWith('/auditing-service') && l.status !== 200).length, 0, 'B never got anything but 200')
  })
}

t.test('a stream on a session that is open is never refused for its client\'s share', async (t) => {
  // The share bounds the sessions a client opens, not its streams: a client at its share still
  // gets every destination it already has a session to.
  const held: Array<() => void> = []
  const be = await startH2Backend(t, undefined, (stream) => {
    stream.respond({ ':status': 200 })
    stream.write('started')
    held.push(() => { if (!stream.closed) stream.end() })
  })
  const px = await startProxy(t, be.port, await billingSnapshot(), { h2MaxUpstreamSessions: 2, h2MaxUpstreamSessionsPerSource: 1 })
  const s1 = open(h2Client(t, px.port, ADDR.MONITORING), '/healthz')
  t.equal(await s1.first, 'started')
  // A second client connection from the same address shares the session (same key).
  const s2 = open(h2Client(t, px.port, ADDR.MONITORING), '/healthz')
  t.equal(await s2.first, 'started', 'a stream on an existing session is never refused for the share')
  t.equal(px.proxy.metrics().h2_upstream_sessions, 1)
  t.equal(px.proxy.metrics().h2_upstream_sessions_source_full, 0)
  for (const release of held.splice(0)) release()
  t.equal(await s1.done, 200)
  t.equal(await s2.done, 200)
})

t.test('the share defaults to an eighth of the pool, and may not exceed it', async (t) => {
  const be = await startH2Backend(t)
  await t.rejects(startProxy(t, be.port, await billingSnapshot(), { h2MaxUpstreamSessions: 8, h2MaxUpstreamSessionsPerSource: 9 }),
    { code: 'WARDEN_ERR_HTTP_OPTIONS' })
  await t.rejects(startProxy(t, be.port, await billingSnapshot(), { h2MaxUpstreamSessionsPerSource: 0 }),
    { code: 'WARDEN_ERR_HTTP_OPTIONS' })
  // 16 sessions in all: a share of 2. A client with two busy sessions is refused a third.
  const held: Array<() => void> = []
  const backends: H2Backend[] = []
  for (let i = 0; i < 3; i++) {
    backends.push(await startH2Backend(t, undefined, (stream, headers) => {
      stream.respond({ ':status': 200 })
      if (headers['x-hold'] === undefined) { stream.resume(); stream.end('answered'); return }
      stream.write('started')
      held.push(() => { if (!stream.closed) stream.end() })
    }))
  }
  const ports = DST_PORTS.slice(0, 3)
  const px = await startProxy(t, backends[0].port, await billingSnapshot({}, ports), { h2MaxUpstreamSessions: 16 },
    { routes: ports.map((dstPort, i) => ({ dstPort, backendPort: backends[i].port })) })
  const s0 = open(h2Client(t, px.routePorts[0], ADDR.MONITORING), '/healthz')
  const s1 = open(h2Client(t, px.routePorts[1], ADDR.MONITORING), '/healthz')
  t.equal(await s0.first, 'started')
  t.equal(await s1.first, 'started')
  const r = await h2Request(h2Client(t, px.routePorts[2], ADDR.MONITORING), { ':method': 'GET', ':path': '/healthz' })
  t.equal(r.status, 503, 'the third is past an eighth of 16')
  for (const release of held.splice(0)) release()
  t.equal(await s0.done, 200)
  t.equal(await s1.done, 200)
})
