// Path normalisation (the exact rules are in proxy/src/http/normalize.ts and the README).
import t from 'tap'
import { normalizeTarget, normalizeTargetSlow } from '../../../proxy/src/http/normalize.js'

const cases: Array<[string, string | null]> = [
  ['/api/v1/charge', '/api/v1/charge'],
  ['/api/v1/invoices/../charge', '/api/v1/charge'],
  ['/api/v1/invoices/./1', '/api/v1/invoices/1'],
  ['/api/v1/invoices/%2e%2e/charge', '/api/v1/charge'],
  ['/api/v1/invoices/%2E%2E/charge', '/api/v1/charge'],
  ['/api/v1/invoices/.%2e/charge', '/api/v1/charge'],
  ['/api//v1///charge', '/api/v1/charge'],
  ['//api/v1/charge', '/api/v1/charge'],
  ['/../../etc/passwd', '/etc/passwd'],
  ['/a/b/..', '/a/'],
  ['/a/.', '/a/'],
  ['/a/', '/a/'],
  ['/', '/'],
  ['/%61%70%69', '/api'],
  ['/a%3ab', '/a%3Ab'],
  ['/a%20b', '/a%20b'],
  ['/%252e%252e/x', '/%252e%252e/x'],
  ['/a/../b?x=/../y', '/b?x=/../y'],
  ['/healthz?probe=1', '/healthz?probe=1'],
  ['/a%2fb', null],
  ['/a%2Fb', null],
  ['/a%5cb', null],
  ['/a\\b', null],
  ['/a%zzb', null],
  ['/a%2', null],
  ['/a#frag', null],
  ['/a\u00e9', null],
  ['relative', null],
  ['', null]
]

for (const [input, want] of cases) {
  t.equal(normalizeTarget(input), want, JSON.stringify(input))
}

t.test('idempotent: normalising twice changes nothing', async t => {
  for (const [input, want] of cases) if (want !== null) t.equal(normalizeTarget(want), want, input)
})

// The regex fast path must agree with the character-by-character rules on every input.
t.test('fast path and slow path agree (property)', async t => {
  const { default: fc } = await import('fast-check')
  const alphabet = ['/', '/', '/', '.', '.', '%', '2', 'e', 'E', 'f', 'F', 'c', '#', '\\', '?', '=', '&', 'a', 'Z', '0', '-', '~', ' ', '\x7f', '\x01', '\u00e9', ':', '@']
  const target = fc.array(fc.constantFrom(...alphabet), { maxLength: 24 }).map(cs => cs.join(''))
  fc.assert(fc.property(fc.oneof(target, target.map(s => '/' + s)), (s) => normalizeTarget(s) === normalizeTargetSlow(s)), { numRuns: 20000 })
  t.pass('20000 random targets agree')
})
