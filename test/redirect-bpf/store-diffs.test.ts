// The policy store's snapshots and diffs, applied in order as the agent does: after the first
// (full) apply every edit goes through the diff path, and the kernel's policy map and ipcache
// then hold exactly what the snapshot says.
// Needs root: netns wdp24-*, pins /sys/fs/bpf/wdp24, table 2124; removed in teardown.
import t from 'tap'
import { pino } from 'pino'
import { createMapRef, objGet, RawMap } from 'bpf'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { datapathLab, eventually, isRoot } from '../helpers/lab-fixture.js'
import { openStore, type Snapshot, type SnapshotDiff } from '../../policy-store/src/index.js'
import { compilePolicy } from '../../redirect-bpf/src/policy.js'
import { dumpMap } from '../../redirect-bpf/src/sync.js'
import { encodeIpcacheKey, encodeIpcacheValue, SIZE } from '../../redirect-bpf/src/layout.js'

const policy = (port: number, extra = ''): string => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "${port}", protocol: TCP}]}]
${extra}`

t.test('store diffs are applied as diffs', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 24, ['a', 'b'])
  const records: Array<{ mode?: string, why?: string, version?: number }> = []
  lab.opts.logger = pino({ level: 'debug' }, { write: (line: string) => { records.push(JSON.parse(line) as { mode?: string }) } })
  lab.opts.fullSyncIntervalMs = 0
  await lab.reopen()
  const dir = mkdtempSync(join(tmpdir(), 'wkt-store-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const policies = join(dir, 'policies')
  mkdirSync(policies)
  writeFileSync(join(dir, 'endpoints.yaml'), 'endpoints:\n' + lab.eps.map((e) =>
    `  - {name: ${e.name}, labels: {app: ${e.name}}, ipv4: ${e.ipv4}, interface: ${e.iface}}\n`).join(''))
  writeFileSync(join(policies, 'b.yaml'), policy(8080))
  const store = await openStore({ policies, endpoints: join(dir, 'endpoints.yaml'), watch: true, logger: pino({ level: 'silent' }) })
  t.teardown(async () => { await store.close() })

  // the agent's chain: the current snapshot whole, then each (snapshot, diff) in order
  let chain: Promise<void> = lab.dp.apply(store.current())
  let applied: Snapshot = store.current()
  store.onSnapshot((snap: Snapshot, diff: SnapshotDiff) => {
    chain = chain.then(async () => { await lab.dp.apply(snap, diff); applied = snap })
  })
  await chain

  const policyMap = new RawMap(createMapRef(objGet(`${lab.opts.bpffs}/l7p_policy`), { transfer: true }))
  const ipcacheMap = new RawMap(createMapRef(objGet(`${lab.opts.bpffs}/l7p_ipcache`), { transfer: true }))
  t.teardown(() => { policyMap.ref.close(); ipcacheMap.ref.close() })
  const kernelMatches = (snap: Snapshot): void => {
    t.strictSame(dumpMap(policyMap), compilePolicy(snap.kernel), `v${snap.version}: the policy map is the snapshot's`)
    const ipc = new Map(snap.ipcache.map((e) => [
      encodeIpcacheKey(Buffer.alloc(SIZE.ipcacheKey), e.prefix).toString('latin1'),
      encodeIpcacheValue(Buffer.alloc(SIZE.ipcacheValue), { identity: e.identity, endpointId: e.endpointId }).toString('latin1')
    ]))
    t.strictSame(dumpMap(ipcacheMap), ipc, `v${snap.version}: the ipcache is the snapshot's`)
  }
  kernelMatches(applied)

  for (const [i, text] of [
    policy(9090),
    policy(9090, '  - fromEndpoints: [{matchLabels: {app: a}}]\n    toPorts: [{ports: [{port: "7000", endPort: 7100, protocol: TCP}]}]\n'),
    policy(9090, '  - fromCIDR: [192.0.2.0/24]\n'),
    // the same entry (a's identity, TCP 9090) changes verdict: allow -> deny -> allow
    policy(9090, '  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: a}}]\n    toPorts: [{ports: [{port: "9090", protocol: TCP}]}]\n'),
    policy(9090),
    policy(8080)
  ].entries()) {
    const before = applied.version
    writeFileSync(join(policies, 'b.yaml'), text)
    await eventually(() => applied.version > before, 5000)
    await chain
    t.ok(applied.version > before, `edit ${i}: a new snapshot reached the datapath`)
    kernelMatches(applied)
  }
  const modes = records.filter((r) => r.mode !== undefined).map((r) => r.mode)
  t.equal(modes[0], 'full', 'the first apply is a full sync')
  t.ok(modes.length >= 5, `${modes.length} applies`)
  t.strictSame(modes.slice(1), modes.slice(1).map(() => 'diff'), 'every later one applies its diff')
})
