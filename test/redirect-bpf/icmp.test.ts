// `icmps` rules in the kernel, with real ping between lab namespaces: b admits ICMP echo
// requests (type 8) from a only; c is allowed another type (timestamp) and its echo requests
// are dropped; b's egress is default deny, so its echo replies pass only as replies of a
// tracked flow. Cilium: pkg/policy/api/icmp.go (an ICMP type is keyed as the entry's port),
// cilium-cli/connectivity/manifests/echo-ingress-icmp.yaml (type 8 from the other client).
// Needs root: netns wdp31-*, veths wdp31*, pins /sys/fs/bpf/wdp31, table 2131; removed in teardown.
import t from 'tap'
import { pino } from 'pino'
import { execFile } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { datapathLab, eventually, isRoot } from '../helpers/lab-fixture.js'
import { openStore } from '../../policy-store/src/index.js'
import type { FlowEvent } from '../../redirect-bpf/src/index.js'

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-icmp}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    icmps: [{fields: [{type: 8, family: IPv4}]}]
  - fromEndpoints: [{matchLabels: {app: c}}]
    icmps: [{fields: [{type: Timestamp}]}]
  egress: [{}]
`

/** One echo request from `ns` to `ip`: true when the reply came back within a second. */
function ping (ns: string, ip: string): Promise<boolean> {
  return new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', ns, 'ping', '-n', '-c', '1', '-W', '1', ip], (err) => resolve(err === null))
  })
}

t.test('icmps: echo requests by type and peer, replies through conntrack', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 31, ['a', 'b', 'c'])
  const flows: FlowEvent[] = []
  lab.dp.onFlow((ev) => flows.push(ev))
  const dir = mkdtempSync(join(tmpdir(), 'wdq-icmp-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  mkdirSync(join(dir, 'policies'))
  writeFileSync(join(dir, 'policies', 'b.yaml'), POLICY)
  writeFileSync(join(dir, 'endpoints.yaml'), 'endpoints:\n' + lab.eps.map((e) =>
    `  - {name: ${e.name}, labels: {app: ${e.name}}, ipv4: ${e.ipv4}, interface: ${e.iface}}\n`).join(''))
  const store = await openStore({ policies: join(dir, 'policies'), endpoints: join(dir, 'endpoints.yaml'), watch: false, logger: pino({ level: 'silent' }) })
  t.teardown(async () => { await store.close() })
  await lab.dp.apply(store.current())

  t.ok(await ping(lab.ns('a'), lab.ip('b')), 'a -> b echo request (type 8 allowed), the reply returns')
  t.notOk(await ping(lab.ns('c'), lab.ip('b')), 'c -> b: c may send timestamps, not echo requests')
  t.notOk(await ping(lab.ns('b'), lab.ip('a')), 'b -> a: b\'s egress is default deny')
  t.ok(await ping(lab.ns('a'), lab.ip('c')), 'a -> c: no policy selects them')
  await eventually(() => flows.some((f) => f.verdict === 'dropped' && f.srcIp === lab.ip('c') && f.dstIp === lab.ip('b')))
  t.match(flows.find((f) => f.verdict === 'dropped' && f.srcIp === lab.ip('c') && f.dstIp === lab.ip('b')),
    { reason: 'drop_policy', direction: 'ingress', protocol: 1 }, 'the drop is an ingress policy event')
})
