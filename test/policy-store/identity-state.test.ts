// The allocator's state across restarts (release times kept, version 1 files migrated) and the
// reference counting of the node-local CIDR and FQDN identities.
import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { FileIdentityAllocator, MemoryIdentityAllocator } from '../../policy-store/src/identity.js'
import { openStore } from '../../policy-store/src/index.js'
import { tempTree } from './helpers.js'

const H = 3600_000
const A = ['k8s:app=a', 'k8s:io.kubernetes.pod.namespace=default']
const B = ['k8s:app=b', 'k8s:io.kubernetes.pod.namespace=default']
const C = ['k8s:app=c', 'k8s:io.kubernetes.pod.namespace=default']
/** The parts of identities.json these tests read: [labels, number, unused since or null]. */
type StateFile = { version: number, identities: Array<[string, number, number | null]> }

t.test('a restart keeps numbers and the time they became unused', async (t) => {
  const dir = tempTree(t, {})
  const t0 = 1_000 * H
  const a1 = await FileIdentityAllocator.open(dir, { releaseGraceMs: 2 * H, now: t0 })
  t.equal(a1.acquireIdentity(A, t0), 256)
  t.equal(a1.acquireIdentity(B, t0), 257)
  t.equal(a1.acquireEndpointId('default/a', t0), 1)
  a1.releaseIdentity(A, t0 + H) // unused from t0 + 1h: released at t0 + 3h
  a1.releaseEndpointId('default/a', t0 + H)
  await a1.flush()
  const state = JSON.parse(readFileSync(join(dir, 'identities.json'), 'utf8')) as StateFile
  t.equal(state.version, 2)
  t.strictSame(state.identities, [[A.join('\n'), 256, t0 + H], [B.join('\n'), 257, null]])

  // Restarted 90 minutes later: A is still reserved for 30 minutes; B (held when written) is
  // unused from the restart on, until its holder takes it again.
  const a2 = await FileIdentityAllocator.open(dir, { releaseGraceMs: 2 * H, now: t0 + 2.5 * H })
  t.equal(a2.acquireIdentity(C, t0 + 2.5 * H), 258, 'A\'s number is not handed out within its grace period')
  t.equal(a2.acquireEndpointId('default/c', t0 + 2.5 * H), 2)
  t.equal(a2.acquireIdentity(['k8s:app=d'], t0 + 3 * H), 256, 'after it, the lowest free number is reused')
  t.equal(a2.acquireEndpointId('default/d', t0 + 3 * H), 1)
  t.equal(a2.acquireIdentity(B, t0 + 3 * H), 257, 'B keeps its number within its grace period')
  await a2.collect(t0 + 10 * H)
  await a2.flush()
  const after = JSON.parse(readFileSync(join(dir, 'identities.json'), 'utf8')) as StateFile
  t.strictSame(after.identities.map((e) => e[1]).sort(), [256, 257, 258], 'released numbers leave the file; held ones stay')
})

t.test('a version 1 state file is migrated, not refused', async (t) => {
  const dir = tempTree(t, { 'identities.json': JSON.stringify({ version: 1, identities: { [A.join('\n')]: 256, [B.join('\n')]: 300 }, endpoints: { 'default/a': 1, 'default/old': 7 } }) })
  const t0 = 5_000 * H
  const a = await FileIdentityAllocator.open(dir, { releaseGraceMs: H, now: t0 })
  t.equal(a.acquireIdentity(A, t0), 256, 'old numbers are kept')
  t.equal(a.acquireEndpointId('default/a', t0), 1)
  t.equal(a.acquireIdentity(C, t0), 257, 'gaps are free')
  t.equal(a.acquireEndpointId('default/new', t0), 2)
  await a.flush()
  t.equal((JSON.parse(readFileSync(join(dir, 'identities.json'), 'utf8')) as StateFile).version, 2, 'rewritten as version 2')
  // Unused numbers of the old file count as unused from the migration: released one grace period later.
  t.equal(a.acquireEndpointId('default/x', t0 + 2 * H), 3)
  t.equal(a.sizes.endpoints, 3, 'default/old was released')
  t.equal(a.acquireIdentity(['k8s:app=e'], t0 + 2 * H), 258)
  t.equal(a.acquireIdentity(['k8s:app=f'], t0 + 2 * H), 259)
  t.ok(a.sizes.identities === 4, 'B was released')

  writeFileSync(join(dir, 'identities.json'), '{"version":2,"identities":[["a",1,null]],"endpoints":[],"localIdentities":[]}')
  await t.rejects(FileIdentityAllocator.open(dir), { code: 'WARDEN_ERR_STATE', message: /corrupt identity state/ }, 'an out-of-range number is refused')
})

t.test('exhaustion is an error naming the pool, and numbers come back after the grace period', async (t) => {
  const a = new MemoryIdentityAllocator({ releaseGraceMs: 1000 })
  for (let i = 1; i <= 65535; i++) a.acquireEndpointId(`ns/p${i}`, 0)
  t.throws(() => a.acquireEndpointId('ns/more', 0), { code: 'WARDEN_ERR_IDENTITY_EXHAUSTED', message: /endpoint id/ })
  a.releaseEndpointId('ns/p10', 0)
  a.releaseEndpointId('ns/p5', 0)
  t.throws(() => a.acquireEndpointId('ns/more', 999), { code: 'WARDEN_ERR_IDENTITY_EXHAUSTED' }, 'not before the grace period')
  t.equal(a.acquireEndpointId('ns/p5', 999), 5, 'the same key within the grace period: the same number')
  t.equal(a.acquireEndpointId('ns/more', 1000), 10)
})

const FQDN_POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toFQDNs: [{matchPattern: "*.example.com"}]
  - toCIDR: [192.0.2.0/24]
`

t.test('CIDR and learned FQDN identities are released when nothing refers to them', async (t) => {
  const dir = tempTree(t, { 'p/a.yaml': FQDN_POLICY, 'e.yaml': 'endpoints:\n  - {name: a, labels: {app: a}, ipv4: 10.1.0.1, interface: lxa}\n' })
  let now = 10_000 * H
  const alloc = new MemoryIdentityAllocator({ releaseGraceMs: H })
  const store = await openStore({ policies: join(dir, 'p'), endpoints: join(dir, 'e.yaml'), allocator: alloc, watch: false, clock: () => now })
  t.teardown(() => store.close())
  const local = (): Map<string, number> => new Map(store.current().ipcache.filter((e) => e.identity >= 1 << 24).map((e) => [e.prefix, e.identity]))
  t.strictSame([...local().keys()], ['192.0.2.0/24'])
  t.equal(alloc.sizes.localIdentities, 1)
  const name = (n: string, ips: string[]): { name: string, ipv4: string[], expiresAt: number } => ({ name: n, ipv4: ips, expiresAt: now + 600_000 })
  store.setLearnedNames([name('x.example.com.', ['198.51.100.1']), name('y.example.com.', ['198.51.100.2'])])
  const learned = local()
  t.equal(learned.size, 3)
  t.equal(alloc.sizes.localIdentities, 3)
  // y's address is no longer referred to: its number is unused, then released after an hour.
  now += 1000
  store.setLearnedNames([name('x.example.com.', ['198.51.100.1'])])
  t.strictSame([...local().keys()].sort(), ['192.0.2.0/24', '198.51.100.1/32'])
  t.equal(alloc.sizes.localIdentities, 3, 'within its grace period it stays reserved')
  now += H
  await alloc.collect(now)
  t.equal(alloc.sizes.localIdentities, 2, 'released after it')
  // A new address takes the lowest free number: y's.
  store.setLearnedNames([name('x.example.com.', ['198.51.100.1']), name('z.example.com.', ['198.51.100.3'])])
  t.equal(local().get('198.51.100.3/32'), learned.get('198.51.100.2/32'))
  t.equal(local().get('198.51.100.1/32'), learned.get('198.51.100.1/32'), 'a referenced one keeps its number')
  // Learned names all expire: only the CIDR stays referenced.
  now += H
  store.setLearnedNames([])
  await alloc.collect(now + H)
  t.equal(alloc.sizes.localIdentities, 1)
})
