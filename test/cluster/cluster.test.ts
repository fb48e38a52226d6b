/**
 * The cluster store against a real etcd: two agents (ClusterStore, no kernel) share endpoints,
 * identities and node records; etcd stopped and started, restored from an empty data directory,
 * an agent killed (its keys go with its lease), an agent started while etcd is unreachable
 * (it uses the state it persisted). Needs the `etcd` binary (scripts/setup.sh installs it).
 */
import t, { type Test } from 'tap'
import { RESERVED } from '../../policy-store/src/index.js'
import type { ClusterStore } from '../../cluster/src/cluster.js'
import { idKey, ipcacheKey, nodeKey } from '../../cluster/src/keys.js'
import { Kv } from '../../cluster/src/kv.js'
import { startEtcd } from '../helpers/etcd.js'
import { poll } from '../helpers/poll.js'
import { openTestStore, publishWebPod, remoteIdentity, tempDir, until, WEB, webEndpoint } from '../helpers/cluster-store.js'

async function agent (t: Test, endpoint: string, name: string, ip: string, stateDir: string, maxRemoteEntries?: number): Promise<ClusterStore> {
  return await openTestStore(t, { urls: [`http://${endpoint}`], nodeName: name, nodeIP: ip, stateDir, leaseTtlSeconds: 6, maxRemoteEntries })
}

const ep = webEndpoint
const entry = remoteIdentity

t.test('agents share pods, identities and nodes; survive etcd restarts and an empty restore', async (t) => {
  const etcd = await startEtcd(t, 23792)
  const a = await agent(t, etcd.endpoint, 'node-a', '192.0.2.1', await tempDir(t))
  const bDir = await tempDir(t)
  const b = await agent(t, etcd.endpoint, 'node-b', '192.0.2.2', bDir)
  t.ok(await a.conn.waitConnected(10000) && await b.conn.waitConnected(10000), 'both connected')

  const webId = await publishWebPod(t, a, b)
  t.equal(entry(a.current(), '10.42.1.10/32'), undefined, 'A does not list its own pod as remote')

  // etcd stopped: nothing is flushed; a change on A waits for the next session.
  await etcd.stop()
  t.ok(await until(() => a.metrics().connected === 0 && b.metrics().connected === 0), 'both see the outage')
  t.equal(a.metrics().outages, 1)
  a.publishEndpoints([ep('web-1', '10.42.1.10', webId, 1), ep('web-2', '10.42.1.11', webId, 2)])
  t.equal(entry(b.current(), '10.42.1.10/32'), webId, 'B still enforces what it knew')
  await etcd.start()
  t.ok(await until(() => entry(b.current(), '10.42.1.11/32') === webId), 'after the restart B gets the change made during the outage')
  t.ok(b.metrics().resumes > 0, 'B resumed its watches')

  // etcd restored from an empty data directory: every agent republishes its keys.
  await etcd.stop()
  await etcd.wipe()
  await etcd.start()
  t.ok(await until(() => a.metrics().connected === 1 && b.metrics().connected === 1 && b.metrics().sessions >= 3), 'both reconnected')
  const kv = new Kv([`http://${etcd.endpoint}`], 2000)
  t.teardown(() => kv.close())
  t.ok(await until(() => entry(b.current(), '10.42.1.10/32') === webId && entry(b.current(), '10.42.1.11/32') === webId), 'B has A\'s pods again')
  // (the identity's id key is written by the allocator after the owned keys: wait for it too)
  t.equal(await poll(async () => (await kv.get(idKey(webId))).value, (v) => v !== null), 'k8s:app=web;k8s:io.kubernetes.pod.namespace=shop;', 'A republished its identity')
  t.not((await kv.get(nodeKey('default', 'node-b'))).value, null, 'B republished its node record')
  t.not((await kv.get(ipcacheKey('10.42.1.11'))).value, null, 'A republished its ipcache entries')

  // A killed (no clean leave): its keys vanish when its lease expires, and B forgets its pods.
  await a.close()
  t.ok(await until(() => entry(b.current(), '10.42.1.10/32') === undefined && entry(b.current(), '192.0.2.1/32') === undefined, 25000), 'A\'s pods and node gone from B after the lease TTL')

  // B restarted while etcd is unreachable: it starts from the state it persisted.
  await a.close()
  await b.close()
  await etcd.stop()
  const b2 = await agent(t, etcd.endpoint, 'node-b', '192.0.2.2', bDir)
  t.equal(b2.current().identities.get(webId)?.join(','), WEB.join(','), 'restored identities')
  t.equal(b2.metrics().connected, 0)
})

t.test('a restarted agent keeps its pods\' identities, also when etcd is unreachable at its start', async (t) => {
  const etcd = await startEtcd(t, 23792)
  const dir = await tempDir(t)
  const a = await agent(t, etcd.endpoint, 'node-a', '192.0.2.1', dir)
  t.ok(await a.conn.waitConnected(10000))
  await a.allocator.prepare([WEB], Date.now())
  const webId = a.allocator.acquireIdentity(WEB, Date.now())
  await a.close()
  await etcd.stop()
  const a2 = await agent(t, etcd.endpoint, 'node-a', '192.0.2.1', dir)
  await a2.allocator.prepare([WEB], Date.now())
  t.equal(a2.allocator.acquireIdentity(WEB, Date.now()), webId, 'same identity without etcd')
  await etcd.start()
  t.ok(await a2.conn.waitConnected(10000), 'connects when etcd is back')
  const kv = new Kv([`http://${etcd.endpoint}`], 2000)
  t.teardown(() => kv.close())
  t.equal((await kv.get(idKey(webId))).value, 'k8s:app=web;k8s:io.kubernetes.pod.namespace=shop;')
})

t.test('what other nodes publish is bounded by configuration', async (t) => {
  const etcd = await startEtcd(t, 23792)
  const a = await agent(t, etcd.endpoint, 'node-a', '192.0.2.1', await tempDir(t))
  const b = await agent(t, etcd.endpoint, 'node-b', '192.0.2.2', await tempDir(t), 3)
  t.ok(await a.conn.waitConnected(10000) && await b.conn.waitConnected(10000))
  await a.allocator.prepare([WEB], Date.now())
  const webId = a.allocator.acquireIdentity(WEB, Date.now())
  a.publishEndpoints([1, 2, 3, 4].map((i) => ep(`web-${i}`, `10.42.1.${i}`, webId, i)))
  // Counted per refused event: a key written again is refused again, so "at least".
  t.ok(await until(() => b.metrics().remoteEntriesDropped >= 2 && b.current().ipcache.length === 3), 'two of five entries (A\'s node and four pods) over the cap of 3')
  t.equal(b.current().ipcache.length, 3)
  t.equal(entry(b.current(), '192.0.2.1/32'), RESERVED.REMOTE_NODE, 'nodes first')
  // Two of the pods B holds go: the two it refused take their place, with no change of their own.
  const held = [1, 2, 3, 4].filter((i) => entry(b.current(), `10.42.1.${i}/32`) === webId)
  t.equal(held.length, 2)
  a.publishEndpoints([1, 2, 3, 4].filter((i) => !held.includes(i)).map((i) => ep(`web-${i}`, `10.42.1.${i}`, webId, i)))
  t.ok(await until(() => [1, 2, 3, 4].filter((i) => entry(b.current(), `10.42.1.${i}/32`) === webId).every((i) => !held.includes(i)) &&
    b.current().ipcache.length === 3), 'the refused entries are taken in once room is left')
})
