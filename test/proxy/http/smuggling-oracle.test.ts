// The smuggling harness's own oracle, without sockets: the backend interpretations find what a
// desynchronising proxy would let through, agree on canonical messages, and the response reader
// tells corrupted, cut-short and unsolicited responses from clean ones.
import t from 'tap'
import { forbiddenIn, parseRequests, parseResponses, INTERPRETATIONS } from '../../helpers/smuggling/parse.js'
import { CORPUS, SMUGGLED, normalEcho } from '../../helpers/smuggling/corpus.js'
import { checkExactly, checkResponses } from '../../helpers/smuggling/harness.js'

const H = 'Host: billing-service\r\n'

t.test('canonical forwarding of every clean corpus case reads the same under every interpretation', async t => {
  const clean = CORPUS.filter(c => c.forward !== undefined)
  t.ok(clean.length >= 8, `${clean.length} clean cases`)
  for (const c of clean) {
    // what a correct proxy sends: one canonical message per request it judged
    const bytes = (c.forward ?? []).map(f => `${f.method} ${f.target} HTTP/1.1\r\n${H}${(f.headers ?? []).map(([k, v]) => `${k}: ${v}\r\n`).join('')}Content-Length: ${Buffer.byteLength(f.body, 'latin1')}\r\n\r\n${f.body}`).join('')
    t.strictSame(forbiddenIn(bytes), [], `${c.name}: nothing forbidden`)
    for (const i of INTERPRETATIONS) {
      const r = parseRequests(bytes, i)
      t.equal(r.error, undefined, `${c.name}: ${i} reads it`)
      t.strictSame(r.requests.map(q => q.body), (c.forward ?? []).map(f => f.body), `${c.name}: ${i} reads the same bodies`)
    }
  }
})

t.test('the issue\'s empty Transfer-Encoding desync is found', async t => {
  // what today's proxy forwards for the corpus's aligned case: the empty TE and the original
  // CL, the body re-chunked one chunk per read (the client wrote 40 small reads, then the rest)
  const c = CORPUS.find(x => x.name === 'blank TE (empty) with CL, body over many reads')
  if (c === undefined) throw new Error('no such case')
  const [head, ...pieces] = c.segments
  const forwarded = head + pieces.map(p => `${p.length.toString(16)}\r\n${p}\r\n`).join('') + '0\r\n\r\n'
  const found = (b: string, interp: string): boolean => forbiddenIn(b).some(f => f.interp === interp && f.request === 'DELETE /api/v1/charge HTTP/1.1')
  t.ok(found(forwarded, 'cl-wins'), 'a Content-Length backend reads the hidden DELETE')
  t.ok(parseRequests(forwarded, 'strict').error !== undefined, 'strict refuses TE with CL')
  // had the proxy coalesced the reads into fewer chunks, the cut still lands in the CRLF sled
  const fewer = head + [pieces.slice(0, 20).join(''), ...pieces.slice(20)].map(p => `${p.length.toString(16)}\r\n${p}\r\n`).join('') + '0\r\n\r\n'
  t.ok(found(fewer, 'cl-wins'), 'also with 21 chunks')
  // with the tail exactly where a CL backend stops: aligned so the DELETE is read
  const aligned = `POST /api/v1/charge HTTP/1.1\r\n${H}Content-Length: 4\r\n\r\n` + `${SMUGGLED.length.toString(16)}\r\n${SMUGGLED}\r\n0\r\n\r\n`
  t.ok(found(aligned, 'strict'), 'TE.CL shape read by a CL backend')
})

t.test('interpretations disagree where servers do', async t => {
  const clte = `POST /api/v1/charge HTTP/1.1\r\n${H}Content-Length: ${5 + SMUGGLED.length}\r\nTransfer-Encoding: xchunked, chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`
  const byInterp = (b: string): string[] => [...new Set(forbiddenIn(b).map(f => f.interp))].sort()
  t.strictSame(byInterp(clte), ['lenient', 'strtol-cl', 'te-anywhere'], 'readers that take chunked last (or anywhere) smuggle; CL readers and strict do not')
  const underscore = `POST /api/v1/charge HTTP/1.1\r\n${H}Content_Length: ${SMUGGLED.length}\r\n\r\n`
  t.strictSame(forbiddenIn(underscore + 'POST /api/v1/charge HTTP/1.1\r\n' + H + 'Content-Length: 0\r\n\r\n'), [], 'no forbidden request in allowed bytes')
  t.equal(parseRequests(underscore + SMUGGLED, 'lenient').requests.length, 1, 'lenient folds Content_Length: the DELETE is a body')
  t.equal(parseRequests(underscore + SMUGGLED, 'strict').requests.length, 2, 'strict reads two requests')
  const octal = `POST /api/v1/charge HTTP/1.1\r\n${H}Content-Length: 010\r\n\r\n12345678GET /admin HTTP/1.1\r\n${H}\r\n`
  t.strictSame(forbiddenIn(octal.slice(0, octal.indexOf('GET') + 2)), [], 'an incomplete request is no finding')
  t.equal(parseRequests(octal.slice(0, octal.indexOf('GET') + 2), 'strtol-cl').incomplete, true, 'the octal reader waits for the rest of "GE"')
  t.strictSame(byInterp(`POST /api/v1/charge HTTP/1.1\r\n${H}Content-Length: 0100\r\n\r\n${'x'.repeat(64)}GET /admin HTTP/1.1\r\nHost: bbbbb\r\n\r\n`), ['strtol-cl'], 'leading zeros: only the strtol reader smuggles')
  t.strictSame(byInterp(`GET /admin\r\n\r\n`), ['cl-wins', 'last-cl', 'lenient', 'strtol-cl', 'te-anywhere'], 'HTTP/0.9 only lenient readers')
  t.strictSame(byInterp(`POST /api/v1/charge HTTP/1.1\n${H}Content-Length: 0\r\n\r\n`), [], 'bare LF: allowed request is no finding')
})

t.test('response reader', async t => {
  const ok = (b: string): string => `HTTP/1.1 200 OK\r\nContent-Length: ${b.length}\r\n\r\n${b}`
  const e = normalEcho('m')
  const clean = { bytes: ok(e), closed: false, reset: false, error: '', localPort: 0 }
  t.strictSame(checkExactly(clean, 'm', 'c'), [], 'a clean answer passes')
  t.not(checkExactly({ ...clean, bytes: ok(e) + ok('unsolicited-response') }, 'm', 'c').length, 0, 'an extra response fails')
  t.not(checkExactly({ ...clean, bytes: ok(e).slice(0, -3) }, 'm', 'c').length, 0, 'a cut-short response fails')
  t.not(checkExactly({ ...clean, bytes: ok(e) + 'xyz' }, 'm', 'c').length, 0, 'garbage after the response fails')
  t.not(checkResponses({ ...clean, bytes: ok('saw DELETE /api/v1/charge body=""') }, 'c').length, 0, 'an answer to a forbidden request fails')
  const chunked = `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n` + ok('next')
  t.strictSame(parseResponses(chunked, false).responses.map(r => r.body), ['abc', 'next'], 'chunked with trailers then the next response')
  t.strictSame(parseResponses('HTTP/1.0 200 OK\r\n\r\nuntil close', true).responses.map(r => r.body), ['until close'], 'close-delimited')
  t.equal(parseResponses('HTTP/1.0 200 OK\r\n\r\nuntil close', false).truncated, true, 'close-delimited, not closed yet')
})

t.test('corpus shape', async t => {
  const names = new Set(CORPUS.map(c => c.name))
  t.equal(names.size, CORPUS.length, 'case names are unique')
  t.ok(CORPUS.length >= 100, `${CORPUS.length} cases`)
  for (const c of CORPUS) t.ok(c.segments.length > 0 && c.source !== '', `${c.name} has bytes and a source`)
})
