// The llhttp adapter alone, without sockets: every head arrives whole whatever path the
// binding takes, trailers arrive at message complete, and destroying the parser from inside
// its own callbacks (execute or finish) is safe.
import t from 'tap'
import { Parser, type ParserHandler } from '../../../proxy/src/http/llhttp.js'

interface Seen { heads: Array<{ url: string, status: number, headers: string[] }>, bodies: string[], trailers: string[][] }

function recorder (onComplete?: (p: Parser) => void): { handler: ParserHandler, seen: Seen, bind (p: Parser): void } {
  const seen: Seen = { heads: [], bodies: [], trailers: [] }
  let parser: Parser | null = null
  const handler: ParserHandler = {
    onMessageBegin () {},
    onHeadersComplete (_ma, _mi, headers, _m, url, status) { seen.heads.push({ url, status, headers }); return 0 },
    onBody (chunk) { seen.bodies.push(chunk.toString('latin1')) },
    onMessageComplete (trailers) { seen.trailers.push(trailers); if (onComplete !== undefined && parser !== null) onComplete(parser) }
  }
  return { handler, seen, bind (p) { parser = p } }
}

function fields (n: number): string {
  let s = ''
  for (let i = 0; i < n; i++) s += `X-F${i}: ${i}\r\n`
  return s
}

t.test('requests: more than 32 fields, and every head after trailers, arrive whole with their URL', async t => {
  const r = recorder()
  const p = new Parser('request', 65536, r.handler)
  const msgs = 'POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-T: 1\r\n\r\n' +
    'GET /b HTTP/1.1\r\nHost: h\r\n\r\n' +
    `GET /c HTTP/1.1\r\nHost: h\r\n${fields(40)}\r\n`
  t.equal(p.execute(Buffer.from(msgs, 'latin1')), msgs.length)
  t.strictSame(r.seen.heads.map(h => h.url), ['/a', '/b', '/c'])
  t.equal(r.seen.heads[2].headers.length, 82, 'Host and 40 fields')
  t.equal(r.seen.heads[2].headers[81], '39')
  t.strictSame(r.seen.heads[1].headers, ['Host', 'h'])
  t.strictSame(r.seen.trailers, [['X-T', '1'], [], []])
  p.destroy()
})

t.test('responses: the head after a response with trailers keeps its fields', async t => {
  const r = recorder()
  const p = new Parser('response', 65536, r.handler)
  const msgs = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: 1\r\n\r\n' +
    'HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n'
  t.equal(p.execute(Buffer.from(msgs, 'latin1')), msgs.length)
  t.strictSame(r.seen.heads.map(h => [h.status, h.headers]), [[200, ['Transfer-Encoding', 'chunked']], [201, ['Transfer-Encoding', 'chunked']]])
  t.strictSame(r.seen.bodies, ['a', 'b'])
  p.destroy()
})

t.test('destroyed from inside finish(): freed after finish returns, the process lives', async t => {
  for (let i = 0; i < 50; i++) {
    const r = recorder(p => { p.destroy() })
    const p = new Parser('response', 65536, r.handler)
    r.bind(p)
    p.execute(Buffer.from('HTTP/1.0 200 OK\r\n\r\nuntil close', 'latin1'))
    t.equal(p.finish(), null)
    t.equal(p.finish(), null, 'a destroyed parser ignores further calls')
    t.equal(p.execute(Buffer.from('x')), 0)
  }
  t.pass('alive')
})

t.test('destroyed from inside execute(): the rest of the call is safe', async t => {
  for (let i = 0; i < 50; i++) {
    const r = recorder(p => { p.destroy() })
    const p = new Parser('request', 65536, r.handler)
    r.bind(p)
    p.execute(Buffer.from('GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n', 'latin1'))
    t.equal(p.execute(Buffer.from('x')), 0)
  }
  t.pass('alive')
})
