// Needs root (IP_TRANSPARENT on the upstream sockets); CI runs as root.
// With `upstreamSource`, each upstream connection leaves from the client's address: the backend
// sees the client, a pooled connection is reused only for the same client address, and a
// source that cannot be bound fails the request (503) instead of leaving from the proxy's own.
import t from 'tap'
import { ADDR, RawClient, billingSnapshot, get, startBackend, startProxy } from '../../helpers/http-proxy.js'

t.test('the backend sees each client, and pooled connections are per client address', async (t) => {
  const peers: Array<{ addr: string, port: number }> = []
  const b = await startBackend(t, (req, res) => {
    peers.push({ addr: req.socket.remoteAddress ?? '', port: req.socket.remotePort ?? 0 })
    res.end('ok')
  })
  const px = await startProxy(t, b.port, await billingSnapshot(), {}, { upstreamSource: (client) => client })
  for (const from of [ADDR.MONITORING, ADDR.MONITORING, ADDR.AUDITING, ADDR.MONITORING]) {
    const c = await RawClient.connect(t, px.port, from)
    c.write(from === ADDR.AUDITING ? get('/api/v1/invoices/7') : get('/healthz'))
    t.equal((await c.response())?.status, 200, `a request from ${from}`)
    c.socket.end()
  }
  t.same(peers.map((p) => p.addr), [ADDR.MONITORING, ADDR.MONITORING, ADDR.AUDITING, ADDR.MONITORING], 'the backend saw each client\'s address')
  t.equal(peers[1].port, peers[0].port, 'the second client connection from .4 reused the pooled upstream connection')
  t.equal(peers[3].port, peers[0].port, 'and so did the fourth')
  t.equal(b.connections, 2, 'the client from .3 got a connection of its own, never the one from .4')
})

t.test('a source address that cannot be bound: 503, not the proxy\'s own address', async (t) => {
  const b = await startBackend(t)
  const px = await startProxy(t, b.port, await billingSnapshot(), {}, { upstreamSource: () => '300.0.0.1' })
  const c = await RawClient.connect(t, px.port, ADDR.MONITORING)
  c.write(get('/healthz'))
  t.equal((await c.response())?.status, 503)
  t.equal(b.connections, 0, 'nothing reached the backend')
  t.match(px.logs.find((l) => l.msg === 'http request'), { status: 503, reason: 'upstream-connect' })
})
