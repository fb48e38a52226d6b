/**
 * A watched copy across sessions, against a real etcd: the first session lists, a session on
 * an etcd that kept its data resumes from the copy's revision (the changes made meanwhile arrive
 * once, as watch events), a resume whose revision was compacted away relists, and a relist
 * reports only differences. An etcd that lost its data does not delete what it lost until the
 * owners had their time to write it again. Needs the `etcd` binary (scripts/setup.sh installs it).
 */
import t, { type Test } from 'tap'
import { pino } from 'pino'
import type { Session } from '../../cluster/src/connection.js'
import { Kv } from '../../cluster/src/kv.js'
import { Mirror, type MirrorChange, type MirrorOptions } from '../../cluster/src/mirror.js'
import type { EtcdProcess } from '../../lab/etcd.js'
import { startEtcd } from '../helpers/etcd.js'

const P = 'cilium/state/ip/v1/default/'

/** A real etcd on this file's port, a client, and a copy of P collecting its changes; all closed in teardown. */
async function setup (t: Test, opts: MirrorOptions = {}): Promise<{ etcd: EtcdProcess, kv: Kv, mirror: Mirror, seen: MirrorChange[] }> {
  const etcd = await startEtcd(t, 23794)
  const kv = new Kv([`http://${etcd.endpoint}`], 2000)
  t.teardown(() => kv.close())
  const mirror = new Mirror(P, pino({ level: 'silent' }), opts)
  const seen: MirrorChange[] = []
  mirror.onChange((c) => seen.push(...c))
  t.teardown(() => mirror.close())
  return { etcd, kv, mirror, seen }
}

/** A session on what etcd holds now (no lease: the copy needs none). */
async function sessionOn (kv: Kv, continuous: boolean, fail: (err: Error) => void = () => {}): Promise<Session> {
  const h = await kv.get('cilium/state/')
  return { kv, lease: '0', lockLease: '0', revision: h.revision, clusterId: h.clusterId, continuous, lostData: false, fail }
}

t.test('resume, compaction, relist', async (t) => {
  const { kv, mirror, seen } = await setup(t)
  let failed: Error | null = null
  const session = async (continuous: boolean): Promise<Session> => await sessionOn(kv, continuous, (err) => { failed = err })
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
  t.strictSame(mirror.stats, { watchEvents: 3, relists: 1, resumes: 1, dropped: 0, oversized: 0, held: 0 })

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
  const { kv, mirror, seen } = await setup(t, { maxRecordBytes: 64 })
  const big = 'x'.repeat(100)
  await kv.put(P + '10.0.0.1', 'small')
  await kv.put(P + '10.0.0.2', big)
  await mirror.onSession(await sessionOn(kv, false))
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

t.test('etcd restored empty: what it lost is held until its owners write it again, then deleted', async (t) => {
  const first = await setup(t, { lostDataHoldMs: 1500 })
  const { etcd, mirror, seen } = first
  let kv = first.kv
  const session = async (): Promise<Session> => await sessionOn(kv, false)
  for (const n of ['1', '2', '3', '4', '5']) await kv.put(P + '10.0.0.' + n, 'v' + n)
  for (let i = 0; i < 20; i++) await kv.put('cilium/state/other', String(i)) // the copy's revision well ahead of a new etcd's
  await mirror.onSession(await session())
  t.equal(mirror.entries.size, 5, 'listed')
  seen.length = 0

  // A session on the same etcd: a key deleted meanwhile is a deletion, applied at once.
  mirror.stop()
  await kv.delete(P + '10.0.0.5')
  await mirror.onSession(await session())
  t.strictSame(seen.splice(0), [{ type: 'delete', key: P + '10.0.0.5', prev: 'v5' }], 'etcd kept its data: a missing key is deleted at once')

  // etcd restored from an empty data directory; one owner has republished (unchanged), one
  // changed its value, two have not written yet.
  mirror.stop()
  kv.close()
  await etcd.stop()
  await etcd.wipe()
  await etcd.start()
  kv = new Kv([`http://${etcd.endpoint}`], 2000)
  t.teardown(() => kv.close())
  await kv.put(P + '10.0.0.1', 'v1')
  await kv.put(P + '10.0.0.2', 'v2-new')
  await mirror.onSession(await session())
  t.strictSame(seen.splice(0), [{ type: 'put', key: P + '10.0.0.2', value: 'v2-new', prev: 'v2' }], 'relisted: the changed value applied, nothing deleted')
  t.strictSame([...mirror.entries.keys()].sort(), [P + '10.0.0.1', P + '10.0.0.2', P + '10.0.0.3', P + '10.0.0.4'], 'the keys etcd lost are still in the copy')
  t.equal(mirror.stats.held, 2, 'two keys held')

  // 10.0.0.3's owner reconnects and writes it again, unchanged: no change, no longer held
  await kv.put(P + '10.0.0.3', 'v3')
  const end = Date.now() + 10000
  while (mirror.stats.held > 1 && Date.now() < end) await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(mirror.stats.held, 1, 'republished: no longer held')
  t.strictSame(seen, [], 'and it was no change')

  // 10.0.0.4's owner never comes back: deleted when the hold is over
  while (seen.length === 0 && Date.now() < end) await new Promise((resolve) => setTimeout(resolve, 50))
  t.strictSame(seen.splice(0), [{ type: 'delete', key: P + '10.0.0.4', prev: 'v4' }], 'not written again in time: deleted')
  t.strictSame([...mirror.entries.keys()].sort(), [P + '10.0.0.1', P + '10.0.0.2', P + '10.0.0.3'])
  t.equal(mirror.stats.held, 0)
})
