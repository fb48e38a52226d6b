// The HTTP field matchers must decide exactly as RE2's full match does (Cilium's semantics),
// whatever shortcut they take before or instead of the engine: a shortcut that said yes where
// RE2 says no would let a request through that the policy denies. Pure: no sockets, no root.
import t from 'tap'
import fc from 'fast-check'
import RE2 from 're2'
import { compileFullMatch, literalPrefix } from '../../policy-store/src/matchers.js'

const PATTERNS = [
  // literal prefix + digit tails (decided without the engine)
  '/api/v1/s99/r9/[0-9]+', '/api/v1/users/[0-9]*', '/orders/\\d+', '/x/\\d*',
  // literal prefix, then the engine
  '/api/v1/users/[0-9]+/orders', '/api/v[0-9]+/charge', '/api/v1/(invoices|charges)/[a-z]+', '/ab+c', '/ab?c',
  '/ab*c', '/a{2}b', '/a{2,}', '/files/.*\\.txt', '/é/[0-9]+', 'GET|POST', 'P(UT|OST)', '(?i)/api/v1', '/api(?i)/V1',
  // no literal start
  '[A-Z]+', '.*/admin', '\\d+', '(/a)?/b',
  // the literal and `literal.*` shortcuts that predate this
  '/healthz', '/api/v1/invoices/.*', ''
]

/** Values near each pattern: its literal start with tails drawn from characters that matter here. */
const tailChars = fc.constantFrom(...'0123456789/abcAB.\n éxtTU-_'.split(''))
const tail = fc.array(tailChars, { maxLength: 8 }).map(a => a.join(''))

t.test('every matcher agrees with RE2 full match, on values near and far from the pattern', async t => {
  for (const p of PATTERNS) {
    const re = new RE2('^(?:' + p + ')$', 'u')
    const m = compileFullMatch(p)
    const prefix = literalPrefix(p)
    const value = fc.oneof(
      tail.map(s => prefix + s),
      tail.map(s => prefix.slice(0, Math.max(0, prefix.length - 1)) + s),
      fc.string(),
      fc.fullUnicodeString({ maxLength: 12 }).map(s => prefix + s)
    )
    let disagreed = ''
    fc.assert(fc.property(value, v => {
      const ok = m.test(v) === re.test(v)
      if (!ok && disagreed === '') disagreed = JSON.stringify(v)
      return ok
    }), { numRuns: 1500 })
    t.equal(disagreed, '', `${p}: same answers as RE2`)
  }
})

t.test('fixed cases a wrong shortcut would get wrong', async t => {
  const m = (p: string, v: string): boolean => compileFullMatch(p).test(v)
  t.equal(m('/api/v1/s99/r9/[0-9]+', '/api/v1/s99/r9/4242'), true)
  t.equal(m('/api/v1/s99/r9/[0-9]+', '/api/v1/s99/r9/'), false, '+ needs one digit')
  t.equal(m('/api/v1/users/[0-9]*', '/api/v1/users/'), true, '* takes none')
  t.equal(m('/orders/\\d+', '/orders/12a'), false)
  t.equal(m('/orders/\\d+', '/orders/\u0664\u0662'), false, 'Arabic-Indic digits are not \\d in RE2')
  t.equal(m('/orders/\\d+', '/orders/12\n'), false)
  t.equal(m('/ab*c', '/ac'), true, 'a quantified last character is not part of the required start')
  t.equal(m('/ab?c', '/ac'), true)
  t.equal(m('GET|POST', 'POST'), true, 'an alternation has no required start')
  t.equal(m('/api(?i)/V1', '/api/v1'), true, 'inline flags after the start')
  t.equal(m('(?i)/API/v1', '/api/V1'), true)
})

t.test('literalPrefix: the text every match starts with', async t => {
  t.equal(literalPrefix('/api/v1/users/[0-9]+'), '/api/v1/users/')
  t.equal(literalPrefix('/ab*c'), '/a')
  t.equal(literalPrefix('/a{2}b'), '/')
  t.equal(literalPrefix('a|b'), '')
  t.equal(literalPrefix('(?i)/x'), '')
  t.equal(literalPrefix('\\d+'), '')
  t.equal(literalPrefix('/x/\\.y'), '/x/')
})
