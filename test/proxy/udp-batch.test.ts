// UdpBatchSocket (proxy/src/udp-batch.ts): the DNS proxy's UDP sockets, read with recvmmsg.
// Loopback only (127.0.54.x), no root needed.
import t from 'tap'
import * as dgram from 'node:dgram'
import { once } from 'node:events'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { bindUdp, connectUdp, ipv4Num, ipv4Text, type Datagram } from '../../proxy/src/udp-batch.js'

const A = '127.0.54.1'
const B = '127.0.54.2'

interface Seen { data: string, src: string, dst: string }

function record (into: Seen[]): (d: Datagram) => void {
  return d => { into.push({ data: d.data.toString(), src: `${d.srcIp}:${d.srcPort}`, dst: `${d.dstIp}:${d.dstPort}` }) }
}

async function until (what: () => boolean, ms = 2000): Promise<boolean> {
  const end = Date.now() + ms
  while (!what()) {
    if (Date.now() > end) return false
    await new Promise(resolve => setTimeout(resolve, 5))
  }
  return true
}

t.test('addresses as numbers and text', async t => {
  t.equal(ipv4Num('10.1.2.3'), (10 << 24 >>> 0) + (1 << 16) + (2 << 8) + 3)
  t.equal(ipv4Num('255.255.255.255'), 0xffffffff)
  for (const bad of ['', '1.2.3', '1.2.3.4.5', '256.1.1.1', '1..2.3', 'a.b.c.d', '1.2.3.4 ', '::1', '1.2.3.0004']) {
    t.equal(ipv4Num(bad), -1, `not a dotted quad: '${bad}'`)
  }
  t.equal(ipv4Text(0xc0a80001), '192.168.0.1')
  t.equal(ipv4Text(ipv4Num('203.0.113.254')), '203.0.113.254')
})

t.test('every datagram of a burst arrives whole, with its source and where it was sent', async t => {
  const seen: Seen[] = []
  const server = bindUdp(A, 0, { origDst: true, onDatagram: record(seen) })
  t.teardown(() => server.close())
  const port = server.localAddress().port
  const client = dgram.createSocket('udp4')
  client.bind(0, B)
  await once(client, 'listening')
  t.teardown(() => client.close())
  // More than one recvmmsg's worth (32), of every size up to a 64 KiB datagram.
  const sizes = [0, 1, 511, 4096, 65507, ...Array.from({ length: 95 }, (_, i) => 20 + i)]
  for (const [i, n] of sizes.entries()) client.send(Buffer.alloc(n, String.fromCharCode(97 + (i % 26))), port, A)
  t.ok(await until(() => seen.length === sizes.length), `${sizes.length} datagrams received (got ${seen.length})`)
  const src = `${B}:${client.address().port}`
  t.ok(seen.every(s => s.src === src), 'source address and port of each')
  t.ok(seen.every(s => s.dst === `${A}:${port}`), 'IP_ORIGDSTADDR: the address and port it was sent to')
  t.strictSame(seen.map(s => s.data.length), sizes, 'in order, none truncated')
  t.ok(seen.every((s, i) => s.data === String.fromCharCode(97 + (i % 26)).repeat(sizes[i])), 'the bytes as sent')
})

t.test('without origDst no destination is reported', async t => {
  const seen: Seen[] = []
  const server = bindUdp(A, 0, { onDatagram: record(seen) })
  t.teardown(() => server.close())
  const client = bindUdp(B, 0)
  t.teardown(() => client.close())
  t.ok(client.sendTo(Buffer.from('x'), ipv4Num(A), server.localAddress().port))
  t.ok(await until(() => seen.length === 1))
  t.equal(seen[0].dst, ':0')
})

t.test('sendTo and send reach their peer; a connected socket hears only it and reports its ICMP errors', async t => {
  const seen: Seen[] = []
  const server = bindUdp(A, 0, {
    onDatagram: d => {
      seen.push({ data: d.data.toString(), src: `${d.srcIp}:${d.srcPort}`, dst: '' })
      // answer from a view into the middle of a bigger buffer: the offset must be honoured
      const out = Buffer.from('xxanswer:' + d.data.toString() + 'yy')
      server.sendTo(out.subarray(2, out.length - 2), d.srcIpNum, d.srcPort)
    }
  })
  const port = server.localAddress().port
  const answers: string[] = []
  const errors: unknown[] = []
  const conn = connectUdp(A, port, 1 << 20, { onDatagram: d => answers.push(d.data.toString()), onError: err => errors.push(err) })
  t.teardown(() => conn.close())
  t.equal(conn.localAddress().ip, '127.0.0.1', 'connect bound it (to the route\'s source)')
  for (let i = 0; i < 40; i++) t.ok(conn.send(Buffer.from(`q${i}`)))
  t.ok(await until(() => answers.length === 40))
  t.strictSame(answers, Array.from({ length: 40 }, (_, i) => `answer:q${i}`))
  t.equal(seen[0].src, `127.0.0.1:${conn.localAddress().port}`)

  // A stranger's datagram to the connected socket is dropped by the kernel.
  const stranger = dgram.createSocket('udp4')
  stranger.bind(0, B)
  await once(stranger, 'listening')
  stranger.send('spoof', conn.localAddress().port, '127.0.0.1')
  await new Promise(resolve => setTimeout(resolve, 100))
  stranger.close()
  t.equal(answers.length, 40, 'nothing from another address')

  // The server gone: the next send draws ICMP port unreachable, reported once as ECONNREFUSED.
  server.close()
  conn.send(Buffer.from('after close'))
  t.ok(await until(() => errors.length > 0), 'the error is reported')
  t.match(errors[0], { code: 'WARDEN_ERR_UDP_SOCKET', op: 'recvmmsg', errno: 111 })

  // The error was consumed: with a server back on the port, answers flow again, no more errors.
  const again = bindUdp(A, port, { onDatagram: d => { again.sendTo(Buffer.from('back'), d.srcIpNum, d.srcPort) } })
  t.teardown(() => again.close())
  conn.send(Buffer.from('hello again'))
  t.ok(await until(() => answers.length === 41), 'the next answer arrives')
  t.equal(answers[40], 'back')
  t.equal(errors.length, 1, 'reported once')
})

t.test('a handler that throws loses its datagram only; the rest are delivered', async t => {
  const got: string[] = []
  const errors: unknown[] = []
  const server = bindUdp(A, 0, {
    onDatagram: d => { const s = d.data.toString(); if (s === 'bad') throw new Error('boom'); got.push(s) },
    onError: err => errors.push(err)
  })
  t.teardown(() => server.close())
  const client = bindUdp(B, 0)
  t.teardown(() => client.close())
  for (const s of ['a', 'bad', 'b']) client.sendTo(Buffer.from(s), ipv4Num(A), server.localAddress().port)
  t.ok(await until(() => got.length === 2))
  t.strictSame(got, ['a', 'b'])
  t.match(errors, [{ message: 'boom' }])
})

t.test('what a handler and its onError throw reaches uncaughtException, and reading goes on', async t => {
  const child = fileURLToPath(new URL('../fixtures/udp-batch-throw-child.ts', import.meta.url))
  const tsLoader = process.execArgv.filter(a => a.includes('typescript') || a === '--enable-source-maps' || a.startsWith('--import') || a.startsWith('--loader'))
  const out = await new Promise<string>((resolve, reject) => {
    execFile(process.execPath, [...tsLoader, child], { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`${err.message}\n${stderr}`)); else resolve(stdout)
    })
  })
  const res = JSON.parse(out.trim().split('\n').pop() ?? '{}') as { got: string[], uncaught: string[] }
  t.strictSame(res.got, ['a', 'b', 'c', 'd'], 'every other datagram, also after the throws')
  t.strictSame(res.uncaught.sort(), ['onError: handler: bad1', 'onError: handler: bad2'], 'each exception surfaced once')
})

t.test('promises settled in a handler run at once, not at the next unrelated event', async t => {
  // The poll callback is not a MakeCallback: without the drain, this reply (sent from a
  // microtask) would wait for the next timer or I/O callback in the process. Nothing else
  // happens here until the single 300 ms timer below, and both ends are UdpBatchSockets.
  const server = bindUdp(A, 0, {
    onDatagram: d => {
      const to = d.srcIpNum
      const port = d.srcPort
      void Promise.resolve().then(() => { server.sendTo(Buffer.from('late'), to, port) })
    }
  })
  t.teardown(() => server.close())
  let arrived = 0
  const client = bindUdp(B, 0, { onDatagram: () => { arrived = Date.now() } })
  t.teardown(() => client.close())
  const sent = Date.now()
  client.sendTo(Buffer.from('ping'), ipv4Num(A), server.localAddress().port)
  await new Promise(resolve => setTimeout(resolve, 300))
  t.ok(arrived !== 0 && arrived - sent < 200, `answered before the timer (${arrived === 0 ? 'not yet' : `${arrived - sent} ms`})`)
})

t.test('a closed socket stops reading and refuses sends; close is idempotent', async t => {
  const seen: Seen[] = []
  const server = bindUdp(A, 0, { onDatagram: record(seen) })
  const port = server.localAddress().port
  server.close()
  server.close()
  t.equal(server.sendTo(Buffer.from('x'), ipv4Num(B), 9), false)
  t.throws(() => server.startReading(() => {}), /closed/)
  const client = bindUdp(B, 0)
  t.teardown(() => client.close())
  client.sendTo(Buffer.from('x'), ipv4Num(A), port)
  await new Promise(resolve => setTimeout(resolve, 100))
  t.equal(seen.length, 0)
})

t.test('bad addresses and a taken port are clear errors', async t => {
  t.throws(() => bindUdp('localhost', 0), /not an IPv4 address: localhost/)
  t.throws(() => connectUdp('::1', 53, 1024), /not an IPv4 address/)
  const a = bindUdp(A, 0)
  t.teardown(() => a.close())
  t.throws(() => bindUdp(A, a.localAddress().port), { code: 'WARDEN_ERR_UDP_SOCKET', op: 'bind', errno: 98 })
})
