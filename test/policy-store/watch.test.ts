// Watching: a bad edit keeps the file's last good version (others still update), the fix
// restores it, deletion removes its rules, editors' rename-swap works, and a new snapshot
// arrives well within 100 ms of the write settling. Identities are stable across restarts.
import t from 'tap'
import { renameSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { DIR, DirectoryPolicySource, ERR, lookupKernel, MemoryIdentityAllocator, openStore, PROTO, type PolicyError, type PolicyListing, type PolicySource, type PolicyStore, type Snapshot } from '../../policy-store/src/index.js'
import { ENDPOINTS, tempTree } from './helpers.js'

const pol = (name: string, app: string, port: number): string => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}}
spec:
  endpointSelector: {matchLabels: {app: ${app}}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: checkout-service}}]
    toPorts: [{ports: [{port: "${port}", protocol: TCP}]}]
`

function nextSnapshot (store: PolicyStore, timeoutMs = 2000): Promise<{ snap: Snapshot, ms: number }> {
  const start = Date.now()
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error('no snapshot in time')) }, timeoutMs)
    const off = store.onSnapshot((snap) => { clearTimeout(timer); off(); resolve({ snap, ms: Date.now() - start }) })
  })
}

function nextRejection (store: PolicyStore, timeoutMs = 2000): Promise<PolicyError[]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error('no rejection in time')) }, timeoutMs)
    const off = store.onRejected((errs) => { clearTimeout(timer); off(); resolve(errs) })
  })
}

const allowed = (s: Snapshot, app: string, port: number): boolean => {
  const dst = s.endpoints.find((e) => e.name === app && e.namespace === 'default')!
  const src = s.endpoints.find((e) => e.name === 'checkout-service' && e.namespace === 'default')!
  return lookupKernel(s.kernel, dst.id, DIR.INGRESS, src.identity, PROTO.TCP, port)?.verdict === 'allow'
}

t.test('bad edit keeps last good, fix restores, delete removes', async (t) => {
  const dir = tempTree(t, { 'p/a.yaml': pol('a', 'billing-service', 80), 'p/b.yaml': pol('b', 'auditing-service', 80), 'e.yaml': ENDPOINTS })
  const store = await openStore({ policies: join(dir, 'p'), endpoints: join(dir, 'e.yaml') })
  t.teardown(() => store.close())
  t.ok(allowed(store.current(), 'billing-service', 80))

  // A valid edit: new snapshot, fast, with a diff.
  let next = nextSnapshot(store)
  writeFileSync(join(dir, 'p/a.yaml'), pol('a', 'billing-service', 81))
  const first = await next
  let snap = first.snap
  t.ok(first.ms < 500, `snapshot after ${first.ms} ms`) // generous for loaded CI; the debounce is 20-60 ms
  t.ok(allowed(snap, 'billing-service', 81) && !allowed(snap, 'billing-service', 80))

  // A bad edit of a.yaml while b.yaml changes too: a keeps 81, b updates.
  const rejected = nextRejection(store)
  next = nextSnapshot(store)
  writeFileSync(join(dir, 'p/a.yaml'), pol('a', 'billing-service', 99999))
  writeFileSync(join(dir, 'p/b.yaml'), pol('b', 'auditing-service', 82))
  const errs = await rejected
  t.match(errs, [{ code: 'WARDEN_ERR_POLICY_PORT', file: join(dir, 'p/a.yaml'), line: 8 }])
  ;({ snap } = await next)
  t.ok(allowed(snap, 'billing-service', 81), 'last good a.yaml still in force')
  t.ok(allowed(snap, 'auditing-service', 82), 'b.yaml updated')

  // The fix restores; a rename-swap (editor style) is seen.
  next = nextSnapshot(store)
  writeFileSync(join(dir, 'p/.a.yaml.swp'), pol('a', 'billing-service', 83))
  renameSync(join(dir, 'p/.a.yaml.swp'), join(dir, 'p/a.yaml'))
  ;({ snap } = await next)
  t.ok(allowed(snap, 'billing-service', 83) && !allowed(snap, 'billing-service', 81))

  // Deleting removes its rules (billing is then unselected: default allow again).
  next = nextSnapshot(store)
  rmSync(join(dir, 'p/a.yaml'))
  ;({ snap } = await next)
  const billing = snap.endpoints.find((e) => e.name === 'billing-service')!
  t.match(snap.kernel.filter((e) => e.endpointId === billing.id && e.direction === DIR.INGRESS), [{ remoteIdentity: 0, protocol: 0, verdict: 'allow' }])
})

t.test('endpoints file: bad edit kept out, good edit applied with stable ids', async (t) => {
  const dir = tempTree(t, { 'p/a.yaml': pol('a', 'billing-service', 80), 'e.yaml': ENDPOINTS })
  const store = await openStore({ policies: join(dir, 'p'), endpoints: join(dir, 'e.yaml'), stateDir: join(dir, 'state') })
  t.teardown(() => store.close())
  const before = store.current().endpoints.find((e) => e.name === 'billing-service')!
  const rejected = nextRejection(store)
  writeFileSync(join(dir, 'e.yaml'), ENDPOINTS + '  - {name: other, ipv4: 10.42.9.9, interface: lxc-x}\n')
  t.match(await rejected, [{ code: 'WARDEN_ERR_ENDPOINT_DUPLICATE' }])
  const next = nextSnapshot(store)
  // Reorder: drop the first endpoint, add one. Ids of the others must not move.
  const lines = ENDPOINTS.split('\n')
  writeFileSync(join(dir, 'e.yaml'), [lines[0], ...lines.slice(2), '  - {name: new, labels: {app: new}, ipv4: 10.42.9.9, interface: lxc-new}', ''].join('\n'))
  const { snap } = await next
  t.equal(snap.endpoints.find((e) => e.name === 'billing-service'), undefined)
  const co = store.current().endpoints.find((e) => e.name === 'checkout-service' && e.namespace === 'default')!
  t.equal(co.id, 2)
  t.ok(snap.endpoints.find((e) => e.name === 'new')!.id > 9, 'a new endpoint gets a new id')
  t.ok(before.id === 1)
})

t.test('identities and endpoint ids survive a restart with a stateDir', async (t) => {
  const dir = tempTree(t, { 'p/a.yaml': pol('a', 'billing-service', 80), 'e.yaml': ENDPOINTS })
  const opts = { policies: join(dir, 'p'), endpoints: join(dir, 'e.yaml'), stateDir: join(dir, 'state'), watch: false }
  const s1 = await openStore(opts)
  const first = s1.current().endpoints.map((e) => [e.namespace, e.name, e.id, e.identity])
  await s1.close()
  // Restart with the endpoints in reverse order: same numbers.
  const lines = ENDPOINTS.trim().split('\n')
  writeFileSync(join(dir, 'e.yaml'), [lines[0], ...lines.slice(1).reverse(), ''].join('\n'))
  const s2 = await openStore(opts)
  t.teardown(() => s2.close())
  const second = s2.current().endpoints.map((e) => [e.namespace, e.name, e.id, e.identity])
  const sort = (x: unknown[][]): unknown[][] => [...x].sort((a, b) => String(a[1]).localeCompare(String(b[1])) || String(a[0]).localeCompare(String(b[0])))
  t.strictSame(sort(second), sort(first))
})

t.test('a snapshot is emitted even when persisting identities fails: the diffs chain', async (t) => {
  const dir = tempTree(t, { 'p/a.yaml': pol('a', 'billing-service', 80), 'e.yaml': ENDPOINTS })
  class FailingFlush extends MemoryIdentityAllocator {
    failing = false
    override async flush (): Promise<void> { if (this.failing) throw new Error('disk full') }
  }
  const allocator = new FailingFlush()
  const store = await openStore({ policies: join(dir, 'p'), endpoints: join(dir, 'e.yaml'), allocator })
  t.teardown(() => store.close().catch(() => {}))
  allocator.failing = true
  const v1 = store.current().version
  const next = nextSnapshot(store)
  writeFileSync(join(dir, 'p/a.yaml'), pol('a', 'billing-service', 81))
  const { snap } = await next
  t.equal(snap.version, v1 + 1)
  t.ok(allowed(snap, 'billing-service', 81))
  allocator.failing = false
})

t.test('a listing that failed (the directory unreadable) drops nothing; the next good one does', async (t) => {
  const dir = tempTree(t, { 'p/a.yaml': pol('a', 'billing-service', 80), 'p/b.yaml': pol('b', 'auditing-service', 80), 'e.yaml': ENDPOINTS })
  const real = new DirectoryPolicySource(join(dir, 'p'))
  let broken = false
  // the source as it would be while its directory cannot be read: no resources, a listing error
  const source: PolicySource = {
    description: real.description,
    load: async (): Promise<PolicyListing> => broken
      ? { resources: [], listingErrors: [{ code: ERR.READ, file: real.description, line: 0, col: 0, path: '', message: 'cannot read policy directory: EACCES' }] }
      : await real.load(),
    watch: (fn) => real.watch(fn)
  }
  const store = await openStore({ policies: join(dir, 'p'), policySource: source, endpoints: join(dir, 'e.yaml'), allocator: new MemoryIdentityAllocator() })
  t.teardown(() => store.close())
  // a.yaml in force: billing-service is default-deny, port 81 denied
  t.notOk(allowed(store.current(), 'billing-service', 81))
  broken = true
  const rejected = nextRejection(store)
  writeFileSync(join(dir, 'p', 'b.yaml'), pol('b', 'auditing-service', 81))
  t.match(await rejected, [{ message: /cannot read policy directory/ }], 'the listing error is reported')
  t.notOk(allowed(store.current(), 'billing-service', 81), 'a.yaml is not taken for deleted: billing-service stays default-deny')
  broken = false
  rmSync(join(dir, 'p', 'a.yaml'))
  // the write above may still bring a snapshot of its own (a.yaml listed again): wait for the deletion's
  let snap = store.current()
  for (let i = 0; i < 5 && !allowed(snap, 'billing-service', 81); i++) snap = (await nextSnapshot(store)).snap
  t.ok(allowed(snap, 'billing-service', 81), 'once listed, a deleted file goes: no policy selects billing-service')
  t.ok(allowed(snap, 'auditing-service', 81))
})
