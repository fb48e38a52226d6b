// Cilium's init identity: an endpoint whose labels the allocator cannot number (a cluster
// allocator cut off from etcd) gets identity 5 (`reserved:init`), is default deny both ways
// whatever selects it, is allowed only what rules selecting `reserved:init` allow, is matched as a
// peer by `fromEntities: [init]`, and gets its real identity in one snapshot once the allocator
// can number its labels. An endpoint relabelled meanwhile keeps its previous identity.
import t, { type Test } from 'tap'
import { join } from 'node:path'
import { writeFileSync } from 'node:fs'
import { ERR, MemoryIdentityAllocator, openStore, RESERVED, StoreError, type Label, type PolicyStore, type Snapshot } from '../../policy-store/src/index.js'
import { Compiler, entryKey } from '../../policy-store/src/compile.js'
import type { RawEndpoint } from '../../policy-store/src/endpoints.js'
import type { FilePolicies } from '../../policy-store/src/model.js'
import { parseYamlString } from '../../policy-store/src/source-file.js'
import { validatePolicyFile } from '../../policy-store/src/validate.js'
import { tempTree, trace } from './helpers.js'

/** Numbers only the label sets it was given, and only while `reachable` (like the etcd allocator). */
class FakeClusterAllocator extends MemoryIdentityAllocator {
  reachable = false
  readonly numbered = new Set<string>()
  constructor (known: Label[][]) {
    super()
    for (const ls of known) this.numbered.add(key(ls))
  }

  override async prepare (sets: readonly (readonly Label[])[]): Promise<void> {
    if (this.reachable) for (const ls of sets) this.numbered.add(key(ls))
  }

  override isPrepared (ls: readonly Label[]): boolean { return this.numbered.has(key(ls)) }
  override acquireIdentity (ls: readonly Label[], now: number): number {
    if (!this.isPrepared(ls)) throw new StoreError(ERR.IDENTITY_NOT_PREPARED, 'not prepared', {})
    return super.acquireIdentity(ls, now)
  }
}

function key (ls: readonly Label[]): string { return [...ls].sort().join('\n') }

const CLIENT = ['k8s:app=client', 'k8s:io.kubernetes.pod.namespace=default']
const ENDPOINTS = `endpoints:
  - {name: client, labels: {app: client}, ipv4: 10.42.0.11, interface: lxc-client}
  - {name: web, labels: {app: web}, ipv4: 10.42.0.10, interface: lxc-web}
`
// web's own policy: open to the client on 80, egress to the client on 80 and 81
const WEB = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
  egress: [{toEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "81", protocol: TCP}]}]}]
`
// what an initializing endpoint may do: reach the client on 80 and 8080 only
const INIT = `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: init}
spec:
  endpointSelector: {matchLabels: {"reserved:init": ""}}
  egress: [{toEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "8080", protocol: TCP}]}]}]
`
// the client takes connections from initializing endpoints on 8080 only
const CLIENT_POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ingress: [{fromEntities: [init], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
`

async function open (t: Test, policies: Record<string, string>, alloc: FakeClusterAllocator): Promise<{ store: PolicyStore, dir: string }> {
  const dir = tempTree(t, { ...Object.fromEntries(Object.entries(policies).map(([k, v]) => [`policies/${k}`, v])), 'endpoints.yaml': ENDPOINTS })
  const store = await openStore({ policies: join(dir, 'policies'), endpoints: join(dir, 'endpoints.yaml'), watch: false, allocator: alloc })
  t.teardown(async () => await store.close())
  return { store, dir }
}

function allowed (snap: Snapshot, from: string, to: string, port: number): boolean {
  return trace(snap, { from, to, port }).verdict === 'allowed'
}

async function nextSnapshot (store: PolicyStore): Promise<Snapshot[]> {
  const seen: Snapshot[] = []
  return await new Promise((resolve) => {
    const off = store.onSnapshot((s) => {
      seen.push(s)
      if (!s.endpoints.some((e) => e.identity === RESERVED.INIT)) { off(); resolve(seen) }
    })
  })
}

t.test('a new endpoint whose labels cannot be numbered has the init identity, default deny both ways', async (t) => {
  const alloc = new FakeClusterAllocator([CLIENT])
  const { store } = await open(t, { 'web.yaml': WEB }, alloc)
  const snap = store.current()
  const web = snap.endpoints.find((e) => e.name === 'web')
  t.equal(web?.identity, RESERVED.INIT, 'web starts with the init identity')
  t.strictSame(web?.identityLabels, ['reserved:init'])
  t.strictSame(web?.pendingIdentityLabels, ['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=default'])
  t.equal(snap.ipcache.find((e) => e.prefix === '10.42.0.10/32')?.identity, RESERVED.INIT, 'its address carries 5 in the ipcache')
  const client = snap.endpoints.find((e) => e.name === 'client')
  t.ok(client !== undefined && client.identity >= 256, 'the client, numbered before, keeps a cluster identity')
  t.equal(client?.pendingIdentityLabels, undefined)
  // web's own policy does not select it (its labels are reserved:init now), and no rule selects
  // reserved:init: nothing in, nothing out -- not Cilium's default-allow of an unselected endpoint
  t.notOk(allowed(snap, 'client', 'web', 80), 'client -> web:80 dropped')
  t.notOk(allowed(snap, 'web', 'client', 80), 'web -> client:80 dropped')
  t.notOk(allowed(snap, 'web', '192.0.2.1', 443), 'web -> world dropped')
  t.notOk(snap.kernel.some((e) => e.endpointId === web?.id && e.verdict !== 'deny'), 'no allow entry for web')
})

t.test('rules selecting reserved:init apply to it; fromEntities: [init] matches it as a peer', async (t) => {
  const alloc = new FakeClusterAllocator([CLIENT])
  const { store } = await open(t, { 'web.yaml': WEB, 'init.yaml': INIT, 'client.yaml': CLIENT_POLICY }, alloc)
  const snap = store.current()
  t.ok(allowed(snap, 'web', 'client', 8080), 'init -> client:8080 allowed by the reserved:init rule and the client\'s fromEntities: [init]')
  t.notOk(allowed(snap, 'web', 'client', 80), 'init -> client:80 allowed out, but the client takes init only on 8080')
  t.notOk(allowed(snap, 'web', 'client', 81), 'init -> client:81 not (web\'s own rule does not apply yet)')
  t.notOk(allowed(snap, 'web', '192.0.2.1', 80), 'init -> world not')
  t.notOk(allowed(snap, 'client', 'web', 80), 'nothing selects init for ingress: client -> web dropped')
  const ingress = snap.kernel.filter((e) => e.endpointId === snap.endpoints.find((x) => x.name === 'client')?.id && e.direction === 0 && e.port === 8080)
  t.ok(ingress.some((e) => e.remoteIdentity === RESERVED.INIT && e.verdict === 'allow'), 'client allows identity 5 on 8080 (fromEntities: [init])')
})

t.test('an enableDefaultDeny: false rule selecting init does not open it', async (t) => {
  const alloc = new FakeClusterAllocator([CLIENT])
  const additive = INIT.replace('spec:\n', 'spec:\n  enableDefaultDeny: {ingress: false, egress: false}\n')
  const { store } = await open(t, { 'init.yaml': additive }, alloc)
  const snap = store.current()
  t.ok(allowed(snap, 'web', 'client', 80), 'what the rule allows')
  t.notOk(allowed(snap, 'web', 'client', 81), 'and nothing else (Cilium always enforces for reserved:init)')
  t.notOk(allowed(snap, 'client', 'web', 80))
})

t.test('once the allocator numbers its labels, the endpoint gets its identity and its own policy in one snapshot', async (t) => {
  const alloc = new FakeClusterAllocator([CLIENT])
  const { store } = await open(t, { 'web.yaml': WEB, 'init.yaml': INIT }, alloc)
  const before = store.current()
  const webId = before.endpoints.find((e) => e.name === 'web')?.id
  const snaps = nextSnapshot(store)
  alloc.reachable = true
  store.setRemote({ identities: new Map(), ipcache: [] }) // what the cluster store does at each reconnect
  const seen = await snaps
  t.equal(seen.length, 1, 'one snapshot')
  const snap = seen[0]
  const web = snap.endpoints.find((e) => e.name === 'web')
  t.equal(web?.id, webId, 'same endpoint id')
  t.ok(web !== undefined && web.identity >= 256, 'a cluster identity')
  t.equal(web?.pendingIdentityLabels, undefined)
  t.equal(snap.ipcache.find((e) => e.prefix === '10.42.0.10/32')?.identity, web?.identity, 'the ipcache carries it')
  t.ok(allowed(snap, 'client', 'web', 80), 'its own ingress rule applies')
  t.ok(allowed(snap, 'web', 'client', 81), 'its own egress rule applies')
  t.notOk(allowed(snap, 'client', 'web', 81))
})

t.test('the store asks again by itself while endpoints wait', async (t) => {
  const alloc = new FakeClusterAllocator([CLIENT])
  const { store } = await open(t, { 'web.yaml': WEB }, alloc)
  const keepAlive = setInterval(() => {}, 1000) // the store's retry timer does not hold the process
  t.teardown(() => clearInterval(keepAlive))
  t.equal(store.current().endpoints.find((e) => e.name === 'web')?.identity, RESERVED.INIT)
  const snaps = nextSnapshot(store)
  alloc.reachable = true // no reconnect event: the store's retry (every few seconds) finds it
  const seen = await snaps
  t.ok((seen.at(-1)?.endpoints.find((e) => e.name === 'web')?.identity ?? 0) >= 256, 'numbered by the retry')
})

t.test('a relabelled endpoint whose new labels cannot be numbered keeps its identity until they can', async (t) => {
  const WEB_LABELS = ['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=default']
  const alloc = new FakeClusterAllocator([CLIENT, WEB_LABELS])
  const dir = tempTree(t, { 'policies/web.yaml': WEB, 'endpoints.yaml': ENDPOINTS })
  const store = await openStore({ policies: join(dir, 'policies'), endpoints: join(dir, 'endpoints.yaml'), watch: true, allocator: alloc })
  t.teardown(async () => await store.close())
  const keepAlive = setInterval(() => {}, 1000) // the watcher does not hold the process
  t.teardown(() => clearInterval(keepAlive))
  const web0 = store.current().endpoints.find((e) => e.name === 'web')
  t.ok(web0 !== undefined && web0.identity >= 256)
  const relabelled = new Promise<Snapshot>((resolve) => { const off = store.onSnapshot((s) => { off(); resolve(s) }) })
  writeFileSync(join(dir, 'endpoints.yaml'), ENDPOINTS.replace('labels: {app: web}', 'labels: {app: web, tier: v2}'))
  const snap = await relabelled
  const web = snap.endpoints.find((e) => e.name === 'web')
  t.equal(web?.identity, web0?.identity, 'the previous identity stays (as Cilium keeps it while allocation fails)')
  t.strictSame(web?.identityLabels, WEB_LABELS)
  t.strictSame(web?.pendingIdentityLabels, ['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=default', 'k8s:tier=v2'])
  t.ok(allowed(snap, 'client', 'web', 80), 'its policy stays')
})

t.test('from init to numbered, incrementally: the diff replays to the snapshot a cold compile gives', async (t) => {
  const fileOf = (name: string, text: string): FilePolicies => {
    const parsed = parseYamlString(text, name, 0, true)
    if ('errors' in parsed) throw new Error(JSON.stringify(parsed.errors))
    return { file: name, rules: [...validatePolicyFile(parsed).policies.rules], policies: 1, skipped: 0 }
  }
  const endpoints: RawEndpoint[] = [
    { name: 'client', namespace: 'default', labels: { app: 'client' }, ipv4: '10.42.0.11', interface: 'lxc-client', line: 1 },
    { name: 'web', namespace: 'default', labels: { app: 'web' }, ipv4: '10.42.0.10', interface: 'lxc-web', ports: [{ name: 'http', port: 80, protocol: 'TCP' }], line: 2 }
  ]
  const input = { endpoints, files: [fileOf('web.yaml', WEB), fileOf('init.yaml', INIT), fileOf('client.yaml', CLIENT_POLICY)], learned: [], hostIPs: [], now: 1_000_000 }
  const alloc = new FakeClusterAllocator([CLIENT])
  const inc = new Compiler(alloc)
  const first = inc.compile(input)
  t.equal(first.snapshot.endpoints.find((e) => e.name === 'web')?.identity, RESERVED.INIT)
  const state = new Map(first.snapshot.kernel.map((e) => [entryKey(e), e.verdict]))
  const ipcache = new Map(first.snapshot.ipcache.map((e) => [e.prefix, e.identity]))
  alloc.reachable = true
  await alloc.prepare([['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=default']])
  const { snapshot, diff } = inc.compile(input) // the same input: the newly numbered set is enough
  for (const e of diff.kernelRemoved) state.delete(entryKey(e))
  for (const e of diff.kernelAdded) state.set(entryKey(e), e.verdict)
  for (const e of diff.ipcacheRemoved) ipcache.delete(e.prefix)
  for (const e of diff.ipcacheAdded) ipcache.set(e.prefix, e.identity)
  t.strictSame(state, new Map(snapshot.kernel.map((e) => [entryKey(e), e.verdict])), 'the kernel diff replays')
  t.strictSame(ipcache, new Map(snapshot.ipcache.map((e) => [e.prefix, e.identity])), 'the ipcache diff replays')
  // the same as a compiler that never saw init (identity numbers aside: compared by labels)
  const cold = new Compiler(new MemoryIdentityAllocator()).compile(input).snapshot
  const canon = (s: Snapshot): string[] => s.kernel.map((e) => {
    const ep = s.endpoints.find((x) => x.id === e.endpointId)?.name
    const peer = e.remoteIdentity === 0 ? '*' : (s.identities.get(e.remoteIdentity) ?? [String(e.remoteIdentity)]).join(',')
    return `${ep}|${e.direction}|${peer}|${e.protocol}|${e.port}-${e.endPort}|${e.verdict}`
  }).sort()
  t.strictSame(canon(snapshot), canon(cold))
  t.strictSame(snapshot.endpoints.map((e) => e.identityLabels.join(',')), cold.endpoints.map((e) => e.identityLabels.join(',')))
})
