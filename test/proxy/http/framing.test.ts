// What goes upstream is the canonical message the policy judged: framing written by the proxy
// from the parser's reading (never the client's framing fields), hop-by-hop fields removed,
// and every head a backend could read differently refused before a byte reaches it.
import t from 'tap'
import net from 'node:net'
import { ADDR, RawClient, billingSnapshot, startBackend, startProxy, type Tap } from '../../helpers/http-proxy.js'

const H = 'Host: billing\r\n'
const CHARGE = 'POST /api/v1/charge HTTP/1.1\r\n'

/** A backend that records raw bytes and answers each request head it finds with 200 (Content-Length: 2). */
async function recordingBackend (t: Tap): Promise<{ port: number, received: () => string }> {
  let all = ''
  const conns = new Set<net.Socket>()
  const srv = net.createServer(s => {
    conns.add(s)
    s.on('close', () => conns.delete(s))
    s.on('data', (d: Buffer) => { all += d.toString('latin1'); s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok') })
  })
  await new Promise<void>(resolve => srv.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { for (const s of conns) s.destroy(); await new Promise(resolve => srv.close(resolve)) })
  return { port: (srv.address() as net.AddressInfo).port, received: () => all }
}

const refused: Array<[string, string, number]> = [
  // llhttp frames these by Content-Length and ignores the empty list; a backend may not.
  ['empty Transfer-Encoding with Content-Length', `${CHARGE}${H}Transfer-Encoding: \r\nContent-Length: 5\r\n\r\nabcde`, 400],
  ['whitespace-only Transfer-Encoding with Content-Length', `${CHARGE}${H}Transfer-Encoding:  \t\r\nContent-Length: 5\r\n\r\nabcde`, 400],
  ['empty Transfer-Encoding after a chunked one', `${CHARGE}${H}Transfer-Encoding: chunked\r\nTransfer-Encoding: \r\n\r\n0\r\n\r\n`, 400],
  ['Content_Length', `${CHARGE}${H}Content_Length: 5\r\n\r\nabcde`, 400],
  ['Transfer_Encoding', `${CHARGE}${H}Transfer_Encoding: chunked\r\n\r\n0\r\n\r\n`, 400],
  ['HTTP/1.0 with Transfer-Encoding', `POST /api/v1/charge HTTP/1.0\r\n${H}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n`, 400],
  ['Host with a list', `${CHARGE}Host: a, b\r\nContent-Length: 0\r\n\r\n`, 400],
  ['Host with a path', `${CHARGE}Host: foo/bar\r\nContent-Length: 0\r\n\r\n`, 400],
  ['Connection naming Content-Length', `${CHARGE}${H}Connection: content-length\r\nContent-Length: 5\r\n\r\nabcde`, 400],
  ['Connection naming Transfer-Encoding', `${CHARGE}${H}Connection: keep-alive, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`, 400],
  ['Expect other than 100-continue', `${CHARGE}${H}Expect: 200-ok\r\nContent-Length: 0\r\n\r\n`, 417],
  ['a transfer coding before chunked', `${CHARGE}${H}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`, 501]
]

for (const [name, bytes, status] of refused) {
  t.test(`refused: ${name}`, async t => {
    const be = await recordingBackend(t)
    const px = await startProxy(t, be.port, await billingSnapshot())
    // checkout may POST /api/v1/charge: only the head rules stand between it and the backend
    const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
    c.write(bytes)
    const r = await c.response()
    t.equal(r?.status, status, 'status')
    t.equal(r?.headers.connection, 'close')
    t.ok(await c.waitClose(), 'connection closed')
    t.equal(be.received(), '', 'backend received nothing')
    t.match(px.logs.find(l => l.msg === 'http request'), { verdict: 'rejected', status, level: 40 }, 'logged as rejected')
  })
}

/** The one request head the backend got (everything up to CRLFCRLF) and what followed. */
function split (raw: string): { head: string, rest: string } {
  const end = raw.indexOf('\r\n\r\n')
  return { head: raw.slice(0, end + 4), rest: raw.slice(end + 4) }
}

t.test('Content-Length with leading zeros goes upstream as the number the parser read', async t => {
  const be = await recordingBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write(`${CHARGE}${H}Content-Length: 005\r\n\r\nabcde`)
  t.equal((await c.response())?.status, 200)
  const { head, rest } = split(be.received())
  t.match(head, /\r\nContent-Length: 5\r\n/)
  t.notMatch(head, /005/)
  t.equal(rest, 'abcde')
})

t.test('a chunked request goes upstream with one Transfer-Encoding: chunked and no Content-Length', async t => {
  const be = await recordingBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write(`${CHARGE}${H}transfer-encoding: Chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n`)
  t.equal((await c.response())?.status, 200)
  const { head, rest } = split(be.received())
  t.equal(head.match(/transfer-encoding/gi)?.length, 1)
  t.match(head, /\r\nTransfer-Encoding: chunked\r\n/)
  t.notMatch(head, /content-length/i)
  t.equal(rest, '3\r\nabc\r\n0\r\n\r\n', 'body re-chunked from what the parser read; extensions and trailers not forwarded')
})

t.test('fields listed in Connection, and Connection itself, are not forwarded', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write(`${CHARGE}${H}Connection: X-Hop, keep-alive\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-End: kept\r\nContent-Length: 2\r\n\r\nhi`)
  t.equal((await c.response())?.status, 200)
  const seen = be.requests[0]
  t.equal(seen?.headers['x-hop'], undefined, 'the listed field is gone')
  t.equal(seen?.headers['keep-alive'], undefined, 'Keep-Alive is gone')
  t.equal(seen?.headers['x-end'], 'kept', 'an end-to-end field stays')
  t.equal(seen?.body, 'hi')
})

t.test('an Upgrade field on a request that is no upgrade is not forwarded', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write(`${CHARGE}${H}Upgrade: h2c\r\nContent-Length: 0\r\n\r\n`)
  t.equal((await c.response())?.status, 200)
  t.equal(be.requests[0]?.headers.upgrade, undefined)
})

t.test('after a refused head, the pooled upstream connection serves the next client normally', async t => {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot())
  const ok = `${CHARGE}${H}Content-Length: 2\r\n\r\nok`
  const a = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  a.write(ok + `${CHARGE}${H}Transfer-Encoding: \r\nContent-Length: 60\r\n\r\n` + `DELETE /api/v1/charge HTTP/1.1\r\n${H}Content-Length: 0\r\n\r\n`.padEnd(60, 'x'))
  t.equal((await a.response())?.status, 200)
  t.equal((await a.response())?.status, 400)
  const b = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  b.write(ok)
  t.equal((await b.response())?.status, 200, 'next client')
  t.strictSame(be.requests.map(r => r.method), ['POST', 'POST'], 'the backend never saw a DELETE')
})

t.test('a response with an empty Transfer-Encoding is never relayed: 502', async t => {
  const conns = new Set<net.Socket>()
  const srv = net.createServer(s => {
    conns.add(s)
    s.once('data', () => { s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\nContent-Length: 2\r\n\r\nok') })
  })
  await new Promise<void>(resolve => srv.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { for (const s of conns) s.destroy(); await new Promise(resolve => srv.close(resolve)) })
  const px = await startProxy(t, (srv.address() as net.AddressInfo).port, await billingSnapshot())
  const c = await RawClient.connect(t, px.port, ADDR.CHECKOUT)
  c.write(`${CHARGE}${H}Content-Length: 0\r\n\r\n`)
  const r = await c.response()
  t.equal(r?.status, 502)
  t.notMatch(r?.head ?? '', /Transfer-Encoding/i, 'not one byte of the upstream head')
  t.equal(px.proxy.metrics().upstream_errors_bad_response, 1)
})
