// Security cases: spoofed, late and malformed answers teach nothing; malformed
// queries get FORMERR or are dropped, never a crash. The "server" here is a UDP socket the test
// controls on 127.0.53.14 (spoofers on 127.0.53.14 other port and 127.0.53.15); loopback only.
import t from 'tap'
import * as dgram from 'node:dgram'
import { once } from 'node:events'
import dnsPacket from 'dns-packet'
import fc from 'fast-check'
import { aRecords, makeSnapshot, query, rawUdp, startDnsmasq, startProxy } from '../../helpers/dns.js'

const EXPORTER = '127.0.53.25'
const SERVER_IP = '127.0.53.14'

async function udpSocket (t: { teardown (fn: () => unknown): void }, ip: string): Promise<dgram.Socket> {
  const s = dgram.createSocket('udp4')
  s.bind(0, ip)
  await once(s, 'listening')
  t.teardown(() => s.close())
  return s
}

function answer (id: number, name: string, records: { name: string, data: string }[], question = name): Buffer {
  return dnsPacket.encode({
    type: 'response', id, flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type: 'A', name: question }],
    answers: records.map(r => ({ type: 'A', name: r.name, ttl: 60, data: r.data }))
  })
}

t.test('only the matching answer from the server the query went to is accepted', async t => {
  const server = await udpSocket(t, SERVER_IP)
  const wrongPort = await udpSocket(t, SERVER_IP)
  const wrongHost = await udpSocket(t, '127.0.53.15')
  const port = server.address().port
  const snapshot = makeSnapshot({
    endpoints: [{ id: 7, name: 'data-exporter', ipv4: EXPORTER }],
    dns: [{ endpointId: 7, port, matchPatterns: ['*'] }],
    fqdn: [{ matchPattern: '*' }]
  })
  const h = await startProxy(t, { snapshot, upstream: { ip: SERVER_IP, port } })
  server.on('message', (msg, from) => {
    const id = msg.readUInt16BE(0)
    const reply = (b: Buffer, s = server): void => { s.send(b, from.port, from.address) }
    reply(answer(id, 'api.github.com', [{ name: 'api.github.com', data: '198.18.53.66' }]), wrongPort)
    reply(answer(id, 'api.github.com', [{ name: 'api.github.com', data: '198.18.53.67' }]), wrongHost)
    reply(answer(id ^ 1, 'api.github.com', [{ name: 'api.github.com', data: '198.18.53.68' }]))
    reply(answer(id, 'api.github.com', [{ name: 'www.google.com', data: '198.18.53.69' }], 'www.google.com'))
    const bad = answer(id, 'api.github.com', [{ name: 'api.github.com', data: '198.18.53.70' }])
    bad.writeUInt16BE(2, 6) // announces 2 answers, has 1
    reply(bad)
    setTimeout(() => {
      // The real answer, with an extra A record off the CNAME chain for a name the server does not own.
      reply(answer(id, 'api.github.com', [{ name: 'api.github.com', data: '198.18.53.10' }, { name: 'www.google.com', data: '198.18.53.71' }]))
      setTimeout(() => reply(answer(id, 'api.github.com', [{ name: 'api.github.com', data: '198.18.53.72' }])), 20) // late
    }, 30)
  })
  const ans = await query(h.udp, 'api.github.com', { from: EXPORTER, id: 4242 })
  t.equal(ans.id, 4242, 'the client gets its own ID back')
  t.strictSame(aRecords(ans), ['198.18.53.10', '198.18.53.71'], 'the real answer, passed through unchanged')
  await new Promise(resolve => setTimeout(resolve, 100))
  t.strictSame(h.proxy.learned().map(n => [n.name, n.ipv4]), [['api.github.com.', ['198.18.53.10']]],
    'only the real IP of the asked name is learned; spoofed, late and off-chain records taught nothing')
  // The upstream socket is connected to the server, so the kernel drops the two answers from
  // the wrong port and host before the proxy sees them; the other three are counted here.
  t.match(h.proxy.metrics(), { spoofedAnswers: 3, malformedAnswers: 1, answered: 1 })
})

t.test('the upstream ID is not the client ID and varies', async t => {
  const server = await udpSocket(t, SERVER_IP)
  const port = server.address().port
  const snapshot = makeSnapshot({ endpoints: [{ id: 7, name: 'data-exporter', ipv4: EXPORTER }], dns: [{ endpointId: 7, port, matchPatterns: ['*'] }] })
  const h = await startProxy(t, { snapshot, upstream: { ip: SERVER_IP, port } })
  const seen: number[] = []
  server.on('message', (msg, from) => {
    seen.push(msg.readUInt16BE(0))
    server.send(answer(msg.readUInt16BE(0), 'api.github.com', []), from.port, from.address)
  })
  for (let i = 0; i < 8; i++) t.equal((await query(h.udp, 'api.github.com', { from: EXPORTER, id: 1 })).id, 1)
  t.equal(seen.length, 8)
  t.ok(new Set(seen).size >= 6, `random upstream IDs: ${seen.join(',')}`)
})

t.test('malformed queries get FORMERR or are dropped, and the proxy keeps serving', async t => {
  const dns = await startDnsmasq(t, { ip: '127.0.53.16', hosts: { 'api.github.com': ['198.18.53.10'] } })
  const snapshot = makeSnapshot({ endpoints: [{ id: 7, name: 'data-exporter', ipv4: EXPORTER }], dns: [{ endpointId: 7, port: dns.port, matchPatterns: ['*'] }] })
  const h = await startProxy(t, { snapshot, upstream: dns })
  const hdr = (qd: number, flags = 0x0100): Buffer => { const b = Buffer.alloc(12); b.writeUInt16BE(99, 0); b.writeUInt16BE(flags, 2); b.writeUInt16BE(qd, 4); return b }
  const q = (name: Buffer): Buffer => Buffer.concat([hdr(1), name, Buffer.from([0, 1, 0, 1])])
  const formerr: [string, Buffer][] = [
    ['two questions', Buffer.concat([hdr(2), Buffer.from([1, 0x61, 0, 0, 1, 0, 1, 1, 0x62, 0, 0, 1, 0, 1])])],
    ['compression pointer loop in the question', q(Buffer.from([0xc0, 12]))],
    ['truncated name', Buffer.concat([hdr(1), Buffer.from([30, 0x61, 0x62])])],
    ['name over 255 bytes', q(Buffer.concat([...Array.from({ length: 5 }, () => Buffer.concat([Buffer.from([63]), Buffer.alloc(63, 0x61)])), Buffer.from([0])]))],
    ['oversized (5000 bytes)', Buffer.concat([q(Buffer.from([1, 0x61, 0])), Buffer.alloc(5000 - 19)])]
  ]
  for (const [what, msg] of formerr) {
    const r = dnsPacket.decode(await rawUdp(h.udp, msg, { from: EXPORTER }))
    t.match(r, { id: 99, type: 'response', rcode: 'FORMERR' }, what)
  }
  await t.rejects(rawUdp(h.udp, Buffer.alloc(5), { from: EXPORTER, timeoutMs: 200 }), 'a 5-byte datagram is dropped')
  await t.rejects(rawUdp(h.udp, answer(5, 'api.github.com', []), { from: EXPORTER, timeoutMs: 200 }), 'a response sent as a query is dropped')
  const notimp = dnsPacket.decode(await rawUdp(h.udp, Buffer.concat([hdr(1, 0x2000), Buffer.from([1, 0x61, 0, 0, 1, 0, 1])]), { from: EXPORTER }))
  t.equal(notimp.rcode, 'NOTIMP', 'opcode UPDATE')

  // Random bytes and mutations of a valid query, as fast as the socket takes them.
  const valid = dnsPacket.encode({ type: 'query', id: 1, questions: [{ type: 'A', name: 'api.github.com' }] })
  const sender = dgram.createSocket('udp4')
  sender.bind(0, EXPORTER)
  await once(sender, 'listening')
  t.teardown(() => sender.close())
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), fc.array(fc.tuple(fc.nat(valid.length - 1), fc.nat(255)), { maxLength: 6 }), (rand, muts) => {
    sender.send(Buffer.from(rand), h.udp.port, h.udp.ip)
    const m = Buffer.from(valid)
    for (const [i, v] of muts) m[i] = v
    sender.send(m, h.udp.port, h.udp.ip)
  }), { numRuns: 500 })
  await new Promise(resolve => setTimeout(resolve, 300))
  t.strictSame(aRecords(await query(h.udp, 'api.github.com', { from: EXPORTER })), ['198.18.53.10'], 'still answers after 1000 bad datagrams')
})
