// Unit tests of the strict wire parser and of Cilium's name patterns (no network).
import t from 'tap'
import dnsPacket from 'dns-packet'
import fc from 'fast-check'
import { errorReply, parseQuestion, sameQuestion, walkAnswers, WIRE_ERR, type NameCursor } from '../../../proxy/src/dns/wire.js'
import RE2 from 're2'
import { compileNameMatcher, isPlainFqdn, matchPatternSource } from '../../../proxy/src/dns/matchpattern.js'

const cur: NameCursor = { name: '', end: 0 }

function header (qd: number, an = 0, ns = 0, ar = 0, flags = 0x0100): Buffer {
  const h = Buffer.alloc(12)
  h.writeUInt16BE(0x1234, 0); h.writeUInt16BE(flags, 2)
  h.writeUInt16BE(qd, 4); h.writeUInt16BE(an, 6); h.writeUInt16BE(ns, 8); h.writeUInt16BE(ar, 10)
  return h
}
const Q_A_IN = Buffer.from([0, 1, 0, 1])

t.test('questions: canonical names', async t => {
  const q = parseQuestion(dnsPacket.encode({ type: 'query', id: 1, questions: [{ type: 'A', name: 'API.GitHub.COM' }] }), cur)
  t.match(q, { name: 'api.github.com.', type: 1, cls: 1 })
  const root = parseQuestion(Buffer.concat([header(1), Buffer.from([0]), Q_A_IN]), cur)
  t.match(root, { name: '.' })
  // One label "api.github" + "com" must not read as api.github.com.
  const dotted = Buffer.concat([header(1), Buffer.from([10]), Buffer.from('api.github'), Buffer.from([3]), Buffer.from('com'), Buffer.from([0]), Q_A_IN])
  t.match(parseQuestion(dotted, cur), { name: 'api\\.github.com.' })
  const bin = Buffer.concat([header(1), Buffer.from([3, 0x61, 0x00, 0xff, 3]), Buffer.from('com'), Buffer.from([0]), Q_A_IN])
  t.match(parseQuestion(bin, cur), { name: 'a\\000\\255.com.' })
})

t.test('questions: malformed ones are errors, never exceptions', async t => {
  const cases: [string, Buffer, number][] = [
    ['short header', Buffer.alloc(5), WIRE_ERR.SHORT],
    ['two questions', Buffer.concat([header(2), Buffer.from([1, 0x61, 0]), Q_A_IN, Buffer.from([1, 0x62, 0]), Q_A_IN]), WIRE_ERR.COUNTS],
    ['no question', header(0), WIRE_ERR.COUNTS],
    ['pointer in a question', Buffer.concat([header(1), Buffer.from([0xc0, 12]), Q_A_IN]), WIRE_ERR.BAD_POINTER],
    ['extended label type', Buffer.concat([header(1), Buffer.from([0x41, 0]), Q_A_IN]), WIRE_ERR.BAD_LABEL],
    ['label past the end', Buffer.concat([header(1), Buffer.from([40, 0x61])]), WIRE_ERR.SHORT],
    ['no terminator', Buffer.concat([header(1), Buffer.from([1, 0x61])]), WIRE_ERR.SHORT],
    ['no type/class', Buffer.concat([header(1), Buffer.from([1, 0x61, 0, 0])]), WIRE_ERR.SHORT],
    ['name over 255 bytes', Buffer.concat([header(1), ...Array.from({ length: 5 }, () => Buffer.concat([Buffer.from([63]), Buffer.alloc(63, 0x61)])), Buffer.from([0]), Q_A_IN]), WIRE_ERR.NAME_TOO_LONG]
  ]
  for (const [what, buf, code] of cases) t.equal(parseQuestion(buf, cur), code, what)
})

function response (answers: object[], extra?: (b: Buffer) => Buffer): Buffer {
  const b = dnsPacket.encode({ type: 'response', id: 7, flags: 0x0100, questions: [{ type: 'A', name: 'api.github.com' }], answers: answers as never })
  return extra === undefined ? b : extra(b)
}
const QEND = 12 + 16 + 4

t.test('answers: records framed by RDLENGTH, CNAME chains readable', async t => {
  const ok = walkAnswers(response([
    { type: 'CNAME', name: 'api.github.com', ttl: 30, data: 'lb.github.com' },
    { type: 'A', name: 'lb.github.com', ttl: 20, data: '198.18.53.30' },
    { type: 'TXT', name: 'lb.github.com', ttl: 20, data: 'x' }
  ]), QEND, cur)
  t.strictSame(ok, [
    { owner: 'api.github.com.', type: 5, ttl: 30, data: 'lb.github.com.' },
    { owner: 'lb.github.com.', type: 1, ttl: 20, data: '198.18.53.30' }
  ])
})

t.test('answers: malformed ones are errors', async t => {
  const a = { type: 'A', name: 'api.github.com', ttl: 20, data: '198.18.53.30' }
  // Name of the answer record is a pointer to 12 (the question): 0xc0 0x0c at QEND.
  const selfLoop = response([a], b => { b.writeUInt16BE(0xc000 | QEND, QEND); return b })
  t.equal(walkAnswers(selfLoop, QEND, cur), WIRE_ERR.BAD_POINTER, 'a pointer to itself (compression loop)')
  const forward = response([a], b => { b.writeUInt16BE(0xc000 | (QEND + 4), QEND); return b })
  t.equal(walkAnswers(forward, QEND, cur), WIRE_ERR.BAD_POINTER, 'a forward pointer')
  const counts = response([a], b => { b.writeUInt16BE(2, 6); return b })
  t.equal(walkAnswers(counts, QEND, cur), WIRE_ERR.SHORT, 'more records announced than present')
  const trailing = response([a], b => Buffer.concat([b, Buffer.from([0, 0, 0])]))
  t.equal(walkAnswers(trailing, QEND, cur), WIRE_ERR.TRAILING, 'bytes after the last record')
  const rdlen = response([a], b => { b.writeUInt16BE(8, b.length - 6); return Buffer.concat([b, Buffer.alloc(4)]) })
  t.equal(walkAnswers(rdlen, QEND, cur), WIRE_ERR.RDATA, 'an A record of 8 bytes')
  const cname = response([{ type: 'CNAME', name: 'api.github.com', ttl: 1, data: 'x.com' }], b => { b.writeUInt16BE(b.readUInt16BE(b.length - 9) + 1, b.length - 9); return Buffer.concat([b, Buffer.alloc(1)]) })
  t.equal(walkAnswers(cname, QEND, cur), WIRE_ERR.RDATA, 'CNAME data longer than its name')
})

const wireOf = (ls: number[][]): Buffer => Buffer.concat(ls.map(l => Buffer.from([l.length, ...l])))

/** miekg/dns's rendering, written the obvious way: the reference for readName's fast path. */
function rendered (labels: number[][]): string {
  if (labels.length === 0) return '.'
  const ch = (c: number): string => c < 0x21 || c > 0x7e ? '\\' + String(c).padStart(3, '0')
    : '. \'@;()"\\'.includes(String.fromCharCode(c)) ? '\\' + String.fromCharCode(c)
      : String.fromCharCode(c >= 0x41 && c <= 0x5a ? c + 32 : c)
  return labels.map(l => l.map(ch).join('')).join('.') + '.'
}

t.test('names render like miekg/dns, plain or escaped, through compression pointers', async t => {
  const byte = fc.oneof(fc.constantFrom(0x61, 0x41, 0x5a, 0x7a, 0x30, 0x2d, 0x5f), fc.nat(255))
  const labels = fc.array(fc.array(byte, { minLength: 1, maxLength: 8 }), { maxLength: 4 })
  fc.assert(fc.property(labels, labels, (q, prefix) => {
    const query = Buffer.concat([header(1), wireOf(q), Buffer.from([0]), Q_A_IN])
    const pq = parseQuestion(query, cur)
    if (typeof pq === 'number' || pq.name !== rendered(q)) return false
    // An A record whose owner is `prefix` then a pointer to the question name.
    const rr = Buffer.concat([wireOf(prefix), Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 53, 10])])
    const resp = Buffer.concat([query, rr])
    resp.writeUInt16BE(1, 6)
    const want = rendered([...prefix, ...q])
    const recs = walkAnswers(resp, pq.end, cur)
    // With the question's name given (the proxy's path), the pointer to it reuses that name.
    const reused = walkAnswers(resp, pq.end, cur, pq.name)
    return typeof recs !== 'number' && recs.length === 1 && recs[0].owner === want &&
      typeof reused !== 'number' && reused.length === 1 && reused[0].owner === want
  }), { numRuns: 3000 })
  t.pass('agrees on 3000 names')
  // 3 x 63-byte labels in the question (193 wire bytes) + a 63-byte label before the pointer: 257.
  const long = Buffer.concat([header(1, 1), wireOf(Array.from({ length: 3 }, () => new Array<number>(63).fill(0x61))), Buffer.from([0]), Q_A_IN,
    wireOf([new Array<number>(63).fill(0x62)]), Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 53, 10])])
  const lq = parseQuestion(long, cur)
  if (typeof lq === 'number') throw new Error('parse')
  t.equal(walkAnswers(long, lq.end, cur), WIRE_ERR.NAME_TOO_LONG, 'an owner over 255 bytes through a pointer')
  t.equal(walkAnswers(long, lq.end, cur, lq.name), WIRE_ERR.NAME_TOO_LONG, 'also when the question name is reused')
})

t.test('names and addresses made before are reused only when their bytes are the same', async t => {
  // More names and addresses than the caches' 1024 slots, so slots collide and are replaced;
  // asked in two passes, each answer checked against its own rendering.
  const names = Array.from({ length: 3000 }, (_, i) => `n${i}.Example${i % 7}.com`)
  const expect = (n: string): string => n.toLowerCase() + '.'
  for (let pass = 0; pass < 2; pass++) {
    let bad = 0
    for (let i = 0; i < names.length; i++) {
      const ip = `${(i * 7) & 255}.${(i >> 3) & 255}.${i & 255}.${(i * 13) & 255}`
      const resp = dnsPacket.encode({ type: 'response', id: 1, questions: [{ type: 'A', name: names[i] }], answers: [{ type: 'A', name: names[i], ttl: 60, data: ip }] })
      const q = parseQuestion(resp, cur)
      if (typeof q === 'number' || q.name !== expect(names[i])) { bad++; continue }
      const recs = walkAnswers(resp, q.end, cur)
      if (typeof recs === 'number' || recs.length !== 1 || recs[0].owner !== q.name || recs[0].data !== ip) bad++
    }
    t.equal(bad, 0, `pass ${pass + 1}: ${names.length} names and addresses`)
  }
  // Same length, same slot or not: only equal bytes give the cached string.
  const a = parseQuestion(dnsPacket.encode({ type: 'query', id: 1, questions: [{ type: 'A', name: 'ab.com' }] }), cur)
  const b = parseQuestion(dnsPacket.encode({ type: 'query', id: 1, questions: [{ type: 'A', name: 'ba.com' }] }), cur)
  const a2 = parseQuestion(dnsPacket.encode({ type: 'query', id: 1, questions: [{ type: 'A', name: 'AB.com' }] }), cur)
  t.match([a, b, a2], [{ name: 'ab.com.' }, { name: 'ba.com.' }, { name: 'ab.com.' }])
})

t.test('the parser is total on random and mutated input', async t => {
  const valid = response([{ type: 'CNAME', name: 'api.github.com', ttl: 30, data: 'lb.github.com' }, { type: 'A', name: 'lb.github.com', ttl: 20, data: '198.18.53.30' }])
  fc.assert(fc.property(fc.uint8Array({ maxLength: 600 }), fc.array(fc.tuple(fc.nat(valid.length - 1), fc.nat(255)), { maxLength: 8 }), (rand, muts) => {
    const b1 = Buffer.from(rand)
    parseQuestion(b1, cur)
    if (b1.length >= 12) walkAnswers(b1, 12, cur)
    const b2 = Buffer.from(valid)
    for (const [i, v] of muts) b2[i] = v
    const q = parseQuestion(b2, cur)
    if (typeof q !== 'number') walkAnswers(b2, q.end, cur)
  }), { numRuns: 3000 })
  t.pass('no exception in 3000 runs')
})

t.test('errorReply echoes the question with the rcode; sameQuestion ignores case only', async t => {
  const qb = dnsPacket.encode({ type: 'query', id: 42, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name: 'api.github.com' }] })
  const q = parseQuestion(qb, cur)
  if (typeof q === 'number') throw new Error('parse')
  const r = dnsPacket.decode(errorReply(qb, q.end, 5))
  t.match(r, { id: 42, type: 'response', rcode: 'REFUSED', flag_rd: true, questions: [{ name: 'api.github.com', type: 'A' }], answers: [] })
  const upper = dnsPacket.encode({ type: 'response', id: 1, questions: [{ type: 'A', name: 'API.GITHUB.COM' }] })
  t.ok(sameQuestion(qb, q.end, upper))
  const other = dnsPacket.encode({ type: 'response', id: 1, questions: [{ type: 'AAAA', name: 'api.github.com' }] })
  t.notOk(sameQuestion(qb, q.end, other))
})

t.test("Cilium's matchName / matchPattern semantics", async t => {
  const cases: [{ matchName?: string, matchPattern?: string }, string, boolean][] = [
    [{ matchName: 'API.github.com' }, 'api.github.com.', true],
    [{ matchName: 'api.github.com.' }, 'api.github.com.', true],
    [{ matchName: 'api.github.com' }, 'xapi.github.com.', false],
    [{ matchPattern: '*' }, 'a.b.c.', true],
    [{ matchPattern: '*' }, '.', true],
    [{ matchPattern: '*' }, 'api\\.github.com.', false],
    [{ matchPattern: '*.example.com' }, 'a.example.com.', true],
    [{ matchPattern: '*.example.com' }, 'example.com.', false],
    [{ matchPattern: '*.example.com' }, 'a.b.example.com.', false],
    [{ matchPattern: '*example.com' }, 'example.com.', true],
    [{ matchPattern: '*example.com' }, 'myexample.com.', true],
    [{ matchPattern: '**.example.com' }, 'a.b.example.com.', true],
    [{ matchPattern: '**.example.com' }, 'example.com.', false],
    [{ matchPattern: 'a*z.example.com' }, 'a-_9z.example.com.', true],
    [{ matchPattern: 'api.github.com' }, 'apixgithub.com.', false]
  ]
  for (const [sel, name, want] of cases) t.equal(compileNameMatcher(sel).test(name), want, `${JSON.stringify(sel)} ${name}`)
})

t.test("the RE2-free `*` matcher accepts exactly what Cilium's `*` regex accepts", async t => {
  const re = new RE2('^(?:' + matchPatternSource('*') + ')$', 'u')
  const label = fc.stringOf(fc.constantFrom('a', 'Z', '0', '-', '_', '.', '*', ' ', '\\', 'é'), { maxLength: 6 })
  fc.assert(fc.property(fc.array(label, { maxLength: 4 }).map(ls => ls.join('.')), fc.boolean(), (n, dot) => {
    const name = dot ? n + '.' : n
    return isPlainFqdn(name) === re.test(name)
  }), { numRuns: 5000 })
  t.pass('agrees on 5000 names')
})
