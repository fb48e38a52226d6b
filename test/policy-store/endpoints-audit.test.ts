// `audit: true` in the endpoints file and the node-wide audit flag: parsed strictly, carried on the
// endpoint and on its ipcache /32 (where the kernel reads it), and a toggle is a change the
// datapath applies (the endpoint and its ipcache entry are rewritten).
import t from 'tap'
import { join } from 'node:path'
import { loadSnapshot } from '../../policy-store/src/index.js'
import { Compiler } from '../../policy-store/src/compile.js'
import { MemoryIdentityAllocator } from '../../policy-store/src/index.js'
import { tempTree } from './helpers.js'

const eps = (audit: string): string => `endpoints:
  - {name: billing, labels: {app: billing}, ipv4: 10.42.0.10, interface: lxc-billing${audit}}
  - {name: checkout, labels: {app: checkout}, ipv4: 10.42.0.11, interface: lxc-checkout}
`

t.test('parsed strictly', async (t) => {
  const dir = tempTree(t, { 'policies/.keep': '', 'ok.yaml': eps(', audit: true'), 'bad.yaml': eps(', audit: "yes"') })
  const ok = await loadSnapshot({ policies: join(dir, 'policies'), endpoints: join(dir, 'ok.yaml') })
  t.strictSame(ok.errors, [])
  t.equal(ok.snapshot.endpoints.find((e) => e.name === 'billing')?.audit, true)
  t.equal(ok.snapshot.endpoints.find((e) => e.name === 'checkout')?.audit, undefined)
  t.match(ok.snapshot.ipcache.find((e) => e.prefix === '10.42.0.10/32'), { audit: true }, 'on the ipcache /32 too')
  t.equal(ok.snapshot.ipcache.find((e) => e.prefix === '10.42.0.11/32')?.audit, undefined)
  const bad = await loadSnapshot({ policies: join(dir, 'policies'), endpoints: join(dir, 'bad.yaml') })
  t.match(bad.errors, [{ code: 'WARDEN_ERR_POLICY_TYPE', path: 'endpoints[0].audit', message: /must be true or false, got string/ }])
})

t.test('node-wide: every endpoint audits', async (t) => {
  const dir = tempTree(t, { 'policies/.keep': '', 'e.yaml': eps('') })
  const { snapshot } = await loadSnapshot({ policies: join(dir, 'policies'), endpoints: join(dir, 'e.yaml'), auditAll: true })
  t.strictSame(snapshot.endpoints.map((e) => e.audit), [true, true])
})

t.test('a toggle rewrites the endpoint and its ipcache entry', async (t) => {
  const c = new Compiler(new MemoryIdentityAllocator())
  const raw = (audit: boolean): Parameters<Compiler['compile']>[0]['endpoints'] => [
    { name: 'billing', namespace: 'default', labels: { app: 'billing' }, ipv4: '10.42.0.10', interface: 'lxc-billing', line: 2, ...(audit ? { audit: true } : {}) }
  ]
  const input = (audit: boolean): Parameters<Compiler['compile']>[0] => ({ endpoints: raw(audit), files: [], learned: [], hostIPs: [], now: 0 })
  c.compile(input(false))
  const on = c.compile(input(true)).diff
  t.match(on.endpointsAdded, [{ name: 'billing', audit: true }])
  t.match(on.ipcacheAdded, [{ prefix: '10.42.0.10/32', audit: true }])
  const off = c.compile(input(false)).diff
  t.match(off.endpointsAdded, [{ name: 'billing' }])
  t.equal(off.endpointsAdded[0]?.audit, undefined)
  t.equal(off.ipcacheAdded.length, 1, 'the ipcache entry is rewritten without the flag')
})
