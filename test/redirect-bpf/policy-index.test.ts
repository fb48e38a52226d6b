// PolicyIndex, the desired l7p_policy content that diffs are applied to: after any sequence of
// entries added and removed, it holds what compiling the remaining entries at once gives. An
// entry is its endpoint, direction, peer, protocol and port range: added again with another
// verdict it is replaced (the compiler lists a changed verdict as an addition only), and a
// removal counts only when the entry is there with that verdict.
import t from 'tap'
import fc from 'fast-check'
import { compilePolicy, PolicyIndex } from '../../redirect-bpf/src/policy.js'
import { decodePolicyKey, decodePolicyValue, VERDICT } from '../../redirect-bpf/src/layout.js'
import type { KernelEntry, ProtocolNumber, Verdict } from '../../policy-store/src/types.js'
import { entry } from '../helpers/lab-snapshot.js'

const entryArb = fc.record({
  endpointId: fc.constantFrom(1, 2),
  direction: fc.constantFrom<0 | 1>(0, 1),
  remoteIdentity: fc.constantFrom(0, 2, 300),
  protocol: fc.constantFrom<ProtocolNumber>(0, 6, 17),
  port: fc.integer({ min: 1, max: 40 }),
  span: fc.integer({ min: 0, max: 20 }),
  verdict: fc.constantFrom<Verdict>('allow', 'deny', 'redirect-http', 'redirect-dns')
}).map(({ span, ...e }): KernelEntry => e.protocol === 0
  ? { ...e, port: 0, endPort: 0 }
  : { ...e, endPort: e.port + span })

const idOf = (e: KernelEntry): string => `${e.endpointId}|${e.direction}|${e.remoteIdentity}|${e.protocol}|${e.port}|${e.endPort}`

t.test('adds and removes in any order give the content of the remaining entries', async (t) => {
  fc.assert(fc.property(fc.array(entryArb, { maxLength: 30 }), fc.array(fc.tuple(fc.boolean(), fc.nat()), { maxLength: 40 }), (pool, ops) => {
    const index = new PolicyIndex()
    const live = new Map<string, KernelEntry>()
    for (const [add, i] of ops) {
      if (pool.length === 0) break
      const e = pool[i % pool.length]
      if (add) {
        index.add(e)
        live.set(idOf(e), e)
      } else {
        index.remove(e)
        if (live.get(idOf(e))?.verdict === e.verdict) live.delete(idOf(e))
      }
    }
    t.strictSame(index.toMap(), compilePolicy([...live.values()]))
  }), { numRuns: 300 })
})

t.test('a changed verdict replaces the entry, in either order of a diff that lists it both ways', async (t) => {
  const allow = entry(1, 0, 300, 6, 80, 'allow')
  const deny = entry(1, 0, 300, 6, 80, 'deny')
  const a = new PolicyIndex([allow])
  a.add(deny)
  t.strictSame(a.toMap(), compilePolicy([deny]), 'added only: replaced')
  const b = new PolicyIndex([allow])
  b.remove(allow)
  b.add(deny)
  t.strictSame(b.toMap(), compilePolicy([deny]), 'removed, then added')
  const c = new PolicyIndex([allow])
  c.add(deny)
  c.remove(allow)
  t.strictSame(c.toMap(), compilePolicy([deny]), 'added, then the old one removed: nothing more changes')
})

t.test('overlapping entries on one key: the strongest verdict left holds it', async (t) => {
  // port 80 alone, written with and without endPort: two entries, one map key
  const allow = entry(1, 0, 300, 6, 80, 'allow')
  const deny = entry(1, 0, 300, 6, 80, 'deny', 80)
  const touched = new Set<string>()
  const index = new PolicyIndex([allow])
  index.add(deny, touched)
  t.equal(touched.size, 1, 'the diff touched one key')
  const [k] = touched
  t.equal(decodePolicyValue(Buffer.from(index.value(k) as string, 'latin1')).verdict, VERDICT.DENY)
  index.remove(deny)
  t.equal(decodePolicyValue(Buffer.from(index.value(k) as string, 'latin1')).verdict, VERDICT.ALLOW, 'the allow is back, not a hole')
  index.remove(deny)
  t.equal(decodePolicyValue(Buffer.from(index.value(k) as string, 'latin1')).verdict, VERDICT.ALLOW, 'removing what is not there changes nothing')
  index.remove(allow)
  t.equal(index.value(k), undefined)
  t.match(decodePolicyKey(Buffer.from(k, 'latin1')), { endpointId: 1, identity: 300, protocol: 6, port: 80, portPrefix: 16 })
})
