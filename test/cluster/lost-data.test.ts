/**
 * An etcd that lost its data, told by each node's marker (a key without a lease, written at every
 * session start, its revision persisted with the copy), not by revisions alone: an agent that
 * starts again onto an etcd restored empty -- whose revision other nodes' writes already took past
 * the agent's copy -- keeps the other nodes' entries until their owners republish; an ordinary
 * restart applies what was deleted meanwhile at once. Needs the `etcd` binary.
 */
import t from 'tap'
import { Kv } from '../../cluster/src/kv.js'
import { ipcacheKey, markerKey } from '../../cluster/src/keys.js'
import { poll } from '../helpers/poll.js'
import { startEtcd } from '../helpers/etcd.js'
import { openTestStore, publishWebPod, remoteIdentity, tempDir, until, WEB, webEndpoint } from '../helpers/cluster-store.js'

t.test('restarted onto an etcd restored empty: held until the owner republishes', async (t) => {
  const etcd = await startEtcd(t, 23796)
  const urls = [`http://${etcd.endpoint}`]
  const [aDir, bDir] = [await tempDir(t), await tempDir(t)]
  const a = await openTestStore(t, { urls, nodeName: 'node-a', nodeIP: '192.0.2.1', stateDir: aDir })
  const b = await openTestStore(t, { urls, nodeName: 'node-b', nodeIP: '192.0.2.2', stateDir: bDir })
  const webId = await publishWebPod(t, a, b)
  await b.close() // persists its copy and the revision of its marker
  await a.close()

  await etcd.stop()
  await etcd.wipe()
  await etcd.start()
  const kv = new Kv(urls, 2000)
  t.teardown(() => kv.close())
  t.equal((await kv.get(markerKey('default', 'node-b'))).value, null, 'the restored etcd has no marker of node-b')
  // others' writes take the new etcd's revision well past node-b's copy: revisions cannot tell
  for (let i = 0; i < 300; i++) await kv.put('cilium/state/elsewhere', String(i))

  const b2 = await openTestStore(t, { urls, nodeName: 'node-b', nodeIP: '192.0.2.2', stateDir: bDir })
  t.ok(await until(() => b2.metrics().connected === 1), 'node-b connected to the restored etcd')
  t.equal(remoteIdentity(b2.current(), '10.42.1.10/32'), webId, 'node-a\'s pod is still enforced with its identity')
  t.ok(b2.metrics().keysHeld >= 2, `held while node-a may still republish (${b2.metrics().keysHeld} keys)`)
  t.not((await kv.get(markerKey('default', 'node-b'))).value, null, 'node-b wrote its marker again')

  // node-a starts again (its identity from its own state) and republishes: nothing held any more
  const a2 = await openTestStore(t, { urls, nodeName: 'node-a', nodeIP: '192.0.2.1', stateDir: aDir })
  await a2.allocator.prepare([WEB], Date.now())
  t.equal(a2.allocator.acquireIdentity(WEB, Date.now()), webId, 'node-a kept its number')
  a2.publishEndpoints([webEndpoint('web-1', '10.42.1.10', webId, 1)])
  t.ok(await until(() => b2.metrics().keysHeld === 0), 'republished: nothing held')
  t.equal(remoteIdentity(b2.current(), '10.42.1.10/32'), webId, 'and the pod is as it was')
})

t.test('restarted onto an etcd that kept its data: a deletion meanwhile is applied at once', async (t) => {
  const etcd = await startEtcd(t, 23796)
  const urls = [`http://${etcd.endpoint}`]
  const bDir = await tempDir(t)
  const a = await openTestStore(t, { urls, nodeName: 'node-a', nodeIP: '192.0.2.1' })
  const b = await openTestStore(t, { urls, nodeName: 'node-b', nodeIP: '192.0.2.2', stateDir: bDir })
  await publishWebPod(t, a, b)
  await b.close()
  a.publishEndpoints([]) // web-1 deleted while node-b is down
  const kv = new Kv(urls, 2000)
  t.teardown(() => kv.close())
  t.equal(await poll(async () => (await kv.get(ipcacheKey('10.42.1.10'))).value, (v) => v === null), null, 'the deletion reached etcd')
  const b2 = await openTestStore(t, { urls, nodeName: 'node-b', nodeIP: '192.0.2.2', stateDir: bDir })
  t.ok(await until(() => b2.metrics().connected === 1 && remoteIdentity(b2.current(), '10.42.1.10/32') === undefined), 'node-b applied the deletion')
  t.equal(b2.metrics().keysHeld, 0, 'nothing held: etcd did not lose data')
})
