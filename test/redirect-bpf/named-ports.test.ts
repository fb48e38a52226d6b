// Named ports in the kernel: a rule's `port: "http"` becomes the number of b's container port
// named http (ingress: the selected endpoint's own ports, as Kubernetes and Cilium resolve it,
// pkg/policy/l4.go), and follows an edit of b's ports in the endpoints file through the store's
// diff. Real connections between lab namespaces.
// Needs root: netns wdp30-*, veths wdp30*, pins /sys/fs/bpf/wdp30, table 2130; removed in teardown.
import t from 'tap'
import { pino } from 'pino'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { datapathLab, eventually, isRoot } from '../helpers/lab-fixture.js'
import { connect, startServer } from '../helpers/lab-net.js'
import { openStore, type Snapshot, type SnapshotDiff } from '../../policy-store/src/index.js'

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-ingress-named-port}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "http", protocol: TCP}]}]
`

t.test('a named port is enforced at the endpoint\'s container port, and moves with it', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 30, ['a', 'b'])
  for (const port of [8080, 9090]) {
    const s = await startServer(lab.ns('b'), 'tcp', port, 'b')
    t.teardown(s.stop)
  }
  const dir = mkdtempSync(join(tmpdir(), 'wdq-named-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  mkdirSync(join(dir, 'policies'))
  writeFileSync(join(dir, 'policies', 'b.yaml'), POLICY)
  const endpoints = (httpPort: number): string => 'endpoints:\n' + lab.eps.map((e) =>
    `  - {name: ${e.name}, labels: {app: ${e.name}}, ipv4: ${e.ipv4}, interface: ${e.iface}` +
    (e.name === 'b' ? `, ports: [{name: http, port: ${httpPort}, protocol: TCP}]}\n` : '}\n')).join('')
  writeFileSync(join(dir, 'endpoints.yaml'), endpoints(8080))
  const store = await openStore({ policies: join(dir, 'policies'), endpoints: join(dir, 'endpoints.yaml'), watch: true, logger: pino({ level: 'silent' }) })
  t.teardown(async () => { await store.close() })
  let chain: Promise<void> = lab.dp.apply(store.current())
  let applied: Snapshot = store.current()
  store.onSnapshot((snap: Snapshot, diff: SnapshotDiff) => { chain = chain.then(async () => { await lab.dp.apply(snap, diff); applied = snap }) })
  await chain

  const [ok, other] = await Promise.all([
    connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080),
    connect(lab.ns('a'), 'tcp', lab.ip('b'), 9090, 1000)
  ])
  t.match(ok, { ok: true, reply: { from: 'b' } }, 'http = 8080: allowed')
  t.strictSame(other, { ok: false, error: 'timeout' }, '9090: dropped')

  const before = applied.version
  writeFileSync(join(dir, 'endpoints.yaml'), endpoints(9090))
  await eventually(() => applied.version > before, 5000)
  await chain
  t.ok(applied.version > before, 'the port edit reached the kernel')
  const [moved, old] = await Promise.all([
    connect(lab.ns('a'), 'tcp', lab.ip('b'), 9090),
    connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080, 1000)
  ])
  t.match(moved, { ok: true, reply: { from: 'b' } }, 'http = 9090: allowed')
  t.strictSame(old, { ok: false, error: 'timeout' }, '8080: dropped now')
})
