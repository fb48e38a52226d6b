// CiliumCIDRGroup objects in the policy directory and `cidrGroupRef` in fromCIDRSet/toCIDRSet
// (pkg/k8s/apis/cilium.io/v2/cidrgroups_types.go; pkg/policy/api/cidr.go, CIDRRule.CIDRGroupRef;
// Documentation/security/policy/language.rst, "CIDR Groups"): the rule selects the group's
// CIDRs, `except` still carves out, a group nobody defines selects nothing, and groups are
// watched like policies: an edit recompiles, a bad group is reported with file:line and its
// last good version stays in force.
import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { openStore, type PolicyError, type PolicyStore, type Snapshot } from '../../policy-store/src/index.js'
import { compile, ENDPOINTS, tempTree, verdict } from './helpers.js'
import { runCli } from '../helpers/cli.js'

const group = (name: string, cidrs: string[], apiVersion = 'cilium.io/v2'): string =>
  `apiVersion: ${apiVersion}\nkind: CiliumCIDRGroup\nmetadata:\n  name: ${name}\nspec:\n  externalCIDRs: [${cidrs.map((c) => JSON.stringify(c)).join(', ')}]\n`
const EGRESS = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: to-partners
spec:
  endpointSelector: {matchLabels: {app: checkout-service}}
  egress:
  - toCIDRSet:
    - cidrGroupRef: partners
      except: [203.0.113.128/25]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`

t.test('cidrGroupRef selects the group\'s CIDRs, minus except', async (t) => {
  const s = await compile(t, { 'g.yaml': group('partners', ['203.0.113.0/24', '198.51.100.7/32']), 'p.yaml': EGRESS })
  const v = (to: string): string => verdict(s, { from: 'checkout-service', to, port: 443 })
  t.equal(v('203.0.113.10'), 'allowed L4')
  t.equal(v('198.51.100.7'), 'allowed L4')
  t.equal(v('203.0.113.200'), 'denied L3', 'except')
  t.equal(v('198.51.100.8'), 'denied L3', 'outside the group')
  t.equal(verdict(s, { from: 'checkout-service', to: '203.0.113.10', port: 80 }), 'denied L4')
})

t.test('one file may hold a group and the policy; v2alpha1 is accepted', async (t) => {
  const s = await compile(t, { 'both.yaml': group('partners', ['203.0.113.0/24'], 'cilium.io/v2alpha1') + '---\n' + EGRESS })
  t.equal(verdict(s, { from: 'checkout-service', to: '203.0.113.10', port: 443 }), 'allowed L4')
})

t.test('warden check counts the groups', async (t) => {
  const dir = tempTree(t, { 'p/g.yaml': group('partners', ['203.0.113.0/24']), 'p/p.yaml': EGRESS })
  const r = await runCli(['check', '--policies', join(dir, 'p')])
  t.equal(r.code, 0)
  t.match(r.out, /ok: 2 file\(s\), 1 policy, 1 rule\(s\), 1 CIDR group\(s\)/)
})

t.test('a group nobody defines selects nothing', async (t) => {
  const s = await compile(t, { 'p.yaml': EGRESS })
  t.equal(verdict(s, { from: 'checkout-service', to: '203.0.113.10', port: 443 }), 'denied L3')
})

t.test('bad groups are errors with their position', async (t) => {
  for (const [name, text, code, path] of [
    ['bad CIDR', group('partners', ['203.0.113.0/33']), 'WARDEN_ERR_POLICY_CIDR', 'spec.externalCIDRs[0]'],
    ['no externalCIDRs', 'apiVersion: cilium.io/v2\nkind: CiliumCIDRGroup\nmetadata: {name: partners}\nspec: {}\n', 'WARDEN_ERR_POLICY_REQUIRED', 'spec'],
    ['namespaced', 'apiVersion: cilium.io/v2\nkind: CiliumCIDRGroup\nmetadata: {name: partners, namespace: x}\nspec: {externalCIDRs: []}\n', 'WARDEN_ERR_POLICY_VALUE', 'metadata.namespace'],
    ['cidr and cidrGroupRef', EGRESS.replace('- cidrGroupRef: partners', '- {cidr: 10.0.0.0/8, cidrGroupRef: partners}').replace('      except: [203.0.113.128/25]\n', ''), 'WARDEN_ERR_POLICY_VALUE', 'spec.egress[0].toCIDRSet[0]'],
    ['cidrGroupSelector', EGRESS.replace('- cidrGroupRef: partners', '- cidrGroupSelector: {matchLabels: {a: b}}').replace('      except: [203.0.113.128/25]\n', ''), 'WARDEN_ERR_POLICY_UNSUPPORTED', 'spec.egress[0].toCIDRSet[0].cidrGroupSelector']
  ] as const) {
    await t.rejects(compile(t, { 'g.yaml': text }), new RegExp(`${code}.*${path.replace(/[.[\]]/g, '\\$&')}"`), name)
  }
})

t.test('watched: an edit recompiles; a bad edit is reported with file:line and the last good stays', async (t) => {
  const dir = tempTree(t, { 'p/g.yaml': group('partners', ['203.0.113.0/24']), 'p/p.yaml': EGRESS, 'e.yaml': ENDPOINTS })
  const store = await openStore({ policies: join(dir, 'p'), endpoints: join(dir, 'e.yaml') })
  t.teardown(() => store.close())
  const v = (s: Snapshot, to: string): string => verdict(s, { from: 'checkout-service', to, port: 443 })
  t.equal(v(store.current(), '192.0.2.1'), 'denied L3')
  let next = nextSnapshot(store)
  writeFileSync(join(dir, 'p/g.yaml'), group('partners', ['192.0.2.0/24']))
  let s = await next
  t.equal(v(s, '192.0.2.1'), 'allowed L4', 'the new CIDR is allowed')
  t.equal(v(s, '203.0.113.10'), 'denied L3', 'the old one is not')
  const rejected = nextRejection(store)
  writeFileSync(join(dir, 'p/g.yaml'), group('partners', ['192.0.2.0/24', 'nonsense']))
  const errs = await rejected
  t.match(errs, [{ code: 'WARDEN_ERR_POLICY_CIDR', file: join(dir, 'p/g.yaml'), line: 6, path: 'spec.externalCIDRs[1]' }])
  t.equal(v(store.current(), '192.0.2.1'), 'allowed L4', 'the last good group stays in force')
  next = nextSnapshot(store)
  writeFileSync(join(dir, 'p/g.yaml'), group('partners', ['203.0.113.0/24']))
  s = await next
  t.equal(v(s, '203.0.113.10'), 'allowed L4', 'a fix applies')
})

function nextSnapshot (store: PolicyStore): Promise<Snapshot> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error('no snapshot in time')) }, 3000)
    const off = store.onSnapshot((snap) => { clearTimeout(timer); off(); resolve(snap) })
  })
}

function nextRejection (store: PolicyStore): Promise<PolicyError[]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error('no rejection in time')) }, 3000)
    const off = store.onRejected((errs) => { clearTimeout(timer); off(); resolve(errs) })
  })
}
