/**
 * A watched copy across sessions, against a real etcd: the first session lists, a session on
 * an etcd that kept its data resumes from the copy's revision (the changes made meanwhile arrive
 * once, as watch events), a resume whose revision was compacted away relists, and a relist
 * reports only differences. Needs the `etcd` binary (scripts/setup.sh installs it).
 */
import t from 'tap'
import { pino } from 'pino'
import type { Session } from '../../cluster/src/connection.js'
import { Kv } from '../../cluster/src/kv.js'
import { Mirror, type MirrorChange } from '../../cluster/src/mirror.js'
import { startEtcd } from '../helpers/etcd.js'

const P = 'cilium/state/ip/v1/default/'

t.test('resume, compaction, relist', async (t) => {
  const etcd = await startEtcd(t, 23794)
  const kv = new Kv([`http://${etcd.endpoint}`], 2000)
  t.teardown(() => kv.close())
  const mirror = new Mirror(P, pino({ level: 'silent' }))
  const seen: MirrorChange[] = []
  mirror.onChange((c) => seen.push(...c))
  t.teardown(() => mirror.stop())
  let failed: Error | null = null
  const session = async (continuous: boolean): Promise<Session> => {
    const h = await kv.get('cilium/state/')
    return { kv, lease: '0', lockLease: '0', revision: h.revision, clusterId: h.clusterId, continuous, fail: (err) => { failed = err } }
  }
  const waitFor = async (n: number): Promise<void> => {
    const end = Date.now() + 10000
    while (seen.length < n && Date.now() < end) await new Promise((resolve) => setTimeout(resolve, 20))
  }

  await kv.put(P + '10.0.0.1', 'one')
  await mirror.onSession(await session(false))
  t.strictSame(seen.splice(0), [{ type: 'put', key: P + '10.0.0.1', value: 'one', prev: undefined }], 'first session: listed')
  await kv.put(P + '10.0.0.2', 'two')
  await waitFor(1)
  t.strictSame(seen.splice(0), [{ type: 'put', key: P + '10.0.0.2', value: 'two', prev: undefined }], 'then watched')

  // Session lost; changes meanwhile; etcd kept its data: the watch resumes, the changes arrive once.
  mirror.stop()
  await kv.put(P + '10.0.0.3', 'three')
  await kv.delete(P + '10.0.0.1')
  await mirror.onSession(await session(true))
  await waitFor(2)
  t.strictSame(seen.splice(0), [
    { type: 'put', key: P + '10.0.0.3', value: 'three', prev: undefined },
    { type: 'delete', key: P + '10.0.0.1', prev: 'one' }
  ], 'resumed from the revision reached: the changes made meanwhile, in order')
  t.strictSame(mirror.stats, { watchEvents: 3, relists: 1, resumes: 1, dropped: 0, oversized: 0 })

  // Lost again; changes; etcd compacted its history past the copy's revision: relist.
  mirror.stop()
  await kv.put(P + '10.0.0.4', 'four')
  await kv.put(P + '10.0.0.2', 'two') // written again, unchanged: not a change
  await kv.delete(P + '10.0.0.3')
  const rev = (await kv.get('cilium/state/')).revision
  await kv.client.kv.compact({ revision: rev, physical: true })
  await mirror.onSession(await session(true))
  await waitFor(2) // etcd may accept the watch, then cancel it as compacted: the relist follows
  t.strictSame(seen.splice(0).sort((a, b) => a.key < b.key ? -1 : 1), [
    { type: 'delete', key: P + '10.0.0.3', prev: 'three' },
    { type: 'put', key: P + '10.0.0.4', value: 'four', prev: undefined }
  ], 'compacted: relisted, only the differences')
  t.equal(mirror.stats.relists, 2)
  t.strictSame([...mirror.entries.keys()].sort(), [P + '10.0.0.2', P + '10.0.0.4'])
  await kv.put(P + '10.0.0.5', 'five')
  await waitFor(1)
  t.strictSame(seen.splice(0), [{ type: 'put', key: P + '10.0.0.5', value: 'five', prev: undefined }], 'and watched from the relist on')
  t.equal(failed, null, 'no session failed')
})

t.test('a record larger than the bound is treated as absent, listed or watched', async (t) => {
  const etcd = await startEtcd(t, 23794)
  const kv = new Kv([`http://${etcd.endpoint}`], 2000)
  t.teardown(() => kv.close())
  const mirror = new Mirror(P, pino({ level: 'silent' }), Infinity, 64)
  const seen: MirrorChange[] = []
  mirror.onChange((c) => seen.push(...c))
  t.teardown(() => mirror.stop())
  const h = await kv.get('cilium/state/')
  const big = 'x'.repeat(100)
  await kv.put(P + '10.0.0.1', 'small')
  await kv.put(P + '10.0.0.2', big)
  await mirror.onSession({ kv, lease: '0', lockLease: '0', revision: h.revision, clusterId: h.clusterId, continuous: false, fail: () => {} })
  t.strictSame([...mirror.entries.keys()], [P + '10.0.0.1'], 'listed: the oversized record is not copied')
  t.equal(mirror.stats.oversized, 1)
  await kv.put(P + '10.0.0.1', big) // grows past the bound: as a delete
  const end = Date.now() + 10000
  while (seen.length < 2 && Date.now() < end) await new Promise((resolve) => setTimeout(resolve, 20))
  t.strictSame(seen, [
    { type: 'put', key: P + '10.0.0.1', value: 'small', prev: undefined },
    { type: 'delete', key: P + '10.0.0.1', prev: 'small' }
  ], 'watched: a record grown too large leaves the copy')
  t.equal(mirror.entries.size, 0)
  t.equal(mirror.stats.oversized, 2)
})
