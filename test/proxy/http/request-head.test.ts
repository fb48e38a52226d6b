// The request-head rules without sockets: parsed head in, canonical forwardable head or a
// refusal out.
import t from 'tap'
import { canonicalRequest, ForwardRequest, Framing, REFUSE, type ParsedRequestHead } from '../../../proxy/src/http/request-head.js'

function head (fields: string[], over: Partial<ParsedRequestHead> = {}): ParsedRequestHead {
  return { major: 1, minor: 1, method: 'POST', url: '/api', headers: ['Host', 'billing', ...fields], upgrade: false, keepAlive: true, ...over }
}

function run (h: ParsedRequestHead): { out: ForwardRequest, refused: ReturnType<typeof canonicalRequest> } {
  const out = new ForwardRequest()
  return { out, refused: canonicalRequest(h, 100, out) }
}

t.test('refusals', async t => {
  const cases: Array<[string, ParsedRequestHead, { status: number, reason: string }]> = [
    ['empty Transfer-Encoding', head(['Transfer-Encoding', '', 'Content-Length', '5']), REFUSE.emptyTransferEncoding],
    ['Content_Length', head(['Content_Length', '5']), REFUSE.framingFieldUnderscore],
    ['TRANSFER_ENCODING', head(['TRANSFER_ENCODING', 'chunked']), REFUSE.framingFieldUnderscore],
    ['HTTP/1.0 + Transfer-Encoding', head(['Transfer-Encoding', 'chunked'], { minor: 0 }), REFUSE.http10TransferEncoding],
    ['two Transfer-Encoding fields', head(['Transfer-Encoding', 'chunked', 'Transfer-Encoding', 'chunked']), REFUSE.transferCoding],
    ['gzip, chunked', head(['Transfer-Encoding', 'gzip, chunked']), REFUSE.transferCoding],
    ['Host a, b', { ...head([]), headers: ['Host', 'a, b'] }, REFUSE.badHost],
    ['Host foo/bar', { ...head([]), headers: ['Host', 'foo/bar'] }, REFUSE.badHost],
    ['Host user@h', { ...head([]), headers: ['Host', 'user@h'] }, REFUSE.badHost],
    ['two Host', head(['Host', 'billing']), REFUSE.duplicateHost],
    ['no Host on 1.1', { ...head([]), headers: [] }, REFUSE.missingHost],
    ['Connection: content-length', head(['Connection', 'content-length', 'Content-Length', '1']), REFUSE.connectionNamesFraming],
    ['Connection: Transfer-Encoding', head(['Connection', 'close, Transfer-Encoding']), REFUSE.connectionNamesFraming],
    ['Connection: host', head(['Connection', 'Host']), REFUSE.connectionNamesFraming],
    ['two Connection fields', head(['Connection', 'close', 'Connection', 'x-a']), REFUSE.badConnection],
    ['Connection with a non-token', head(['Connection', 'a b']), REFUSE.badConnection],
    ['Expect: 200-ok', head(['Expect', '200-ok']), REFUSE.expectation],
    ['Expect twice', head(['Expect', '100-continue', 'Expect', '100-continue']), REFUSE.expectation],
    ['HTTP/0.9', head([], { major: 0, minor: 9 }), REFUSE.http09],
    ['HTTP/2.0', head([], { major: 2, minor: 0 }), REFUSE.httpVersion],
    ['encoded slash in the path', head([], { url: '/a%2Fb' }), REFUSE.pathNotNormalizable],
    ['absolute-form to another host', head([], { url: 'http://evil/x' }), REFUSE.absoluteFormHostMismatch]
  ]
  for (const [name, h, want] of cases) {
    const { refused } = run(h)
    t.strictSame(refused && { status: refused.status, reason: refused.reason }, { status: want.status, reason: want.reason }, name)
  }
})

t.test('Content-Length: the number llhttp read, written by us, after the other fields', async t => {
  const { out, refused } = run(head(['Content-Length', '0007', 'X-A', 'b']))
  t.equal(refused, null)
  t.equal(out.framing, Framing.LENGTH)
  t.equal(out.length, 7)
  t.ok(out.hasBody)
  t.equal(out.head, 'POST /api HTTP/1.1\r\nHost: billing\r\nX-A: b\r\nContent-Length: 7\r\n\r\n')
  t.strictSame(out.headers, ['Host', 'billing', 'X-A', 'b'], 'the fields the policy sees are the forwarded ones')
})

t.test('Content-Length: 0 is kept and means no body', async t => {
  const { out } = run(head(['Content-Length', '0']))
  t.equal(out.framing, Framing.LENGTH)
  t.notOk(out.hasBody)
  t.match(out.head, /\r\nContent-Length: 0\r\n\r\n$/)
})

t.test('chunked: one Transfer-Encoding: chunked, whatever the case the client used', async t => {
  const { out } = run(head(['transfer-encoding', 'CHUNKED']))
  t.equal(out.framing, Framing.CHUNKED)
  t.ok(out.hasBody)
  t.equal(out.head, 'POST /api HTTP/1.1\r\nHost: billing\r\nTransfer-Encoding: chunked\r\n\r\n')
})

t.test('no framing field: no body, nothing added', async t => {
  const { out } = run(head([], { method: 'GET' }))
  t.equal(out.framing, Framing.NONE)
  t.equal(out.head, 'GET /api HTTP/1.1\r\nHost: billing\r\n\r\n')
})

t.test('hop-by-hop fields are removed; the listed ones too', async t => {
  const { out } = run(head(['Connection', 'close, X-Hop', 'X-Hop', '1', 'Keep-Alive', 'timeout=5', 'Proxy-Connection', 'x', 'Upgrade', 'h2c', 'X-E', '2'], { method: 'GET' }))
  t.equal(out.head, 'GET /api HTTP/1.1\r\nHost: billing\r\nX-E: 2\r\n\r\n')
})

t.test('an upgrade keeps Upgrade and says Connection: upgrade', async t => {
  const { out } = run(head(['Connection', 'Upgrade', 'Upgrade', 'websocket'], { method: 'GET', upgrade: true }))
  t.equal(out.head, 'GET /api HTTP/1.1\r\nHost: billing\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n')
})

t.test('an HTTP/1.0 keep-alive request keeps asking for keep-alive', async t => {
  const { out } = run(head(['Connection', 'keep-alive'], { minor: 0, method: 'GET' }))
  t.equal(out.head, 'GET /api HTTP/1.0\r\nHost: billing\r\nConnection: keep-alive\r\n\r\n')
})

t.test('targets: normalised path, absolute-form adds Host, CONNECT authority', async t => {
  t.equal(run(head([], { url: '/a//b/../c' })).out.path, '/a/c')
  // HTTP/1.0 may omit Host (1.1 may not, even with an absolute-form target)
  const abs = run({ ...head([], { url: 'http://billing:8080/x?q', minor: 0, keepAlive: false }), headers: [] })
  t.equal(abs.refused, null)
  t.equal(abs.out.head, 'POST /x?q HTTP/1.0\r\nHost: billing:8080\r\n\r\n')
  t.equal(abs.out.host, 'billing:8080')
  const conn = run({ ...head([], { method: 'CONNECT', url: 'billing:443', upgrade: true }), headers: ['Host', 'billing:443'] })
  t.equal(conn.refused, null)
  t.equal(conn.out.host, 'billing:443')
  t.equal(conn.out.head, 'CONNECT billing:443 HTTP/1.1\r\nHost: billing:443\r\n\r\n')
})

t.test('valid Host forms are accepted', async t => {
  for (const h of ['billing', 'billing:8080', '10.0.0.1:80', '[::1]:8080', 'a-b.c_d', '']) {
    t.equal(run({ ...head([]), headers: ['Host', h] }).refused, null, JSON.stringify(h))
  }
})
