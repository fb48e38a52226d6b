/**
 * The cap on what other nodes publish counts kernel ipcache entries: a node record is one entry
 * per address (up to 16), not one per etcd key. The store reads its persisted copy
 * (`cluster.json`) and never waits for etcd, so no etcd runs here: the URL is a port nobody
 * listens on (wdf range).
 */
import t, { type Test } from 'tap'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { MemoryIdentityAllocator, RESERVED } from '../../policy-store/src/index.js'
import { ClusterStore } from '../../cluster/src/cluster.js'
import { formatIpcacheValue, formatNodeValue, ipcacheKey, nodeKey } from '../../cluster/src/keys.js'

const CAP = 40

function node (i: number): [string, string] {
  const ipv4 = Array.from({ length: 16 }, (_, j) => `10.96.${i}.${j + 1}`)
  return [nodeKey('default', `node-${i}`), formatNodeValue({ name: `node-${i}`, cluster: 'default', ipv4, podCidr: null })]
}
function pod (i: number): [string, string] {
  const ip = `10.97.0.${i + 1}`
  return [ipcacheKey(ip), formatIpcacheValue({ ip, hostIP: '10.96.1.1', identity: 4000, namespace: 'shop', pod: `web-${i}`, cluster: 'default', node: 'node-1', endpointId: i + 1 })]
}

async function open (t: Test, nodes: Array<[string, string]>, ips: Array<[string, string]>): Promise<ClusterStore> {
  const dir = await mkdtemp(join(tmpdir(), 'wdf-cap-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  await writeFile(join(dir, 'cluster.json'), JSON.stringify({ version: 1, node: 'node-0', held: [], ids: [], ips, nodes }))
  const c = await ClusterStore.open({
    urls: ['http://127.0.0.1:18199'], nodeName: 'node-0', nodeIP: '10.96.0.1', clusterName: 'default', stateDir: dir,
    local: new MemoryIdentityAllocator(), logger: pino({ level: 'silent' }), maxRemoteEntries: CAP,
    probeMs: 200, timeoutMs: 200, backoffMinMs: 1000, backoffMaxMs: 1000
  })
  t.teardown(async () => await c.close())
  return c
}

t.test('node records count one entry per address', async (t) => {
  // three nodes of 16 addresses: 48 kernel entries from 3 keys
  const c = await open(t, [node(1), node(2), node(3)], [])
  const ipcache = c.current().ipcache
  t.equal(ipcache.length, CAP, 'no more kernel entries than the cap')
  t.ok(ipcache.every((e) => e.identity === RESERVED.REMOTE_NODE))
  t.equal(c.metrics().remoteEntriesDropped, 48 - CAP, 'the addresses left out are counted')
  t.equal(c.status().remoteEntriesDropped, 48 - CAP)
})

t.test('pods and node addresses share the cap', async (t) => {
  // the pods are read first (ips, then nodes): 30 pods, then the room for 10 addresses
  const c = await open(t, [node(1), node(2)], Array.from({ length: 30 }, (_, i) => pod(i)))
  const ipcache = c.current().ipcache
  t.equal(ipcache.length, CAP)
  t.equal(ipcache.filter((e) => e.identity === RESERVED.REMOTE_NODE).length, 10, 'a node record is cut to the room left')
  t.equal(c.metrics().remoteEntriesDropped, 30 + 32 - CAP)
})
