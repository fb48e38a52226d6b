// `icmps` rules: ICMP types by number or by Cilium's name, IPv4 family (pkg/policy/api/icmp.go:
// ICMPField, icmpIpv4TypeNameToCode, a type is keyed as the port of an ICMP entry;
// pkg/policy/api/rule_validation.go: icmps and toPorts are not combined in one rule; Cilium's
// connectivity test cilium-cli/connectivity/manifests/echo-ingress-icmp.yaml allows type 8 from
// the other client). Traced as `warden trace --protocol ICMP --icmp-type TYPE` does.
import t from 'tap'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DIR, ICMP_PORT_BASE, lookupKernel, PROTO } from '../../policy-store/src/index.js'
import { compile, ENDPOINTS, verdict } from './helpers.js'
import { runCli } from '../helpers/cli.js'

const cnp = (name: string, spec: string): string =>
  `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: ${name}\nspec:\n${spec}`
const ICMP = cnp('client-ingress-from-client2-icmp', `  endpointSelector: {matchLabels: {app: billing-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: checkout-service}}]
    icmps:
    - fields:
      - type: 8
        family: IPv4
      - type: TimestampRequestNotAName
`)

t.test('a type by number allows that type only, from that peer', async (t) => {
  const s = await compile(t, {
    'i.yaml': cnp('icmp', `  endpointSelector: {matchLabels: {app: billing-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: checkout-service}}]
    icmps: [{fields: [{type: 8, family: IPv4}]}]
`)
  })
  const v = (from: string, icmpType: number): string => verdict(s, { from, to: 'billing-service', port: 0, protocol: 'ICMP', icmpType })
  t.equal(v('checkout-service', 8), 'allowed L4', 'echo request')
  t.equal(v('checkout-service', 13), 'denied L4', 'timestamp: another type')
  t.equal(v('checkout-service', 0), 'denied L4', 'echo reply (type 0) is a type of its own, not "any"')
  t.equal(v('other', 8), 'denied L3', 'another peer')
  t.equal(verdict(s, { from: 'checkout-service', to: 'billing-service', port: 8 }), 'denied L4', 'TCP port 8 is not ICMP type 8')
})

t.test('types by Cilium\'s names; EchoReply is type 0; deny sections and egress too', async (t) => {
  const s = await compile(t, {
    'n.yaml': cnp('names', `  endpointSelector: {matchLabels: {app: billing-service}}
  ingress:
  - icmps: [{fields: [{type: EchoRequest}, {type: EchoReply}, {type: DestinationUnreachable}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: other}}]
    icmps: [{fields: [{type: Echo}]}]
  egress:
  - icmps: [{fields: [{type: TimeExceeded}]}]
`)
  })
  const v = (from: string, to: string, icmpType: number): string => verdict(s, { from, to, port: 0, protocol: 'ICMP', icmpType })
  for (const ty of [8, 0, 3]) t.equal(v('checkout-service', 'billing-service', ty), 'allowed L4', `type ${ty}`)
  t.equal(v('other', 'billing-service', 8), 'denied L4', 'the deny wins for other')
  t.equal(v('other', 'billing-service', 3), 'allowed L4', 'other\'s other types stay allowed')
  t.equal(v('billing-service', '8.8.8.8', 11), 'allowed L4', 'egress TimeExceeded')
  t.equal(v('billing-service', '8.8.8.8', 8), 'denied L4', 'egress echo')
  const b = s.endpoints.find((e) => e.name === 'billing-service' && e.namespace === 'default')!
  t.equal(lookupKernel(s.kernel, b.id, DIR.INGRESS, 0, PROTO.ICMP, ICMP_PORT_BASE | 0)?.verdict, 'allow', 'type 0 is its own kernel key')
})

t.test('bad icmps are errors', async (t) => {
  const bad = async (name: string, spec: string, code: RegExp): Promise<unknown> => t.rejects(compile(t, { 'x.yaml': cnp('x', spec) }), code, name)
  await t.rejects(compile(t, { 'x.yaml': ICMP }), /WARDEN_ERR_POLICY_VALUE.*icmps\[0\]\.fields\[1\]\.type/, 'unknown name')
  await bad('out of range', '  endpointSelector: {}\n  ingress:\n  - icmps: [{fields: [{type: 256}]}]\n', /WARDEN_ERR_POLICY_VALUE/)
  await bad('IPv6', '  endpointSelector: {}\n  ingress:\n  - icmps: [{fields: [{type: 128, family: IPv6}]}]\n', /WARDEN_ERR_POLICY_UNSUPPORTED.*family/)
  await bad('with toPorts', '  endpointSelector: {}\n  ingress:\n  - icmps: [{fields: [{type: 8}]}]\n    toPorts: [{ports: [{port: "80"}]}]\n', /WARDEN_ERR_POLICY_VALUE.*icmps/)
  await bad('no fields', '  endpointSelector: {}\n  ingress:\n  - icmps: [{}]\n', /WARDEN_ERR_POLICY_REQUIRED/)
})

t.test('warden trace --protocol ICMP --icmp-type', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wdq-trace-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  mkdirSync(join(dir, 'p'))
  writeFileSync(join(dir, 'p', 'i.yaml'), cnp('icmp', `  endpointSelector: {matchLabels: {app: billing-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: checkout-service}}]
    icmps: [{fields: [{type: EchoRequest}]}]
`))
  writeFileSync(join(dir, 'e.yaml'), ENDPOINTS)
  const base = ['trace', '--policies', join(dir, 'p'), '--endpoints', join(dir, 'e.yaml'), '--from', 'checkout-service', '--to', 'billing-service', '--protocol', 'ICMP']
  const byName = await runCli([...base, '--icmp-type', 'EchoRequest'])
  t.equal(byName.code, 0)
  t.match(byName.out, /^allowed at L4: allowed by .*i\.yaml:8/)
  t.match(byName.out, /ICMP type 8/)
  const byDefault = await runCli(base)
  t.match(byDefault.out, /^allowed at L4/, 'type 8 by default')
  const other = await runCli([...base, '--icmp-type', '13'])
  t.match(other.out, /^denied at L4: .*ICMP type 13/)
  const wrong = await runCli([...base, '--icmp-type', 'Nope'])
  t.equal(wrong.code, 2)
  t.match(wrong.err, /--icmp-type: unknown ICMP type name "Nope"/)
  const port = await runCli([...base, '--port', '80'])
  t.equal(port.code, 2, '--port does not apply to ICMP')
})
