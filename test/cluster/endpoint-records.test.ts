/**
 * What one agent publishes of its endpoints and what another reads, through a real etcd: named
 * ports travel in the ipcache entries and reach the other node as the union per identity; an
 * endpoint with the init identity is published with it (5); an entry whose NamedPorts are malformed is
 * skipped with a warning and counted, never half-read. Needs the `etcd` binary.
 */
import t, { type Test } from 'tap'
import type { ClusterStore } from '../../cluster/src/cluster.js'
import { ipcacheKey } from '../../cluster/src/keys.js'
import { Kv } from '../../cluster/src/kv.js'
import { RESERVED, type RemoteState } from '../../policy-store/src/index.js'
import { startEtcd } from '../helpers/etcd.js'
import { poll } from '../helpers/poll.js'
import { openTestStore, until, WEB, webEndpoint } from '../helpers/cluster-store.js'

async function agent (t: Test, endpoint: string, name: string, ip: string): Promise<ClusterStore> {
  return await openTestStore(t, { urls: [`http://${endpoint}`], nodeName: name, nodeIP: ip })
}

const ep = webEndpoint

const ports = (r: RemoteState, id: number): string[] => (r.namedPorts?.get(id) ?? []).map((p) => `${p.name}=${p.protocol}/${p.port}`).sort()

t.test('named ports travel with the ipcache entries; init endpoints are published as init', async (t) => {
  const etcd = await startEtcd(t, 23850)
  const a = await agent(t, etcd.endpoint, 'node-a', '192.0.2.1')
  const b = await agent(t, etcd.endpoint, 'node-b', '192.0.2.2')
  t.ok(await a.conn.waitConnected(10000) && await b.conn.waitConnected(10000), 'both connected')
  await a.allocator.prepare([WEB], Date.now())
  const webId = a.allocator.acquireIdentity(WEB, Date.now())
  a.publishEndpoints([
    ep('web-1', '10.42.1.10', webId, 1, [{ name: 'http-alt', port: 8080, protocol: 'TCP' }]),
    // two pods of one identity: their ports are one union on the other node
    ep('web-2', '10.42.1.11', webId, 2, [{ name: 'http-alt', port: 8080, protocol: 'TCP' }, { name: 'metrics', port: 9100, protocol: 'TCP' }]),
    ep('booting', '10.42.1.12', RESERVED.INIT, 3, [{ name: 'http-alt', port: 8080, protocol: 'TCP' }])
  ])
  t.ok(await until(() => ports(b.current(), webId).length === 2), 'B has the union of A\'s pods\' named ports')
  t.strictSame(ports(b.current(), webId), ['http-alt=TCP/8080', 'metrics=TCP/9100'])
  const kv = new Kv([`http://${etcd.endpoint}`], 2000)
  t.teardown(() => kv.close())
  // A's keys are written one by one: B's union can be complete (web-2 alone names both ports)
  // before web-1's or the booting pod's key is in etcd. Wait for each key read here.
  const published = async (ip: string): Promise<string | null> => await poll(async () => (await kv.get(ipcacheKey(ip))).value, (v) => v !== null)
  t.match(await published('10.42.1.10'), /"NamedPorts":\[\{"Name":"http-alt","Port":8080,"Protocol":"TCP"\}\]/, 'in Cilium\'s JSON')
  t.match(await published('10.42.1.12'), /"ID":5,/, 'the init endpoint is published with identity 5')
  t.ok(await until(() => b.current().ipcache.some((e) => e.prefix === '10.42.1.12/32' && e.identity === RESERVED.INIT)), 'and B knows its address as init')
  t.strictSame(ports(b.current(), RESERVED.INIT), ['http-alt=TCP/8080'], 'with its named ports')

  // A pod's port renamed: B's union follows.
  a.publishEndpoints([
    ep('web-1', '10.42.1.10', webId, 1, [{ name: 'http-alt', port: 8081, protocol: 'TCP' }]),
    ep('web-2', '10.42.1.11', webId, 2, [])
  ])
  t.ok(await until(() => ports(b.current(), webId).join() === 'http-alt=TCP/8081'), 'B follows the change')

  // Another node's entry with malformed NamedPorts: skipped whole, warned and counted.
  const before = b.metrics().malformedKeys
  await kv.put(ipcacheKey('10.42.2.5'), `{"IP":"10.42.2.5","Mask":null,"HostIP":"192.0.2.3","ID":${webId},"Key":0,"Metadata":"","NamedPorts":[{"Name":"http","Port":0,"Protocol":"TCP"}]}`)
  await kv.put(ipcacheKey('10.42.2.6'), `{"IP":"10.42.2.6","Mask":null,"HostIP":"192.0.2.3","ID":${webId},"Key":0,"Metadata":"","NamedPorts":[{"Name":"http","Port":80,"Protocol":"TCP"}]}`)
  t.ok(await until(() => b.current().ipcache.some((e) => e.prefix === '10.42.2.6/32')), 'the good entry arrives')
  t.notOk(b.current().ipcache.some((e) => e.prefix === '10.42.2.5/32'), 'the malformed one is not used')
  t.equal(b.metrics().malformedKeys, before + 1, 'and counted')
  t.strictSame(ports(b.current(), webId), ['http-alt=TCP/8081', 'http=TCP/80'])
})
