// The proxy's writes go straight to the socket handle (proxy/src/http/writes.ts). What a user
// would notice if that went wrong: bytes out of order or lost when the peer reads slowly, a
// proxy that never resumes after backpressure, a dead peer that is not noticed. Real loopback
// sockets, no root.
import t from 'tap'
import net from 'node:net'
import { once } from 'node:events'
import { SocketWriter, WriteError } from '../../../proxy/src/http/writes.js'
import type { Tap } from '../../helpers/http-proxy.js'

/** A connected pair: `a` (ours, written through a SocketWriter) and the peer `b` (paused). */
async function pair (t: Tap): Promise<{ a: net.Socket, b: net.Socket }> {
  const server = net.createServer({ pauseOnConnect: true })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const accepted = once(server, 'connection')
  // Like the proxy's own sockets (reads.ts): reads into a buffer of ours, so pause() stops reading.
  const onread = { buffer: Buffer.alloc(1024), callback: () => true }
  const a = net.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port, onread })
  await once(a, 'connect')
  const [b] = await accepted as [net.Socket]
  t.teardown(() => { a.destroy(); b.destroy(); server.close() })
  return { a, b }
}

/** Everything `b` receives until it ends. */
function collect (b: net.Socket): Promise<Buffer> {
  const parts: Buffer[] = []
  b.on('data', (d: Buffer) => parts.push(d))
  return new Promise(resolve => b.once('end', () => { resolve(Buffer.concat(parts)) }))
}

/** Deterministic bytes: block i is filled with i. */
function block (i: number, size: number): Buffer { return Buffer.alloc(size, i & 0xff) }

t.test('a peer that does not read: writes queue in order, needDrain holds, drain comes, nothing is lost', async t => {
  const { a, b } = await pair(t)
  const w = new SocketWriter(a)
  const sent: Buffer[] = []
  let i = 0
  // Fill the kernel's buffers until a write cannot complete at once.
  while (w.write(block(i, 64 * 1024))) { sent.push(block(i, 64 * 1024)); i++; if (i > 2000) break }
  sent.push(block(i, 64 * 1024))
  t.ok(i < 2000, 'the kernel buffers filled up (a write went pending)')
  t.equal(w.needDrain, true, 'needDrain while a write is pending')
  // More writes while pending: strings and buffers, still in order behind it.
  w.write('head-line\r\n')
  sent.push(Buffer.from('head-line\r\n', 'latin1'))
  w.cork()
  w.write('a')
  w.write(block(7, 3))
  w.write('z\u00ff')
  w.uncork()
  sent.push(Buffer.from('a', 'latin1'), block(7, 3), Buffer.from('z\u00ff', 'latin1'))
  const drained = once(a, 'drain')
  const got = collect(b)
  b.resume()
  await drained
  t.equal(w.needDrain, false, 'no longer needDrain after drain')
  a.end()
  const all = await got
  t.equal(all.length, Buffer.concat(sent).length, 'every byte arrived')
  t.ok(all.equals(Buffer.concat(sent)), 'in the order written')
})

t.test('a socket still connecting: writes wait in Writable and arrive first, then direct writes follow', async t => {
  const server = net.createServer()
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const accepted = once(server, 'connection')
  const a = net.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port })
  t.teardown(() => { a.destroy(); server.close() })
  const w = new SocketWriter(a)
  t.equal(a.connecting, true)
  w.write('one,')
  w.cork()
  w.write('two,')
  w.write(Buffer.from('three,'))
  w.uncork()
  const [b] = await accepted as [net.Socket]
  t.teardown(() => b.destroy())
  const got = collect(b)
  await once(a, 'connect')
  w.write('four')
  a.end()
  t.equal((await got).toString(), 'one,two,three,four')
})

t.test('writing to a peer that reset: the socket is destroyed with a write error', async t => {
  const { a, b } = await pair(t)
  a.pause() // not reading: only a write can find out about the reset
  const w = new SocketWriter(a)
  b.resetAndDestroy()
  await new Promise(resolve => setTimeout(resolve, 50))
  const errored = once(a, 'error')
  // The first write may still be taken by the kernel; the RST makes a following one fail.
  for (let i = 0; i < 10 && !a.destroyed; i++) { w.write('x'); await new Promise(resolve => setTimeout(resolve, 10)) }
  const [err] = await errored as [Error]
  t.ok(a.destroyed, 'destroyed')
  t.ok(err instanceof WriteError, `a write error (${String(err)})`)
  t.match((err as WriteError).code, /^(EPIPE|ECONNRESET)$/)
  t.equal(w.write('y'), false, 'a write after that reports backpressure and sends nothing')
})

t.test('a write after end() is refused as net.Socket refuses it, and nothing of it is sent', async t => {
  const { a, b } = await pair(t)
  const w = new SocketWriter(a)
  const got = collect(b)
  b.resume()
  w.write('before end')
  a.end()
  const errored = once(a, 'error')
  t.equal(w.write('after end'), false)
  const [err] = await errored as [NodeJS.ErrnoException]
  t.equal(err.code, 'ERR_STREAM_WRITE_AFTER_END')
  t.equal((await got).toString(), 'before end')
})
