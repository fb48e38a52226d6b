// Other nodes' state (cluster mode): a remote pod's identity is selectable by this node's rules,
// its address maps to that identity, other nodes' addresses to remote-node, and one remote change
// is one ipcache write in the diff.
import t from 'tap'
import { join } from 'node:path'
import { openStore, RESERVED, type IpcacheEntry, type RemoteState, type Snapshot, type SnapshotDiff } from '../../policy-store/src/index.js'
import { tempTree } from './helpers.js'

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`
const ENDPOINTS = `endpoints:
  - {name: web, labels: {app: web}, ipv4: 10.42.0.10, interface: lxc-web}
`
const CLIENT = ['k8s:app=client', 'k8s:io.kubernetes.pod.namespace=default']
const OTHER = ['k8s:app=other', 'k8s:io.kubernetes.pod.namespace=default']

function remote (ids: [number, string[]][], ip: IpcacheEntry[]): RemoteState {
  return { identities: new Map(ids), ipcache: ip }
}

t.test('a remote pod is selected by fromEndpoints; its address and the other node are in the ipcache', async (t) => {
  const dir = tempTree(t, { 'policies/p.yaml': POLICY, 'endpoints.yaml': ENDPOINTS })
  const clientIp: IpcacheEntry = { prefix: '10.42.1.5/32', identity: 5000, endpointId: 0 }
  const nodeB: IpcacheEntry = { prefix: '192.0.2.2/32', identity: RESERVED.REMOTE_NODE, endpointId: 0 }
  const store = await openStore({ policies: join(dir, 'policies'), endpoints: join(dir, 'endpoints.yaml'), watch: false, remote: remote([[5000, CLIENT]], [clientIp, nodeB]) })
  t.teardown(async () => await store.close())
  const snap = store.current()
  const web = snap.endpoints[0]
  t.ok(snap.kernel.some((e) => e.endpointId === web.id && e.direction === 0 && e.remoteIdentity === 5000 && e.port === 80 && e.verdict === 'allow'), 'web allows the remote client identity on 80')
  t.strictSame(snap.identities.get(5000), CLIENT)
  t.ok(snap.ipcache.some((e) => e.prefix === '10.42.1.5/32' && e.identity === 5000), 'remote pod address')
  t.ok(snap.ipcache.some((e) => e.prefix === '192.0.2.2/32' && e.identity === RESERVED.REMOTE_NODE), 'other node: remote-node')

  const next = new Promise<[Snapshot, SnapshotDiff]>((resolve) => { const off = store.onSnapshot((s, d) => { off(); resolve([s, d]) }) })
  // One more remote pod of a known identity: one ipcache write, no policy change.
  const second: IpcacheEntry = { prefix: '10.42.1.6/32', identity: 5000, endpointId: 0 }
  store.setRemote(remote([[5000, CLIENT]], [clientIp, nodeB, second]))
  const [, diff] = await next
  t.strictSame(diff.ipcacheAdded, [second])
  t.strictSame(diff.ipcacheRemoved, [])
  t.equal(diff.kernelAdded.length + diff.kernelRemoved.length, 0)
})

t.test('a local endpoint wins over a remote entry for its address; an unselected remote identity gets no entry', async (t) => {
  const dir = tempTree(t, { 'policies/p.yaml': POLICY, 'endpoints.yaml': ENDPOINTS })
  const store = await openStore({
    policies: join(dir, 'policies'), endpoints: join(dir, 'endpoints.yaml'), watch: false,
    remote: remote([[6000, OTHER]], [{ prefix: '10.42.0.10/32', identity: 6000, endpointId: 0 }, { prefix: '10.42.1.7/32', identity: 6000, endpointId: 0 }])
  })
  t.teardown(async () => await store.close())
  const snap = store.current()
  const web = snap.endpoints[0]
  t.equal(snap.ipcache.find((e) => e.prefix === '10.42.0.10/32')?.identity, web.identity)
  t.notOk(snap.kernel.some((e) => e.remoteIdentity === 6000), 'no rule selects app=other')
})

t.test('remote changes named by the cluster store give the same snapshots and diffs as comparing the lists', async (t) => {
  const dir = tempTree(t, { 'policies/p.yaml': POLICY, 'endpoints.yaml': ENDPOINTS })
  const ids = new Map([[5000, CLIENT], [6000, OTHER]])
  const initial: IpcacheEntry[] = [] // the first change names it as its `from`, as the cluster store does
  const open = async (): Promise<Awaited<ReturnType<typeof openStore>>> => {
    const s = await openStore({ policies: join(dir, 'policies'), endpoints: join(dir, 'endpoints.yaml'), watch: false, remote: { identities: ids, ipcache: initial } })
    t.teardown(async () => await s.close())
    return s
  }
  const told = await open() // gets RemoteState.ipcacheChanges
  const plain = await open() // gets the lists only
  const e = (prefix: string, identity: number): IpcacheEntry => ({ prefix, identity, endpointId: 0 })
  const byPrefix = (l: readonly IpcacheEntry[]): string[] => l.map((x) => `${x.prefix}=${x.identity}`).sort()
  // each step: the prefixes set (an entry) or removed (null)
  const steps: Array<Array<[string, IpcacheEntry | null]>> = [
    [['10.42.1.5/32', e('10.42.1.5/32', 5000)], ['192.0.2.2/32', e('192.0.2.2/32', RESERVED.REMOTE_NODE)]],
    [['10.42.1.6/32', e('10.42.1.6/32', 6000)]],
    [['10.42.1.6/32', e('10.42.1.6/32', 5000)]], // another identity for the same address
    [['10.42.0.10/32', e('10.42.0.10/32', 6000)]], // claims the local endpoint's address: the endpoint wins
    [['10.42.1.5/32', null], ['10.42.0.10/32', null]],
    [['10.42.1.5/32', e('10.42.1.5/32', 5000)], ['10.42.1.6/32', null]]
  ]
  let list: IpcacheEntry[] = initial
  for (const [i, step] of steps.entries()) {
    const m = new Map(list.map((x) => [x.prefix, x]))
    for (const [p, x] of step) { if (x === null) m.delete(p); else m.set(p, x) }
    const next = [...m.values()]
    const changed = step.map(([prefix, entry]) => ({ prefix, entry }))
    const got = Promise.all([told, plain].map(async (s) => await new Promise<[Snapshot, SnapshotDiff]>((resolve) => { const off = s.onSnapshot((snap, d) => { off(); resolve([snap, d]) }) })))
    told.setRemote({ identities: ids, ipcache: next, ipcacheChanges: { from: list, changed } })
    plain.setRemote({ identities: ids, ipcache: next })
    const named = told.compileStats.ipcacheDiffsNamed
    const [[sa, da], [sb, db]] = await got
    // the named path ran (else this test would pass with the optimisation off), also where a
    // change claims this node's own endpoint's address (skipped there: the endpoint wins)
    t.equal(told.compileStats.ipcacheDiffsNamed, named + 1, `step ${i}: diffed from the named changes`)
    t.equal(plain.compileStats.ipcacheDiffsNamed, 0, 'without named changes: compared')
    t.strictSame(byPrefix(sa.ipcache), byPrefix(sb.ipcache), `step ${i}: same ipcache`)
    t.strictSame(byPrefix(da.ipcacheAdded), byPrefix(db.ipcacheAdded), `step ${i}: same entries written`)
    t.strictSame(byPrefix(da.ipcacheRemoved), byPrefix(db.ipcacheRemoved), `step ${i}: same entries deleted`)
    t.strictSame(sa.kernel.length, sb.kernel.length, `step ${i}: same policy entries`)
    list = next
  }
  // Two states before one compile (they are chained): a prefix added then removed, another
  // added then given another identity.
  const got = Promise.all([told, plain].map(async (s) => await new Promise<[Snapshot, SnapshotDiff]>((resolve) => { const off = s.onSnapshot((snap, d) => { off(); resolve([snap, d]) }) })))
  const mid = [...list, e('10.42.1.8/32', 5000), e('10.42.1.9/32', 5000)]
  const end = [...list, e('10.42.1.9/32', 6000)]
  told.setRemote({ identities: ids, ipcache: mid, ipcacheChanges: { from: list, changed: [{ prefix: '10.42.1.8/32', entry: mid[mid.length - 2] }, { prefix: '10.42.1.9/32', entry: mid[mid.length - 1] }] } })
  told.setRemote({ identities: ids, ipcache: end, ipcacheChanges: { from: mid, changed: [{ prefix: '10.42.1.8/32', entry: null }, { prefix: '10.42.1.9/32', entry: end[end.length - 1] }] } })
  plain.setRemote({ identities: ids, ipcache: end })
  const named = told.compileStats.ipcacheDiffsNamed
  const [[sa, da], [sb, db]] = await got
  t.equal(told.compileStats.ipcacheDiffsNamed, named + 1, 'merged states: diffed from the chained changes')
  t.strictSame(byPrefix(sa.ipcache), byPrefix(sb.ipcache), 'merged states: same ipcache')
  t.strictSame(byPrefix(da.ipcacheAdded), ['10.42.1.9/32=6000'], 'merged states: the net change written')
  t.strictSame(byPrefix(da.ipcacheAdded), byPrefix(db.ipcacheAdded))
  t.strictSame(byPrefix(da.ipcacheRemoved), byPrefix(db.ipcacheRemoved))
  const web = told.current().endpoints[0]
  t.equal(told.current().ipcache.find((x) => x.prefix === '10.42.0.10/32')?.identity, web.identity, 'the local endpoint kept its address')
})

t.test('egress named ports resolve to other nodes\' pods\' named ports (the union per identity)', async (t) => {
  const EGRESS = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-to-client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
    - toEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "http-alt", protocol: TCP}]}]
`
  const dir = tempTree(t, { 'policies/p.yaml': EGRESS, 'endpoints.yaml': ENDPOINTS })
  const clientIp: IpcacheEntry = { prefix: '10.42.1.5/32', identity: 5000, endpointId: 0 }
  const ports = (p: number): RemoteState['namedPorts'] => new Map([[5000, [{ name: 'http-alt', port: p, protocol: 'TCP' as const }, { name: 'metrics', port: 9100, protocol: 'TCP' as const }]]])
  const store = await openStore({ policies: join(dir, 'policies'), endpoints: join(dir, 'endpoints.yaml'), watch: false, remote: { ...remote([[5000, CLIENT]], [clientIp]), namedPorts: ports(8080) } })
  t.teardown(async () => await store.close())
  const web = store.current().endpoints[0].id
  const egress = (s: Snapshot): string[] => s.kernel.filter((e) => e.endpointId === web && e.direction === 1 && e.verdict === 'allow').map((e) => `${e.remoteIdentity}/${e.port}`)
  t.strictSame(egress(store.current()), ['5000/8080'], 'the remote client\'s http-alt')

  // The remote pod's port moves: the entry moves with it.
  const next = new Promise<[Snapshot, SnapshotDiff]>((resolve) => { const off = store.onSnapshot((s, d) => { off(); resolve([s, d]) }) })
  store.setRemote({ ...remote([[5000, CLIENT]], [clientIp]), namedPorts: ports(8081) })
  const [snap, diff] = await next
  t.strictSame(egress(snap), ['5000/8081'])
  t.strictSame(diff.kernelAdded.map((e) => e.port), [8081])
  t.strictSame(diff.kernelRemoved.map((e) => e.port), [8080])

  // No named ports published for it: the name resolves to nothing (nothing allowed).
  const none = new Promise<Snapshot>((resolve) => { const off = store.onSnapshot((s) => { off(); resolve(s) }) })
  store.setRemote({ ...remote([[5000, CLIENT]], [clientIp]), namedPorts: new Map() })
  t.strictSame(egress(await none), [])
})

t.test('remote changes chained while a compile waits are bounded: past the bound the lists are compared', async (t) => {
  const dir = tempTree(t, { 'policies/p.yaml': POLICY, 'endpoints.yaml': ENDPOINTS })
  const ids = new Map([[5000, CLIENT], [6000, OTHER]])
  let list: IpcacheEntry[] = []
  const s = await openStore({ policies: join(dir, 'policies'), endpoints: join(dir, 'endpoints.yaml'), watch: false, remote: { identities: ids, ipcache: list } })
  t.teardown(async () => await s.close())
  const compiled = new Promise<Snapshot>((resolve) => { const off = s.onSnapshot((snap) => { off(); resolve(snap) }) })
  // 600 states of 10 churning addresses before one compile: 6,000 changes for a 10-entry ipcache
  for (let round = 0; round < 600; round++) {
    const next = Array.from({ length: 10 }, (_, i): IpcacheEntry => ({ prefix: `10.42.1.${i}/32`, identity: round % 2 === 0 ? 5000 : 6000, endpointId: 0 }))
    s.setRemote({ identities: ids, ipcache: next, ipcacheChanges: { from: list, changed: next.map((entry) => ({ prefix: entry.prefix, entry })) } })
    list = next
  }
  const snap = await compiled
  t.equal(s.compileStats.ipcacheDiffsCompared, 1, 'one compile, by comparing the lists')
  t.equal(s.compileStats.ipcacheDiffsNamed, 0)
  t.strictSame(snap.ipcache.filter((e) => e.prefix.startsWith('10.42.1.')).map((e) => e.identity), Array(10).fill(6000), 'the last state is the one compiled')
})
