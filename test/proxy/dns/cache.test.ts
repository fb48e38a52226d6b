// The FQDN cache's bound on names per endpoint: a workload allowed `matchPattern: "*"` that
// resolves random names keeps at most maxNamesPerEndpoint of them; those expiring first go,
// a name with a live connection stays as a zombie, other endpoints are unaffected.
import t from 'tap'
import { FqdnCache } from '../../../proxy/src/dns/cache.js'

const opts = { minTtlSec: 0, maxIpsPerName: 10, maxNamesPerEndpoint: 100, maxZombiesPerEndpoint: 1000, zombieGraceMs: 60_000 }
const none = (): boolean => false

function ip (i: number): string { return `198.18.${(i >> 8) & 255}.${i & 255}` }

t.test('random names from one endpoint stay bounded; evictions are counted', async (t) => {
  const c = new FqdnCache(opts)
  let evicted = 0
  for (let i = 0; i < 100_000; i++) {
    const r = c.add('ns/greedy', `r${i}.example.`, [{ ip: ip(i), ttl: 60 + (i % 7) }], 1000 + i, none)
    evicted += r.evicted.length
  }
  t.ok(c.counts().names <= 100, `names kept: ${c.counts().names}`)
  t.equal(evicted, 100_000 - c.counts().ips, 'every IP not kept was reported evicted')
  t.ok(c.namesEvicted >= 100_000 - 100, 'names evicted are counted')
})

t.test('the names expiring first go', async (t) => {
  const c = new FqdnCache({ ...opts, maxNamesPerEndpoint: 8 })
  c.add('ns/a', 'long.example.', [{ ip: ip(1), ttl: 3600 }], 0, none)
  for (let i = 0; i < 20; i++) c.add('ns/a', `short${i}.example.`, [{ ip: ip(100 + i), ttl: 10 }], i, none)
  const names = c.learned(100).map((n) => n.name)
  t.ok(names.includes('long.example.'), 'the long-lived name outlived the churn')
  t.ok(names.includes('short19.example.'), 'the newest name is there')
  t.notOk(names.includes('short0.example.'), 'the oldest short-lived one was evicted')
  t.ok(names.length <= 8)
})

t.test('an evicted name whose IP has a live connection stays allowed as a zombie', async (t) => {
  const c = new FqdnCache({ ...opts, maxNamesPerEndpoint: 2 })
  c.add('ns/a', 'busy.example.', [{ ip: ip(1), ttl: 5 }], 0, none)
  c.add('ns/a', 'b.example.', [{ ip: ip(2), ttl: 50 }], 0, none)
  const r = c.add('ns/a', 'c.example.', [{ ip: ip(3), ttl: 50 }], 1, (x) => x === ip(1))
  t.strictSame(r.zombified.map((e) => e.ip), [ip(1)])
  t.ok(c.learned(2).some((n) => n.name === 'busy.example.'), 'still allowed while the connection lives')
})

t.test('the cap is per endpoint', async (t) => {
  const c = new FqdnCache({ ...opts, maxNamesPerEndpoint: 4 })
  c.add('ns/quiet', 'keep.example.', [{ ip: ip(1), ttl: 5 }], 0, none)
  for (let i = 0; i < 50; i++) c.add('ns/greedy', `r${i}.example.`, [{ ip: ip(10 + i), ttl: 600 }], 1 + i, none)
  t.ok(c.learned(60).some((n) => n.name === 'keep.example.'), 'another endpoint\'s names are not evicted')
})
