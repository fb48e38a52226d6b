// The incremental compiler gives the same snapshot as a cold compile of the same input, after
// any sequence of edits (files, endpoints, learned names, time passing), and its diffs replay
// to exactly the snapshot's kernel and ipcache. Identity numbers and endpoint ids may differ
// between two compilers, so snapshots are compared by labels and names.
import t from 'tap'
import fc from 'fast-check'
import { Compiler } from '../../policy-store/src/compile.js'
import { entryKey } from '../../policy-store/src/compile.js'
import { MemoryIdentityAllocator, type LearnedName, type Snapshot, type SnapshotDiff } from '../../policy-store/src/index.js'
import type { RawEndpoint } from '../../policy-store/src/endpoints.js'
import type { CidrGroup, FilePolicies, PolicyRule } from '../../policy-store/src/model.js'
import { parseYamlString } from '../../policy-store/src/source-file.js'
import { validatePolicyFile } from '../../policy-store/src/validate.js'

const head = (name: string, app: string): string => `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: ${name}}\nspec:\n  endpointSelector: {matchLabels: {app: ${app}}}\n`
const DOCS = [
  head('p0', 'b') + '  ingress:\n  - fromEndpoints: [{matchLabels: {app: a}}]\n    toPorts: [{ports: [{port: "80", protocol: TCP}]}]\n',
  head('p1', 'b') + '  ingress:\n  - fromEndpoints: [{matchLabels: {app: c}}]\n    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/x/.*"}]}}]\n',
  head('p2', 'b') + '  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: a}}]\n',
  head('p3', 'a') + '  egress:\n  - toFQDNs: [{matchPattern: "*.example.com"}]\n    toPorts: [{ports: [{port: "443", protocol: TCP}]}]\n',
  head('p4', 'a') + '  egress:\n  - toCIDRSet: [{cidr: 198.18.0.0/24, except: [198.18.0.6/32]}]\n    toPorts: [{ports: [{port: "443", protocol: TCP}]}]\n',
  head('p5', 'b') + '  egress:\n  - toEntities: [world]\n',
  head('p6', 'd') + '  ingress:\n  - fromEntities: [cluster]\n    toPorts: [{ports: [{port: "9000", endPort: 9010, protocol: ANY}]}]\n',
  head('p7', 'a') + '  egress:\n  - toEndpoints: [{}]\n    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*"}]}}]\n',
  head('p8', 'a') + '  egressDeny:\n  - toCIDR: [198.18.0.5/32]\n',
  'apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p9}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{matchExpressions: [{key: app, operator: In, values: [a, c]}]}]\n    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]\n',
  head('p10', 'c') + '  enableDefaultDeny: {ingress: false}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: b}}]\n    toPorts: [{ports: [{port: "81", protocol: TCP}], rules: {http: [{path: "/y"}]}}]\n',
  head('p11', 'b') + '  egress:\n  - toFQDNs: [{matchName: api.example.com}, {matchPattern: "*.org"}]\n    toPorts: [{ports: [{port: "443", protocol: TCP}]}]\n',
  // named ports (b's own on ingress, the peers' on egress) and CIDR groups
  head('p12', 'b') + '  ingress:\n  - fromEndpoints: [{matchLabels: {app: a}}]\n    toPorts: [{ports: [{port: "http", protocol: TCP}], rules: {http: [{path: "/n"}]}}]\n',
  head('p13', 'a') + '  egress:\n  - toEndpoints: [{matchLabels: {app: b}}]\n    toPorts: [{ports: [{port: "http"}, {port: "7000"}]}]\n',
  head('p14', 'a') + '  egress:\n  - toCIDRSet: [{cidrGroupRef: g1, except: [198.18.0.6/32]}]\n    toPorts: [{ports: [{port: "443", protocol: TCP}]}]\n',
  'apiVersion: cilium.io/v2\nkind: CiliumCIDRGroup\nmetadata: {name: g1}\nspec: {externalCIDRs: [198.18.0.0/24]}\n',
  'apiVersion: cilium.io/v2\nkind: CiliumCIDRGroup\nmetadata: {name: g1}\nspec: {externalCIDRs: [198.18.2.0/24, 10.9.0.2/32]}\n'
]
const EPS: RawEndpoint[] = [
  { name: 'a', namespace: 'default', labels: { app: 'a' }, ipv4: '10.9.0.1', interface: 'lxa', line: 2 },
  { name: 'b', namespace: 'default', labels: { app: 'b' }, ipv4: '10.9.0.2', interface: 'lxb', ports: [{ name: 'http', port: 8080, protocol: 'TCP' }], line: 3 },
  { name: 'c', namespace: 'default', labels: { app: 'c' }, ipv4: '10.9.0.3', interface: 'lxc', line: 4 },
  { name: 'd', namespace: 'default', labels: { app: 'd' }, ipv4: '10.9.0.4', interface: 'lxd', line: 5 },
  { name: 'a2', namespace: 'other', labels: { app: 'a' }, ipv4: '10.9.0.5', interface: 'lxa2', line: 6 },
  { name: 'b2', namespace: 'default', labels: { app: 'b' }, ipv4: '10.9.0.6', interface: 'lxb2', ports: [{ name: 'http', port: 8081, protocol: 'TCP' }], line: 7 }
]
/** Always there, selected by `{}` only: so that few endpoints change in a step (the compiler patches its tables then). */
const FILLER: RawEndpoint[] = Array.from({ length: 12 }, (_, i) => ({ name: `f${i}`, namespace: 'default', labels: { app: `f${i}` }, ipv4: `10.9.1.${i + 1}`, interface: `lxf${i}`, line: 10 + i }))
const NAMES: [string, string[]][] = [
  ['x.example.com.', ['198.18.0.5']], ['y.example.com.', ['198.18.0.6', '198.18.0.7']], ['api.example.com.', ['198.18.1.1']],
  ['z.other.org.', ['198.18.2.2', '198.18.0.5']], ['nothing.net.', ['198.18.3.3']], ['b.example.com.', ['10.9.0.2']]
]

type Op =
  | { kind: 'file', file: number, docs: number[] }
  | { kind: 'delete', file: number }
  | { kind: 'endpoints', present: boolean[], swapC: boolean, movePort: boolean }
  | { kind: 'learned', names: boolean[], expiresIn: number[] }
  | { kind: 'time', by: number }
  | { kind: 'reverse', file: number }
  | { kind: 'tolast', file: number }

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('file' as const), file: fc.integer({ min: 0, max: 2 }), docs: fc.array(fc.integer({ min: 0, max: DOCS.length - 1 }), { maxLength: 5 }) }),
  fc.record({ kind: fc.constant('delete' as const), file: fc.integer({ min: 0, max: 2 }) }),
  fc.record({ kind: fc.constant('endpoints' as const), present: fc.array(fc.boolean(), { minLength: EPS.length, maxLength: EPS.length }), swapC: fc.boolean(), movePort: fc.boolean() }),
  fc.record({ kind: fc.constant('learned' as const), names: fc.array(fc.boolean(), { minLength: NAMES.length, maxLength: NAMES.length }), expiresIn: fc.array(fc.integer({ min: 1, max: 30 }), { minLength: NAMES.length, maxLength: NAMES.length }) }),
  fc.record({ kind: fc.constant('time' as const), by: fc.integer({ min: 1, max: 20 }) }),
  // Not what the directory source does, but the compiler takes any input: the same rules in
  // another order within a file, and a file moved behind the others.
  fc.record({ kind: fc.constant('reverse' as const), file: fc.integer({ min: 0, max: 2 }) }),
  fc.record({ kind: fc.constant('tolast' as const), file: fc.integer({ min: 0, max: 2 }) })
)

/** Like DirectoryPolicySource: a document that did not change keeps its rule objects. */
const docCache = new Map<string, PolicyRule[]>()
const groupCache = new Map<string, CidrGroup[]>()
function filePolicies (file: string, docs: number[]): FilePolicies | null {
  const rules: PolicyRule[] = []
  const cidrGroups: CidrGroup[] = []
  let line = 0
  for (const d of docs) {
    const text = (line === 0 ? '' : '---\n') + DOCS[d]
    const key = `${file}\n${line}\n${text}`
    let rs = docCache.get(key)
    if (rs === undefined) {
      const parsed = parseYamlString(text, file, line, true)
      if ('errors' in parsed) throw new Error(JSON.stringify(parsed.errors))
      const v = validatePolicyFile(parsed)
      if (v.errors.length > 0) throw new Error(JSON.stringify(v.errors))
      docCache.set(key, rs = [...v.policies.rules])
      groupCache.set(key, [...(v.policies.cidrGroups ?? [])])
    }
    rules.push(...rs)
    cidrGroups.push(...(groupCache.get(key) ?? []))
    line += text.split('\n').length - 1
  }
  return docs.length === 0 ? null : { file, rules, policies: docs.length, skipped: 0, ...(cidrGroups.length > 0 ? { cidrGroups } : {}) }
}

/** The snapshot with identities as label sets and endpoints by name. */
function canonical (s: Snapshot): unknown {
  const lab = (id: number): string => id === 0 ? '*' : (s.identities.get(id) ?? ['?' + id]).join(',')
  const ep = (id: number): string => s.endpoints.find((e) => e.id === id)?.name ?? '?' + id
  const ref = (r?: { file: string, line: number, section: string, index: number }): string => r === undefined ? '-' : `${r.file}:${r.line}:${r.section}[${r.index}]`
  const l7 = (tables: Snapshot['http'] | Snapshot['dns']): string[] => [...tables.values()].map((tb) => {
    const pol = (p: { allowAll: boolean, allowAllRule?: { file: string, line: number, section: string, index: number }, rules: readonly unknown[] } | null): string =>
      p === null ? 'null' : `${String(p.allowAll)}/${ref(p.allowAllRule)}/${p.rules.map((r) => ref((r as { rule: { file: string, line: number, section: string, index: number } }).rule)).join(';')}`
    const by = [...tb.byIdentity].map(([id, p]) => `${lab(id)}=>${pol(p)}`).sort()
    return `${ep(tb.endpointId)}|${tb.direction}|${tb.protocol}|${tb.port}-${tb.endPort}|${pol(tb.anyIdentity)}|${by.join(' ')}`
  }).sort()
  return {
    endpoints: s.endpoints.map((e) => `${e.namespace}/${e.name}|${e.identityLabels.join(',')}|${e.ipv4}`),
    kernel: s.kernel.map((e) => `${ep(e.endpointId)}|${e.direction}|${lab(e.remoteIdentity)}|${e.protocol}|${e.port}-${e.endPort}|${e.verdict}|${ref(e.rule)}|${e.reason ?? ''}`).sort(),
    ipcache: s.ipcache.map((e) => `${e.prefix}|${lab(e.identity)}|${e.endpointId === 0 ? '' : ep(e.endpointId)}`).sort(),
    http: l7(s.http),
    dns: l7(s.dns),
    fqdn: s.fqdnSelectors.map((f) => f.key),
    identities: [...s.identities.values()].map((l) => l.join(',')).sort()
  }
}

/** Apply a diff as map writes: additions are writes (upserts), removals deletes by key. */
function replay (state: { kernel: Map<string, string>, ipcache: Map<string, string> }, d: SnapshotDiff, removalsFirst: boolean): void {
  const remove = (): void => {
    for (const e of d.kernelRemoved) state.kernel.delete(entryKey(e))
    for (const e of d.ipcacheRemoved) state.ipcache.delete(e.prefix)
  }
  if (removalsFirst) remove()
  for (const e of d.kernelAdded) state.kernel.set(entryKey(e), e.verdict)
  for (const e of d.ipcacheAdded) state.ipcache.set(e.prefix, `${e.identity}|${e.endpointId}`)
  if (!removalsFirst) remove()
}

/** Added and removed never name the same key; kernelEndpoints names every endpoint touched. */
function exact (d: SnapshotDiff): string[] {
  const problems: string[] = []
  const added = new Set(d.kernelAdded.map(entryKey))
  for (const e of d.kernelRemoved) if (added.has(entryKey(e))) problems.push(`kernel key in both: ${entryKey(e)}`)
  const prefixes = new Set(d.ipcacheAdded.map((e) => e.prefix))
  for (const e of d.ipcacheRemoved) if (prefixes.has(e.prefix)) problems.push(`ipcache prefix in both: ${e.prefix}`)
  const eps = new Set(d.kernelEndpoints)
  for (const e of [...d.kernelAdded, ...d.kernelRemoved]) if (!eps.has(e.endpointId)) problems.push(`endpoint ${e.endpointId} not in kernelEndpoints`)
  return problems
}

t.test('incremental compile = cold compile, and diffs replay to the snapshot', async (t) => {
  let checked = 0
  fc.assert(fc.property(fc.array(op, { minLength: 1, maxLength: 12 }), (ops) => {
    const inc = new Compiler(new MemoryIdentityAllocator())
    const files = new Map<string, FilePolicies>() // insertion order, as the store keeps them
    let endpoints: RawEndpoint[] = [...EPS.slice(0, 4), ...FILLER]
    let learned: LearnedName[] = []
    let now = 1_000_000
    const state = { kernel: new Map<string, string>(), ipcache: new Map<string, string>() }
    const reversed = { kernel: new Map<string, string>(), ipcache: new Map<string, string>() }
    const step = (): void => {
      const input = { endpoints, files: [...files.values()], learned, hostIPs: ['10.9.255.1'], now }
      const { snapshot, diff } = inc.compile(input)
      const cold = new Compiler(new MemoryIdentityAllocator()).compile(input).snapshot
      replay(state, diff, true)
      replay(reversed, diff, false)
      t.same(canonical(snapshot), canonical(cold), JSON.stringify(ops))
      const kernel = new Map(snapshot.kernel.map((e) => [entryKey(e), e.verdict]))
      const ipcache = new Map(snapshot.ipcache.map((e) => [e.prefix, `${e.identity}|${e.endpointId}`]))
      t.same(state.kernel, kernel, 'kernel diff replays')
      t.same(state.ipcache, ipcache, 'ipcache diff replays')
      t.same(reversed.kernel, kernel, 'kernel diff replays, additions first')
      t.same(reversed.ipcache, ipcache, 'ipcache diff replays, additions first')
      t.strictSame(exact(diff), [], 'the diff is exact')
      checked++
    }
    step()
    for (const o of ops) {
      if (o.kind === 'file') {
        const f = filePolicies(`f${o.file}.yaml`, o.docs)
        if (f === null) files.delete(`f${o.file}.yaml`)
        else files.set(`f${o.file}.yaml`, f)
      } else if (o.kind === 'delete') {
        files.delete(`f${o.file}.yaml`)
      } else if (o.kind === 'endpoints') {
        endpoints = [...EPS.filter((_, i) => o.present[i]).map((e) => o.swapC && e.name === 'c'
          ? { ...e, labels: { app: 'd' } }
          : o.movePort && e.name === 'b' ? { ...e, ports: [{ name: 'http', port: 9090, protocol: 'TCP' as const }] } : e), ...FILLER]
      } else if (o.kind === 'learned') {
        learned = NAMES.filter((_, i) => o.names[i]).map(([name, ipv4], i) => ({ name, ipv4, expiresAt: now + o.expiresIn[i] * 1000 }))
      } else if (o.kind === 'reverse' || o.kind === 'tolast') {
        const name = `f${o.file}.yaml`
        const f = files.get(name)
        if (f === undefined) continue
        if (o.kind === 'tolast') files.delete(name)
        files.set(name, o.kind === 'reverse' ? { ...f, rules: [...f.rules].reverse() } : f)
      } else {
        now += o.by * 1000
      }
      step()
    }
  }), { numRuns: 150 })
  t.ok(checked > 300, `${checked} snapshots compared`)
})

t.test('a kernel key whose verdict changes is one write, in kernelAdded only', async (t) => {
  const fileOf = (text: string): FilePolicies => {
    const parsed = parseYamlString(text, 'v.yaml', 0, true)
    if ('errors' in parsed) throw new Error(JSON.stringify(parsed.errors))
    return { file: 'v.yaml', rules: [...validatePolicyFile(parsed).policies.rules], policies: 1, skipped: 0 }
  }
  const allow = head('v', 'b') + '  ingress:\n  - fromEndpoints: [{matchLabels: {app: a}}]\n    toPorts: [{ports: [{port: "80", protocol: TCP}]}]\n'
  const deny = allow + '  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: a}}]\n    toPorts: [{ports: [{port: "80", protocol: TCP}]}]\n'
  const c = new Compiler(new MemoryIdentityAllocator())
  const base = { endpoints: [...EPS, ...FILLER], learned: [], hostIPs: [], now: 1_000_000 }
  const first = c.compile({ ...base, files: [fileOf(allow)] }).snapshot
  const { snapshot, diff } = c.compile({ ...base, files: [fileOf(deny)] })
  const key = (s: Snapshot, verdict: string): string[] => s.kernel.filter((e) => e.port === 80 && e.verdict === verdict).map(entryKey)
  const [allowed] = key(first, 'allow')
  t.ok(allowed !== undefined && key(snapshot, 'deny').includes(allowed), 'the allow on port 80 became a deny at the same key')
  t.strictSame(diff.kernelAdded.filter((e) => entryKey(e) === allowed).map((e) => e.verdict), ['deny'])
  t.strictSame(diff.kernelRemoved.filter((e) => entryKey(e) === allowed), [], 'not also removed: a datapath applying removals last would delete the new value')
  t.strictSame(exact(diff), [])
})
