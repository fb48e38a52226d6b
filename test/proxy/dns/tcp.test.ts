// DNS over TCP through the proxy to a real dnsmasq on 127.0.53.17 (loopback only):
// several queries on one connection, pipelined or split byte by byte, denied ones in between.
import t from 'tap'
import * as net from 'node:net'
import { once } from 'node:events'
import dnsPacket from 'dns-packet'
import { lastLearned, makeSnapshot, rawTcp, startDnsmasq, startProxy, waitFor, type TestLike } from '../../helpers/dns.js'

const EXPORTER = '127.0.53.26'

function q (id: number, name: string): Buffer {
  return dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name }] })
}

async function setup (t: TestLike, options = {}) {
  const dns = await startDnsmasq(t, { ip: '127.0.53.17', hosts: { 'api.github.com': ['198.18.53.10'], 'status.github.com': ['198.18.53.11'], 'www.google.com': ['198.18.53.20'] } })
  const snapshot = makeSnapshot({
    endpoints: [{ id: 7, name: 'data-exporter', ipv4: EXPORTER }],
    dns: [{ endpointId: 7, port: dns.port, matchPatterns: ['*.github.com'] }],
    fqdn: [{ matchPattern: '*.github.com' }]
  })
  const h = await startProxy(t, { snapshot, upstream: dns, options })
  return { dns, h }
}

function byId (answers: Buffer[]): Map<number, ReturnType<typeof dnsPacket.decode>> {
  return new Map(answers.map(a => { const p = dnsPacket.decode(a); return [p.id ?? -1, p] }))
}

t.test('several queries pipelined on one connection, allowed and denied', async t => {
  const { dns, h } = await setup(t)
  const answers = byId(await rawTcp(h.tcp, [q(1, 'api.github.com'), q(2, 'www.google.com'), q(3, 'status.github.com')], 3, { from: EXPORTER }))
  t.strictSame(answers.get(1)?.answers.map(a => a.data), ['198.18.53.10'])
  t.equal(answers.get(2)?.rcode, 'REFUSED')
  t.strictSame(answers.get(3)?.answers.map(a => a.data), ['198.18.53.11'])
  t.equal(await dns.queriesFor('www.google.com'), 0, 'the denied one was not forwarded')
  t.strictSame(lastLearned(h, 'status.github.com.'), ['198.18.53.11'])
  t.strictSame(h.proxy.learned().map(n => n.name), ['api.github.com.', 'status.github.com.'])
  t.match(h.proxy.metrics(), { queriesTcp: 3, refused: 1, forwarded: 2, answered: 2, inFlight: 0 })
})

t.test('a query split across many segments still works', async t => {
  const { h } = await setup(t)
  const answers = byId(await rawTcp(h.tcp, [q(9, 'api.github.com'), q(10, 'status.github.com')], 2, { from: EXPORTER, chunked: true }))
  t.strictSame([...answers.keys()].sort((a, b) => a - b), [9, 10])
})

t.test('a malformed message gets FORMERR and the connection keeps working', async t => {
  const { h } = await setup(t)
  const bad = Buffer.concat([q(5, 'api.github.com').subarray(0, 12), Buffer.from([0xc0, 12, 0, 1, 0, 1])])
  const answers = byId(await rawTcp(h.tcp, [bad, q(6, 'api.github.com')], 2, { from: EXPORTER }))
  t.equal(answers.get(5)?.rcode, 'FORMERR')
  t.equal(answers.get(6)?.rcode, 'NOERROR')
})

t.test('an idle connection is closed; closing mid-query leaks nothing', async t => {
  const { h } = await setup(t, { tcpIdleTimeoutMs: 200 })
  const idle = net.connect({ host: h.tcp.ip, port: h.tcp.port, localAddress: EXPORTER })
  idle.on('error', () => {})
  await once(idle, 'connect')
  const t0 = Date.now()
  await once(idle, 'close')
  t.ok(Date.now() - t0 >= 150, `closed by the proxy after ${Date.now() - t0} ms idle`)
  const sock = net.connect({ host: h.tcp.ip, port: h.tcp.port, localAddress: EXPORTER })
  await once(sock, 'connect')
  const m = q(1, 'api.github.com')
  const frame = Buffer.alloc(2); frame.writeUInt16BE(m.length)
  sock.write(Buffer.concat([frame, m]))
  sock.destroy()
  t.ok(await waitFor(() => h.proxy.metrics().inFlight === 0), 'nothing in flight after the client left')
})
