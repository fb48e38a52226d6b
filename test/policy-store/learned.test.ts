// setLearnedNames recompiles only when the effective set changes: same names and IPs in any
// order is a no-op (no snapshot), a new IP, a name gone, a name expired or given twice with
// other IPs is a change. Runs on every DNS answer, so "no-op" matters.
import t from 'tap'
import { cpSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { openStore, type LearnedName } from '../../policy-store/src/index.js'

const fixtures = fileURLToPath(new URL('../fixtures/policies/', import.meta.url))
const opts = { policies: fixtures + 'seed', endpoints: fixtures + 'endpoints/seed.yaml', watch: false }

t.test('the effective set decides', async (t) => {
  const store = await openStore(opts)
  t.teardown(() => store.close())
  let emitted = 0
  store.onSnapshot(() => { emitted++ })
  const later = Date.now() + 60_000
  const gh = (ips: string[], expiresAt = later): LearnedName => ({ name: 'api.github.com.', ipv4: ips, expiresAt })
  const other: LearnedName = { name: 'x.example.', ipv4: ['203.0.113.9'], expiresAt: later }
  const v1 = store.setLearnedNames([gh(['140.82.112.5', '140.82.112.6']), other]).version
  t.equal(emitted, 1)
  t.equal(store.setLearnedNames([other, gh(['140.82.112.6', '140.82.112.5'])]).version, v1, 'same set, other order: no-op')
  t.equal(store.setLearnedNames([gh(['140.82.112.6', '140.82.112.5'], later + 5000), other]).version, v1, 'a later expiry alone: no-op')
  t.equal(emitted, 1)
  const v2 = store.setLearnedNames([gh(['140.82.112.5', '140.82.112.6', '140.82.112.7']), other]).version
  t.ok(v2 > v1, 'a new IP: new snapshot')
  t.ok(store.current().ipcache.some((e) => e.prefix === '140.82.112.7/32'))
  const v3 = store.setLearnedNames([gh(['140.82.112.5', '140.82.112.6', '140.82.112.7'])]).version
  t.ok(v3 > v2, 'a name gone: new snapshot')
  const v4 = store.setLearnedNames([gh(['140.82.112.5', '140.82.112.6', '140.82.112.7']), gh(['140.82.112.8'])]).version
  t.ok(v4 > v3, 'a name given twice with more IPs: new snapshot')
  t.ok(store.current().ipcache.some((e) => e.prefix === '140.82.112.8/32'))
  t.equal(store.setLearnedNames([gh(['140.82.112.8']), gh(['140.82.112.7', '140.82.112.5', '140.82.112.6'])]).version, v4, 'twice, other order: no-op')
  const v5 = store.setLearnedNames([gh(['140.82.112.5'], Date.now() - 1)]).version
  t.ok(v5 > v4, 'only an expired name left: new snapshot')
  t.notOk(store.current().ipcache.some((e) => e.prefix.startsWith('140.82.112.')), 'expired names are not in the ipcache')
  t.equal(emitted, 5)
})

t.test('a renewed expiry is kept although nothing recompiles, and a policy edit judges by it', async (t) => {
  const dir = t.testdir({})
  cpSync(fixtures + 'seed', dir, { recursive: true })
  const store = await openStore({ ...opts, policies: dir, watch: true })
  t.teardown(() => store.close())
  const gh = (expiresAt: number): LearnedName => ({ name: 'api.github.com.', ipv4: ['140.82.112.5'], expiresAt })
  const v1 = store.setLearnedNames([gh(Date.now() + 150)]).version
  t.equal(store.setLearnedNames([gh(Date.now() + 60_000)]).version, v1, 'the renewal alone makes no snapshot')
  await new Promise((resolve) => setTimeout(resolve, 300))
  const edited = new Promise<string>((resolve) => {
    store.onSnapshot(() => resolve('snapshot'))
    store.onRejected((errors) => resolve(errors.map((e) => e.message).join('; ')))
    setTimeout(() => resolve('no snapshot in 5 s'), 5000)
  })
  writeFileSync(join(dir, 'zz-unrelated.yaml'), 'apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: unrelated}\nspec:\n  endpointSelector: {matchLabels: {app: nobody}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: somebody}}]}]\n')
  t.equal(await edited, 'snapshot', 'the edit recompiled')
  t.ok(store.current().ipcache.some((e) => e.prefix === '140.82.112.5/32'), 'the renewed address is still in the ipcache after the edit')
})

t.test('an address only a DNS answer gave is marked learnedOnly; one a rule also names is not', async (t) => {
  const dir = t.testdir({})
  cpSync(fixtures + 'seed', dir, { recursive: true })
  writeFileSync(join(dir, 'zz-cidr.yaml'), 'apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: cidr}\nspec:\n  endpointSelector: {matchLabels: {app: nobody}}\n  egressDeny: [{toCIDR: [140.82.112.6/32]}]\n')
  const store = await openStore({ ...opts, policies: dir })
  t.teardown(() => store.close())
  store.setLearnedNames([{ name: 'api.github.com.', ipv4: ['140.82.112.5', '140.82.112.6'], expiresAt: Date.now() + 60_000 }])
  const entry = (p: string): { learnedOnly?: true, identity: number } | undefined => store.current().ipcache.find((e) => e.prefix === p)
  t.equal(entry('140.82.112.5/32')?.learnedOnly, true, 'learned only')
  const named = entry('140.82.112.6/32')
  t.ok(named !== undefined && named.learnedOnly === undefined, 'named by a rule: the datapath ranks it with the CIDR prefixes')
  t.ok(store.current().identities.get(named?.identity ?? 0)?.includes('fqdn:matchName:api.github.com.'), 'and it still carries the name it was learned by')
})
