// Redirect of flagged ports to transparent listeners (the proxies' sockets), and fail-closed.
// Needs root and eBPF (CI runs as root): namespaces wdp2-*, veths wdp2*, pins under
// /sys/fs/bpf/wdp2, route table 2102, proxy ports 16020/16021; all removed in teardown.
import t from 'tap'
import net from 'node:net'
import { datapathLab, eventually, isRoot } from '../helpers/lab-fixture.js'
import { connect, startServer } from '../helpers/lab-net.js'
import { entry, openEntries } from '../helpers/lab-snapshot.js'
import { openTransparentUdp, listenTransparentTcp } from '../../proxy/src/transparent.js'
import { setSocketMark, socketFd } from '../../proxy/src/libc.js'
import { PROXY_SOCKET_MARK, type FlowEvent } from '../../redirect-bpf/src/index.js'

const TCP = 6
const UDP = 17
const IN = 0
const OUT = 1

interface Seen { local: string, remote: string }

/**
 * A stand-in proxy: records what it saw, then relays to the original destination. With `mark`,
 * its sockets carry that SO_MARK as the HTTP proxy's do (listener, and upstream once connected).
 */
async function testProxy (port: number, mark = 0): Promise<{ server: net.Server, seen: Seen[] }> {
  const seen: Seen[] = []
  const server = await listenTransparentTcp(port, '0.0.0.0', 511, { allowHalfOpen: true }, mark)
  server.on('connection', (c) => {
    seen.push({ local: `${c.localAddress}:${c.localPort}`, remote: `${c.remoteAddress}:${c.remotePort}` })
    const up = net.connect(c.localPort ?? 0, c.localAddress ?? '')
    if (mark !== 0) up.on('connect', () => { setSocketMark(socketFd(up), mark) })
    c.pipe(up).pipe(c)
    up.on('error', () => c.destroy())
    c.on('error', () => up.destroy())
  })
  return { server, seen }
}

t.test('redirect to the proxy listeners', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 2, ['a', 'b', 'c'])
  const [A, B, C] = [100, 101, 102]
  const flows: FlowEvent[] = []
  lab.dp.onFlow((ev) => flows.push(ev))
  for (const port of [8080, 9090]) {
    const s = await startServer(lab.ns('b'), 'tcp', port, 'b')
    t.teardown(s.stop)
  }
  await lab.apply([
    entry(A, OUT, 0, TCP, 8080, 'redirect-http'),
    entry(A, OUT, 0, UDP, 53, 'redirect-dns'),
    entry(A, OUT, 0, TCP, 9090, 'allow'),
    entry(B, IN, 0, 0, 0, 'allow'),
    entry(B, IN, 0, TCP, 9090, 'redirect-http'),
    entry(B, OUT, 0, 0, 0, 'allow'),
    ...openEntries(C)
  ])

  await t.test('with no listener, a flagged port fails closed', async (t) => {
    const r = await connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080, 1000)
    t.strictSame(r, { ok: false, error: 'timeout' }, 'dropped, never delivered to b')
    await eventually(() => flows.some((f) => f.reason === 'drop_no_socket' && f.dstPort === 8080))
    t.ok(flows.some((f) => f.reason === 'drop_no_socket' && f.dstPort === 8080), 'drop_no_socket event')
  })

  await t.test('an egress-flagged port reaches the proxy, which sees the original destination', async (t) => {
    const { server, seen } = await testProxy(lab.opts.proxyPort)
    t.teardown(() => { server.close() })
    const r = await connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080)
    t.match(r, { ok: true, reply: { from: 'b' } }, 'relayed to b')
    t.equal(seen.length, 1)
    t.equal(seen[0].local, `${lab.ip('b')}:8080`, 'original destination as local address')
    t.match(seen[0].remote, new RegExp(`^${lab.ip('a')}:`), 'the client as remote address')
    t.notMatch(r.ok ? r.reply.remote : '', new RegExp(`^${lab.ip('a')}:`), 'b saw the proxy upstream, not a')
    t.ok(flows.some((f) => f.verdict === 'redirected-http' && f.srcIp === lab.ip('a') && f.dstPort === 8080), 'redirect event')
  })

  await t.test("the proxy's marked sockets: their data segments skip conntrack, their connections still work", async (t) => {
    // The same ten exchanges through an unmarked and a marked stand-in proxy; every segment
    // to_workload sends through conntrack counts ct_pass. Marked, only the proxy's SYN/FIN/RST
    // segments (and the workloads' own) may count.
    const passes = async (mark: number): Promise<number> => {
      const { server, seen } = await testProxy(lab.opts.proxyPort, mark)
      try {
        const before = lab.dp.counters().ct_pass
        for (let i = 0; i < 10; i++) {
          const r = await connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080)
          t.match(r, { ok: true, reply: { from: 'b' } }, `exchange ${i + 1} relayed (mark ${mark})`)
        }
        t.equal(seen.length, 10)
        await new Promise(resolve => setTimeout(resolve, 200)) // last FIN/ACKs
        return lab.dp.counters().ct_pass - before
      } finally {
        await new Promise(resolve => server.close(resolve))
      }
    }
    const unmarked = await passes(0)
    const marked = await passes(PROXY_SOCKET_MARK)
    t.ok(marked + 20 <= unmarked, `at least 2 fewer conntrack passes per connection marked (${marked} against ${unmarked})`)
  })

  await t.test('an ingress-flagged port of the destination is redirected, whoever the client', async (t) => {
    const { server, seen } = await testProxy(lab.opts.proxyPort)
    t.teardown(() => { server.close() })
    const r = await connect(lab.ns('c'), 'tcp', lab.ip('b'), 9090)
    t.match(r, { ok: true, reply: { from: 'b' } })
    t.equal(seen.length, 1)
    t.equal(seen[0].local, `${lab.ip('b')}:9090`)
    const direct = await connect(lab.ns('a'), 'tcp', lab.ip('b'), 9090)
    t.match(direct, { ok: true }, 'a -> b:9090')
    t.equal(seen.length, 2, 'b\'s ingress redirect applies to a as well')
  })

  await t.test('DNS over UDP reaches the DNS proxy, which reads the original destination and answers as it', async (t) => {
    const sock = openTransparentUdp(lab.opts.dnsProxyPort, '0.0.0.0', true)
    t.teardown(() => sock.close())
    const got: Array<{ from: string, received: string }> = []
    sock.startReading((d) => {
      // The datagram keeps its addresses: IP_ORIGDSTADDR names the server the client asked.
      got.push({ from: `${d.srcIp}:${d.srcPort}`, received: `${d.dstIp}:${d.dstPort}` })
      if (d.dstPort === 0) return
      // answer FROM the address the client asked
      const out = openTransparentUdp(d.dstPort, d.dstIp)
      const body = JSON.stringify({ from: 'dns-proxy', local: `${d.dstIp}:${d.dstPort}`, remote: `${d.srcIp}:${d.srcPort}` })
      out.sendTo(Buffer.from(body), d.srcIpNum, d.srcPort)
      out.close()
    })
    const r = await connect(lab.ns('a'), 'udp', lab.ip('c'), 53)
    t.match(r, { ok: true, reply: { from: 'dns-proxy', local: `${lab.ip('c')}:53` } }, 'the client got the answer from c:53')
    t.equal(got.length, 1)
    t.equal(got[0].received, `${lab.ip('c')}:53`, 'the datagram names the server it was sent to')
    t.ok(lab.dp.counters().new_redirect_dns >= 1)
  })
})
