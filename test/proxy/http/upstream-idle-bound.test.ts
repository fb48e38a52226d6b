// Idle keep-alive upstream connections are bounded in all, not only per destination: a client
// that reaches many destinations leaves at most upstreamMaxIdle of them behind, the one idle
// longest closed first, and a destination whose connection was closed simply gets a new one.
import t from 'tap'
import { ADDR, RawClient, billingSnapshot, get, startBackend, startProxy, type Backend } from '../../helpers/http-proxy.js'

/** Original destination ports (billing-service's address), one backend each. */
const DST_PORTS = [18211, 18212, 18213]

t.test('idle upstream connections stay within upstreamMaxIdle, the longest idle closed first', async (t) => {
  const backends: Backend[] = []
  for (let i = 0; i < DST_PORTS.length; i++) backends.push(await startBackend(t))
  const px = await startProxy(t, backends[0].port, await billingSnapshot({}, DST_PORTS), { upstreamMaxIdle: 2 },
    { routes: DST_PORTS.map((dstPort, i) => ({ dstPort, backendPort: backends[i].port })) })
  const ask = async (i: number): Promise<void> => {
    const c = await RawClient.connect(t, px.routePorts[i], ADDR.MONITORING)
    c.write(get('/healthz'))
    const r = await c.response()
    t.equal(r?.status, 200, `a request to destination ${i}`)
    c.socket.destroy()
  }
  // One request to each destination in turn: each leaves its upstream connection idle.
  await ask(0)
  await ask(1)
  t.equal(px.proxy.metrics().upstream_idle, 2)
  await ask(2)
  t.equal(px.proxy.metrics().upstream_idle, 2, 'the third idle connection took the place of the first')
  t.equal(px.proxy.metrics().upstream_open, 2, 'the first destination\'s connection was closed')
  // The second and third destinations reuse theirs; the first gets a new one.
  await ask(2)
  await ask(1)
  t.same(backends.map((b) => b.connections), [1, 1, 1], 'reused while idle')
  await ask(0)
  t.same(backends.map((b) => b.connections), [2, 1, 1], 'the first destination connected again')
  t.equal(px.proxy.metrics().upstream_idle, 2)
})
