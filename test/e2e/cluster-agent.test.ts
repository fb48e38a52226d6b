// Needs root and the real kernel (namespaces, tc eBPF), and the `etcd` binary; CI runs as root.
// `warden run --kvstore` against a real etcd: the agent publishes its pods in Cilium's layout,
// puts another node's pods and address into its kernel ipcache (gone when that node's lease
// expires), keeps enforcing through an etcd outage, and republishes after etcd is restored empty.
// Own lab names: netns/interfaces wdk-, subnet 198.19.112.0/24, bpffs wdk-agent, table 2300.
import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { DemoSession, DEFAULT_DEMO, teardown, type DemoConfig } from '../../demo/session.js'
import { openIpcacheReader } from '../../redirect-bpf/src/index.js'
import { formatIpcacheValue, formatNodeValue, idKey, ipcacheKey, nodeKey, parseIpcacheValue } from '../../cluster/src/keys.js'
import { Kv } from '../../cluster/src/kv.js'
import { RESERVED } from '../../policy-store/src/index.js'
import { startEtcd } from '../helpers/etcd.js'
import { runCli } from '../helpers/cli.js'
import { charge, metric as metricOf, poll } from '../helpers/poll.js'

const cfg: DemoConfig = {
  ...DEFAULT_DEMO,
  workDir: '/run/warden-e2e-wdk',
  nsPrefix: 'wdk-',
  ifPrefix: 'wdk-',
  subnet: '198.19.112',
  bpffs: '/sys/fs/bpf/wdk-agent',
  routeTable: 2300,
  proxyPort: 17250,
  dnsProxyPort: 17251,
  metricsPort: 17252
}

const until = poll
const metric = async (name: string): Promise<number> => await metricOf(cfg.metricsPort, name)

t.test('an agent in a cluster', { skip: process.getuid?.() !== 0 ? 'needs root' : false }, async (t) => {
  const etcd = await startEtcd(t, 23798)
  cfg.agentArgs = ['--kvstore', `etcd://${etcd.endpoint}`, '--node-name', 'node-a', '--node-ip', '198.19.120.1', '--kvstore-lease-ttl', '4']
  t.teardown(async () => await teardown(cfg))
  const s = await DemoSession.open(cfg)
  const kv = new Kv([`http://${etcd.endpoint}`], 2000)
  t.teardown(() => kv.close())
  const ipcache = openIpcacheReader(cfg.bpffs)
  t.teardown(() => ipcache.close())

  // This node's pods are published in Cilium's layout, with the identity the kernel uses.
  const billing = s.endpointAddress('billing-service')
  const published = await until(async () => (await kv.get(ipcacheKey(billing))).value, (v) => v !== null)
  t.ok(published !== null, 'billing-service\'s ipcache entry is in etcd')
  const entry = parseIpcacheValue(ipcacheKey(billing), published as string)
  t.equal(entry.hostIP, '198.19.120.1')
  t.equal(entry.identity, ipcache.lookupIdentity(billing), 'the published identity is the one in the kernel')
  t.match((await kv.get(idKey(entry.identity))).value, /^k8s:app=billing-service;/, 'its labels under identities/v1/id')
  t.equal(await metric('warden_kvstore_connected'), 1)
  const up = await runCli(['status', '--api-socket', s.apiSocket])
  t.equal(up.code, 0, 'status: healthy while connected')
  t.match(up.out, /Cluster:\s+node node-a in default, kvstore http:\/\/127\.0\.0\.1:\d+ connected \(0 outages\)/, 'status shows the cluster store')

  // Another node: its pod (checkout-service's labels, so the existing identity) and its address.
  const checkout = ipcache.lookupIdentity(s.endpointAddress('checkout-service'))
  // node-b renews its short lease, as its agent would, until the test has seen its keys in the
  // kernel: a slow apply must not see them expire first.
  const lease = await kv.grantLease(3)
  const renewing = setInterval(() => { kv.keepAlive(lease).catch(() => {}) }, 1000)
  t.teardown(() => clearInterval(renewing))
  await kv.put(nodeKey('default', 'node-b'), formatNodeValue({ name: 'node-b', cluster: 'default', ipv4: ['198.19.120.2'], podCidr: '198.19.121.0/24' }), lease)
  await kv.put(ipcacheKey('198.19.121.5'), formatIpcacheValue({ ip: '198.19.121.5', hostIP: '198.19.120.2', identity: checkout, namespace: 'default', pod: 'checkout-2', cluster: 'default', node: 'node-b', endpointId: 7 }), lease)
  t.equal(await until(() => ipcache.lookupIdentity('198.19.121.5'), (v) => v === checkout), checkout, 'node-b\'s pod is in the kernel with its identity')
  t.equal(await until(() => ipcache.lookupIdentity('198.19.120.2'), (v) => v === RESERVED.REMOTE_NODE), RESERVED.REMOTE_NODE, 'node-b\'s address is remote-node')
  // node-b stops renewing: its pod and address leave the kernel with its lease (the node and the
  // pod are different keys, each applied when the agent sees its deletion).
  clearInterval(renewing)
  t.equal(await until(() => ipcache.lookupIdentity('198.19.121.5'), (v) => v !== checkout, 20_000), RESERVED.WORLD, 'gone after node-b\'s lease expired')
  t.equal(await until(() => ipcache.lookupIdentity('198.19.120.2'), (v) => v !== RESERVED.REMOTE_NODE), RESERVED.WORLD)

  // etcd stopped: nothing is flushed, the policy is still enforced, the outage is counted.
  await kv.put(ipcacheKey('198.19.121.6'), formatIpcacheValue({ ip: '198.19.121.6', hostIP: '198.19.120.2', identity: checkout, namespace: 'default', pod: 'checkout-3', cluster: 'default', node: 'node-b', endpointId: 8 }))
  t.equal(await until(() => ipcache.lookupIdentity('198.19.121.6'), (v) => v === checkout), checkout)
  await etcd.stop()
  t.equal(await until(async () => await metric('warden_kvstore_connected'), (v) => v === 0), 0, 'the agent sees the outage')
  t.equal(await metric('warden_kvstore_outages_total'), 1)
  t.equal(ipcache.lookupIdentity('198.19.121.6'), checkout, 'the remote pod stays in the kernel')
  t.equal(await charge(s), '404', 'L7 policy still enforced (checkout may POST /api/v1/charge)')
  t.ok(await until(() => /kvstore unreachable/.test(s.agentLog()), (v) => v), 'the outage is logged')
  const down = await runCli(['status', '--api-socket', s.apiSocket])
  t.equal(down.code, 1, 'status: degraded while etcd is unreachable')
  t.match(down.out, /DEGRADED[\s\S]*kvstore down for \d+ s \(.+\): enforcing the cluster state last seen/)
  t.match(down.out, /Cluster:.* DOWN/)
  t.equal((JSON.parse((await runCli(['status', '--json', '--api-socket', s.apiSocket])).out) as { cluster: { state: string } }).cluster.state, 'down')

  // etcd restored from an empty data directory: the agent republishes; what etcd lost (node-b's
  // pod, whose agent would republish it when it reconnects) is kept while its owner may still do
  // so -- the longer of the lease TTL and the republish window (10 s backoff + 4 x 2 s) -- then removed.
  await etcd.wipe()
  await etcd.start()
  t.not(await until(async () => (await kv.get(ipcacheKey(billing)).catch(() => ({ value: null }))).value, (v) => v !== null), null, 'billing-service republished')
  t.equal(await until(async () => (await kv.get(idKey(entry.identity)).catch(() => ({ value: null }))).value?.startsWith('k8s:app=billing-service;'), (v) => v === true), true, 'identity republished')
  t.equal(ipcache.lookupIdentity('198.19.121.6'), checkout, 'the entry etcd lost is still enforced after the relist')
  t.ok(await until(() => /etcd lost data/.test(s.agentLog()), (v) => v), 'the data loss is logged')
  t.equal(await until(() => ipcache.lookupIdentity('198.19.121.6'), (v) => v === RESERVED.WORLD, 40_000), RESERVED.WORLD, 'and removed when its owner did not write it again in time')
  t.ok(await until(() => /kvstore reconnected/.test(s.agentLog()), (v) => v), 'the reconnect is logged')
  t.equal(await charge(s), '404')

  // Restarted while etcd is unreachable: it starts from the cluster state it persisted (a full
  // sync of the maps at start would remove a remote pod it did not know), and enforces it.
  await kv.put(ipcacheKey('198.19.121.7'), formatIpcacheValue({ ip: '198.19.121.7', hostIP: '198.19.120.2', identity: checkout, namespace: 'default', pod: 'checkout-4', cluster: 'default', node: 'node-b', endpointId: 9 }))
  t.equal(await until(() => ipcache.lookupIdentity('198.19.121.7'), (v) => v === checkout), checkout)
  await sleep(1500) // the cluster state is persisted 1 s after a change (and at a clean stop)
  await s.stopAgent()
  await etcd.stop()
  await s.startAgent()
  t.ok(await until(() => /kvstore unreachable at start/.test(s.agentLog()), (v) => v), 'the outage at start is logged')
  t.equal(ipcache.lookupIdentity('198.19.121.7'), checkout, 'the remote pod persisted is enforced')
  t.equal(ipcache.lookupIdentity(billing), entry.identity, 'local identities kept')
  t.equal(await until(async () => await charge(s), (v) => v === '404'), '404', 'policy enforced')

  // A label set never numbered, while etcd is away: the relabelled endpoint keeps its identity
  // (as Cilium keeps it while an allocation fails); once etcd is back the new identity is
  // allocated and enforced.
  const auditing = s.endpointAddress('auditing-service')
  const auditingId = ipcache.lookupIdentity(auditing)
  const endpointsFile = join(cfg.workDir, 'endpoints.yaml')
  const endpoints = readFileSync(endpointsFile, 'utf8')
  const relabelled = endpoints.replace('labels: {app: auditing-service}', 'labels: {app: auditing-v2}')
  t.not(relabelled, endpoints, 'the edit relabels auditing')
  writeFileSync(endpointsFile, relabelled)
  await sleep(1000)
  t.equal(ipcache.lookupIdentity(auditing), auditingId, 'without etcd, auditing keeps its identity in the kernel')
  await etcd.start()
  t.equal(await until(async () => await metric('warden_kvstore_connected'), (v) => v === 1), 1, 'connects when etcd is back')
  const newId = await until(() => ipcache.lookupIdentity(auditing), (v) => v !== auditingId, 30_000)
  t.not(newId, auditingId, 'the new label set got its identity once etcd was back')
  t.match((await kv.get(idKey(newId))).value, /^k8s:app=auditing-v2;/, 'allocated in etcd')
})
