/**
 * Cluster identities against a real etcd: one label set gets one ID on every node, also when
 * two nodes ask at the same moment; a restarted node keeps its IDs; IDs nobody references are
 * collected after the grace period. Needs the `etcd` binary (scripts/setup.sh installs it).
 */
import t, { type Test } from 'tap'
import { pino } from 'pino'
import { MemoryIdentityAllocator } from '../../policy-store/src/index.js'
import { ClusterIdentityAllocator, type HeldEntry } from '../../cluster/src/allocator.js'
import { Connection } from '../../cluster/src/connection.js'
import { ID_PREFIX, idKey, VALUE_PREFIX } from '../../cluster/src/keys.js'
import { Kv } from '../../cluster/src/kv.js'
import { Mirror } from '../../cluster/src/mirror.js'
import { startEtcd } from '../helpers/etcd.js'

const log = pino({ level: 'silent' })

interface Node { conn: Connection, alloc: ClusterIdentityAllocator, ids: Mirror }

async function node (t: Test, endpoint: string, suffix: string, opts: { gcGraceMs?: number, gcIntervalMs?: number, releaseGraceMs?: number, held?: HeldEntry[] } = {}): Promise<Node> {
  const conn = new Connection({ urls: [`http://${endpoint}`], leaseTtlSeconds: 5, probeMs: 200, backoffMaxMs: 500, logger: log })
  const ids = new Mirror(ID_PREFIX, log)
  conn.addHook({ onSession: async (s) => await ids.onSession(s), onDown: () => ids.stop() })
  const alloc = new ClusterIdentityAllocator({ conn, ids, nodeSuffix: suffix, local: new MemoryIdentityAllocator(), logger: log, ...opts })
  if (opts.held !== undefined) alloc.restoreHeld(opts.held, 0)
  conn.start()
  t.teardown(async () => await conn.close())
  t.ok(await conn.waitConnected(10000), `${suffix} connected`)
  return { conn, alloc, ids }
}

const web = ['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=shop']
const db = ['k8s:app=db', 'k8s:io.kubernetes.pod.namespace=shop']

t.test('two nodes allocating the same new label sets at once get the same IDs', async (t) => {
  const etcd = await startEtcd(t, 23790)
  const a = await node(t, etcd.endpoint, '10.0.0.1')
  const b = await node(t, etcd.endpoint, '10.0.0.2')
  const sets = Array.from({ length: 20 }, (_, i) => [`k8s:app=svc-${i}`, 'k8s:io.kubernetes.pod.namespace=shop'])
  await Promise.all([a.alloc.prepare(sets, 0), b.alloc.prepare([...sets].reverse(), 0)])
  const ida = sets.map((s) => a.alloc.acquireIdentity(s, 0))
  const idb = sets.map((s) => b.alloc.acquireIdentity(s, 0))
  t.strictSame(idb, ida, 'same ID for each label set on both nodes')
  t.equal(new Set(ida).size, sets.length, 'distinct label sets, distinct IDs')
  t.ok(ida.every((n) => n >= 256 && n <= 65535), 'in the cluster range')
  const kv = new Kv([`http://${etcd.endpoint}`], 2000)
  t.teardown(() => kv.close())
  const stored = await kv.get(idKey(ida[0]))
  t.equal(stored.value, 'k8s:app=svc-0;k8s:io.kubernetes.pod.namespace=shop;')
  const refs = await kv.list(`${VALUE_PREFIX}k8s:app=svc-0;k8s:io.kubernetes.pod.namespace=shop;/`)
  t.strictSame(refs.kvs.map((k) => [k.key.split('/').pop(), k.value]).sort(), [['10.0.0.1', String(ida[0])], ['10.0.0.2', String(ida[0])]])
})

t.test('a restarted node keeps its IDs; an ID nobody references is collected after the grace period', async (t) => {
  const etcd = await startEtcd(t, 23790)
  const a = await node(t, etcd.endpoint, '10.0.0.1', { releaseGraceMs: 0, gcGraceMs: 1000, gcIntervalMs: 0 })
  await a.alloc.prepare([web, db], 0)
  const webId = a.alloc.acquireIdentity(web, 0)
  const dbId = a.alloc.acquireIdentity(db, 0)
  const held = a.alloc.heldEntries()
  await a.conn.close({ revoke: true }) // the agent stops: its references go with its lease

  // Restarted (new process, new lease), from its persisted entries: same numbers.
  const a2 = await node(t, etcd.endpoint, '10.0.0.1', { releaseGraceMs: 0, gcGraceMs: 1000, gcIntervalMs: 0, held })
  await a2.alloc.prepare([web, db], 0)
  t.equal(a2.alloc.acquireIdentity(web, 0), webId)
  // db is no longer used: its reference goes at collect, the ID after the grace period
  await a2.alloc.collect(1)
  const kv = new Kv([`http://${etcd.endpoint}`], 2000)
  t.teardown(() => kv.close())
  t.equal((await kv.get(idKey(dbId))).value, 'k8s:app=db;k8s:io.kubernetes.pod.namespace=shop;', 'still there within the grace period')
  await a2.alloc.collect(2000)
  t.equal((await kv.get(idKey(dbId))).value, null, 'collected')
  t.equal((await kv.get(idKey(webId))).value, 'k8s:app=web;k8s:io.kubernetes.pod.namespace=shop;', 'the referenced ID stays')
  // a new node asking for db now gets a number again
  const b = await node(t, etcd.endpoint, '10.0.0.2')
  await b.alloc.prepare([db], 3000)
  const again = b.alloc.acquireIdentity(db, 3000)
  t.equal((await kv.get(idKey(again))).value, 'k8s:app=db;k8s:io.kubernetes.pod.namespace=shop;', 'db numbered again')
})

t.test('without etcd, a label set never numbered stays unprepared (its endpoints get init), a held one is served', async (t) => {
  const conn = new Connection({ urls: ['http://127.0.0.1:23799'], leaseTtlSeconds: 5, probeMs: 200, logger: log })
  const ids = new Mirror(ID_PREFIX, log)
  const alloc = new ClusterIdentityAllocator({ conn, ids, nodeSuffix: '10.0.0.1', local: new MemoryIdentityAllocator(), logger: log, prepareTimeoutMs: 60_000 })
  conn.start()
  t.teardown(async () => await conn.close())
  alloc.restoreHeld([['k8s:app=web;k8s:io.kubernetes.pod.namespace=shop;', 300, null]], 0)
  await alloc.prepare([web], 0)
  t.equal(alloc.acquireIdentity(web, 0), 300)
  t.ok(alloc.isPrepared(web))
  // does not throw: the compile goes on without it; and it waits for the connection attempt
  // under way only, not for the prepare timeout (a minute here, past the test's own timeout)
  await alloc.prepare([db], 0)
  t.notOk(alloc.isPrepared(db))
  t.equal(alloc.stats.allocationFailures, 1, 'counted')
  await alloc.prepare([db], 0)
  t.equal(alloc.stats.allocationFailures, 1, 'once per label set while it keeps failing')
  t.throws(() => alloc.acquireIdentity(db, 0), { code: 'WARDEN_ERR_IDENTITY_NOT_PREPARED' })
})
