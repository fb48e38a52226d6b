// Backpressure on request bodies: an upstream that stops reading must stop the client from
// being read, so what the proxy holds is bounded by its own reads, never by the client.
import t from 'tap'
import net from 'node:net'
import { ADDR, RawClient, billingSnapshot, sleep, startProxy, type Tap } from '../../helpers/http-proxy.js'

const MiB = 1024 * 1024
const UPLOAD = 96 * MiB

/** A backend that accepts and then never reads. */
async function stuckBackend (t: Tap): Promise<{ port: number, sockets: net.Socket[] }> {
  const sockets: net.Socket[] = []
  const srv = net.createServer({ pauseOnConnect: true }, s => { sockets.push(s) })
  await new Promise<void>(resolve => srv.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { for (const s of sockets) s.destroy(); await new Promise(resolve => srv.close(resolve)) })
  return { port: (srv.address() as net.AddressInfo).port, sockets }
}

/**
 * Write `total` bytes as fast as the socket takes them; resolves with the bytes the kernel took
 * once the flow has stopped (no progress over several polls) or everything went out.
 */
async function pushUntilStuck (s: net.Socket, total: number): Promise<number> {
  const block = Buffer.alloc(256 * 1024, 0x61)
  let queued = 0
  const fill = (): void => {
    while (queued < total) {
      queued += block.length
      if (!s.write(block)) return
    }
  }
  s.on('drain', fill)
  fill()
  let last = -1
  let still = 0
  for (;;) {
    await sleep(100)
    const taken = s.bytesWritten - s.writableLength
    if (taken >= total) return taken
    still = taken === last ? still + 1 : 0
    last = taken
    if (still >= 8) return taken
  }
}

t.test('an upstream that does not read stops the client: the proxy holds little, the client cannot push its upload', async t => {
  const be = await stuckBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot(), { bodyTimeoutMs: 60_000 })
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write(`POST /api/v1/charge HTTP/1.1\r\nHost: billing\r\nContent-Length: ${UPLOAD}\r\n\r\n`)
  const taken = await pushUntilStuck(c.socket, UPLOAD)
  const held = px.proxy.metrics().write_pending_bytes
  t.ok(held <= 4 * MiB, `the proxy holds at most 4 MiB of the body (held ${held} bytes)`)
  // Beyond the proxy's bound, only the kernel's socket buffers on loopback (a few MiB each way).
  t.ok(taken < UPLOAD / 2, `the client could not push its upload into the proxy (took ${taken} of ${UPLOAD} bytes)`)
  t.equal(be.sockets.length, 1, 'one upstream connection')

  // Then the upstream reads: everything flows, the request completes.
  let got = 0
  const up = be.sockets[0]
  up.on('data', (d: Buffer) => {
    got += d.length
    if (got >= UPLOAD) up.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
  })
  up.resume()
  const r = await c.response(60_000)
  t.equal(r?.status, 200, 'the upload finished once the upstream read')
  t.ok(got >= UPLOAD, 'every byte arrived')
})

t.test('a client that does not read its response stops the upstream from being read', async t => {
  const RESPONSE = 64 * MiB
  let upstreamTook = 0
  const srv = net.createServer(s => {
    s.once('data', () => {
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${RESPONSE}\r\n\r\n`)
      const block = Buffer.alloc(256 * 1024, 0x62)
      const fill = (): void => {
        while (upstreamTook < RESPONSE) {
          upstreamTook += block.length
          if (!s.write(block)) { s.once('drain', fill); return }
        }
      }
      fill()
    })
  })
  await new Promise<void>(resolve => srv.listen(0, '127.0.0.1', resolve))
  const conns = new Set<net.Socket>()
  srv.on('connection', s => { conns.add(s); s.on('close', () => conns.delete(s)) })
  t.teardown(async () => { for (const s of conns) s.destroy(); await new Promise(resolve => srv.close(resolve)) })
  const px = await startProxy(t, (srv.address() as net.AddressInfo).port, await billingSnapshot())

  const c = net.connect({ host: '127.0.0.1', port: px.port, localAddress: ADDR.MONITORING })
  t.teardown(() => { c.destroy() })
  c.pause() // reads nothing
  c.write('GET /healthz HTTP/1.1\r\nHost: billing\r\n\r\n')
  // Wait until the upstream cannot write any more (its writes stay queued).
  let last = -1
  let still = 0
  while (still < 8 && upstreamTook < RESPONSE) {
    await sleep(100)
    still = upstreamTook === last ? still + 1 : 0
    last = upstreamTook
  }
  const held = px.proxy.metrics().write_pending_bytes
  t.ok(held <= 4 * MiB, `the proxy holds at most 4 MiB of the response (held ${held} bytes)`)
  t.ok(upstreamTook < RESPONSE, 'the upstream could not push the whole response')

  // The client reads: the whole response arrives.
  let got = 0
  const done = new Promise<void>(resolve => {
    c.on('data', (d: Buffer) => { got += d.length; if (got >= RESPONSE) resolve() })
  })
  c.resume()
  await done
  t.ok(got >= RESPONSE, 'every byte arrived')
})
