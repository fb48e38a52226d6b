/**
 * The copy's hold after etcd lost its data, against a fake etcd (unit test; the real-etcd cases
 * are in lost-data.test.ts): a loss with more held keys than a call can take as arguments; a hold
 * that ends while etcd is away; a loss the connection reports (its marker) although the revision
 * went past the copy's; a copy restored from disk at start.
 */
import { EventEmitter } from 'node:events'
import t from 'tap'
import { pino } from 'pino'
import type { Session } from '../../cluster/src/connection.js'
import { Mirror, type MirrorChange } from '../../cluster/src/mirror.js'

const P = 'cilium/state/ip/v1/default/'
const log = pino({ level: 'silent' })

class FakeWatcher extends EventEmitter {
  async cancel (): Promise<void> {}
}

/** A session on a fake etcd holding `keys` at `revision`. */
function session (keys: Map<string, string>, revision: number, opts: { continuous?: boolean, clusterId?: string, lostData?: boolean } = {}): Session {
  const kv = {
    list: async (prefix: string) => ({
      revision,
      clusterId: opts.clusterId ?? 'c1',
      kvs: [...keys].filter(([k]) => k.startsWith(prefix)).map(([key, value]) => ({ key, value, modRevision: 1, createRevision: 1 }))
    }),
    watch: async () => new FakeWatcher()
  }
  return { kv: kv as unknown as Session['kv'], lease: '0', lockLease: '0', revision, clusterId: opts.clusterId ?? 'c1', continuous: opts.continuous ?? false, lostData: opts.lostData ?? false, fail: () => {} }
}

const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

t.test('a data loss with more held keys than a call can spread still relists', async (t) => {
  const mirror = new Mirror(P, log, { lostDataHoldMs: 60_000 })
  t.teardown(() => mirror.close())
  const many = new Map<string, string>()
  for (let i = 0; i < 130_000; i++) many.set(`${P}10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`, 'v')
  await mirror.onSession(session(many, 500_000))
  t.equal(mirror.entries.size, 130_000, 'listed')
  mirror.stop()
  // etcd restored empty: every key absent, all held
  await t.resolves(mirror.onSession(session(new Map(), 10)), 'the relist after the loss completes')
  t.equal(mirror.stats.held, 130_000, 'every absent key held')
  // the agent's connection retries the session: the copy is still behind, so it is a loss again
  mirror.stop()
  await t.resolves(mirror.onSession(session(new Map(), 11)), 'the next session completes')
})

t.test('a hold that ends while etcd is away still ends', async (t) => {
  const mirror = new Mirror(P, log, { lostDataHoldMs: 100 })
  t.teardown(() => mirror.close())
  const seen: MirrorChange[] = []
  mirror.onChange((c) => seen.push(...c))
  await mirror.onSession(session(new Map([[P + '10.0.0.1', 'a'], [P + '10.0.0.2', 'b']]), 1000))
  mirror.stop()
  // restored empty; 10.0.0.1's owner republished, 10.0.0.2's never will
  const restored = new Map([[P + '10.0.0.1', 'a']])
  await mirror.onSession(session(restored, 5))
  t.equal(mirror.stats.held, 1, '10.0.0.2 held')
  // the connection drops before the hold ends (its timer fires with no watch), then comes back
  // on the same etcd, which kept the lease: the watch resumes
  mirror.stop()
  await sleep(200)
  await mirror.onSession(session(restored, 6, { continuous: true }))
  await sleep(300)
  t.notOk(mirror.entries.has(P + '10.0.0.2'), 'the key nobody republished is deleted once its hold is over')
  t.equal(mirror.stats.held, 0, 'nothing held any more')
})

t.test('a restore from an older backup is a loss even when others wrote past the copy\'s revision', async (t) => {
  const mirror = new Mirror(P, log, { lostDataHoldMs: 60_000 })
  t.teardown(() => mirror.close())
  const seen: MirrorChange[] = []
  mirror.onChange((c) => seen.push(...c))
  await mirror.onSession(session(new Map([[P + '10.0.0.1', 'a'], [P + '10.0.0.2', 'b']]), 100))
  seen.length = 0
  mirror.stop()
  // the backup was taken at revision 90, before 10.0.0.2 existed; other agents reconnected
  // first and their republishes took etcd to revision 120; the node's marker tells the loss
  await mirror.onSession(session(new Map([[P + '10.0.0.1', 'a']]), 120, { lostData: true }))
  t.ok(mirror.entries.has(P + '10.0.0.2'), '10.0.0.2 is held while its owner reconnects, not deleted')
  t.strictSame(seen, [], 'no deletion applied')
})

t.test('an agent restarted onto an etcd that lost its data holds what its persisted copy had', async (t) => {
  // the copy restored from cluster.json (what ClusterStore does at start), then the first
  // session on an etcd restored empty while the agent was down
  const mirror = new Mirror(P, log, { lostDataHoldMs: 60_000 })
  t.teardown(() => mirror.close())
  mirror.restore([[P + '10.0.0.1', 'a'], [P + '10.0.0.2', 'b']])
  const seen: MirrorChange[] = []
  mirror.onChange((c) => seen.push(...c))
  await mirror.onSession(session(new Map(), 3, { lostData: true }))
  t.strictSame(seen, [], 'the other nodes\' entries are not deleted before their owners could republish')
  t.equal(mirror.stats.held, 2)
})
