// Every kind of bad input is an error with a code and a location; nothing crashes and
// nothing is silently dropped. Table-driven: { name, file content, code, path, line }.
import t from 'tap'
import { truncateSync } from 'node:fs'
import { join } from 'node:path'
import { formatPolicyError, loadSnapshot, openStore, PolicyLoadError } from '../../policy-store/src/index.js'
import { ENDPOINTS, tempTree } from './helpers.js'

const head = 'apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\nspec:\n  endpointSelector: {matchLabels: {app: billing-service}}\n'
const ing = (item: string): string => head + '  ingress:\n  - ' + item + '\n'

const cases: { name: string, yaml: string | Buffer, code: string, path: string, line?: number }[] = [
  { name: 'wrong type (list for a map)', yaml: head.replace('{matchLabels: {app: billing-service}}', '[]'), code: 'WARDEN_ERR_POLICY_TYPE', path: 'spec.endpointSelector', line: 6 },
  { name: 'wrong type (number for a label value)', yaml: head.replace('billing-service}', '42}'), code: 'WARDEN_ERR_POLICY_TYPE', path: 'spec.endpointSelector.matchLabels.app', line: 6 },
  { name: 'unknown field', yaml: ing('fromEndpoint: [{}]'), code: 'WARDEN_ERR_POLICY_UNKNOWN_FIELD', path: 'spec.ingress[0].fromEndpoint', line: 8 },
  { name: 'unknown top-level field', yaml: head + 'extra: 1\n', code: 'WARDEN_ERR_POLICY_UNKNOWN_FIELD', path: 'extra', line: 7 },
  { name: 'invalid regex', yaml: ing('toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{path: "/a/(b"}]}}]'), code: 'WARDEN_ERR_POLICY_REGEX', path: 'spec.ingress[0].toPorts[0].rules.http[0].path', line: 8 },
  { name: 'regex RE2 refuses (lookahead)', yaml: ing('toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: "(?=GET)GET"}]}}]'), code: 'WARDEN_ERR_POLICY_REGEX', path: 'spec.ingress[0].toPorts[0].rules.http[0].method' },
  { name: 'port out of range', yaml: ing('toPorts: [{ports: [{port: "70000"}]}]'), code: 'WARDEN_ERR_POLICY_PORT', path: 'spec.ingress[0].toPorts[0].ports[0].port', line: 8 },
  { name: 'endPort below port', yaml: ing('toPorts: [{ports: [{port: "8080", endPort: 8000}]}]'), code: 'WARDEN_ERR_POLICY_PORT', path: 'spec.ingress[0].toPorts[0].ports[0].endPort' },
  { name: 'unknown protocol', yaml: ing('toPorts: [{ports: [{port: "80", protocol: ICMP}]}]'), code: 'WARDEN_ERR_POLICY_PROTOCOL', path: 'spec.ingress[0].toPorts[0].ports[0].protocol' },
  { name: 'unknown entity', yaml: ing('fromEntities: [world, everything]'), code: 'WARDEN_ERR_POLICY_ENTITY', path: 'spec.ingress[0].fromEntities[1]', line: 8 },
  { name: 'CIDR that does not parse', yaml: ing('fromCIDR: ["10.0.0.0/33"]'), code: 'WARDEN_ERR_POLICY_CIDR', path: 'spec.ingress[0].fromCIDR[0]' },
  { name: 'CIDR except outside', yaml: ing('fromCIDRSet: [{cidr: 10.0.0.0/8, except: [11.0.0.0/8]}]'), code: 'WARDEN_ERR_POLICY_CIDR', path: 'spec.ingress[0].fromCIDRSet[0].except[0]' },
  { name: 'YAML syntax error', yaml: head + '  ingress: [\n', code: 'WARDEN_ERR_POLICY_SYNTAX', path: '' },
  { name: 'empty file', yaml: '', code: 'WARDEN_ERR_POLICY_EMPTY', path: '', line: 1 },
  { name: 'only comments', yaml: '# nothing\n---\n', code: 'WARDEN_ERR_POLICY_EMPTY', path: '' },
  { name: 'binary file', yaml: Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0, 1, 2, 3]), code: 'WARDEN_ERR_POLICY_BINARY', path: '' },
  { name: 'not UTF-8', yaml: Buffer.from([0x61, 0x3a, 0x20, 0xff, 0xfe]), code: 'WARDEN_ERR_POLICY_BINARY', path: '' },
  { name: 'unknown kind', yaml: head.replace('kind: CiliumNetworkPolicy', 'kind: CiliumNetworkPolice'), code: 'WARDEN_ERR_POLICY_KIND', path: 'kind', line: 2 },
  { name: 'missing name', yaml: head.replace('  name: p\n', '  labels: {}\n'), code: 'WARDEN_ERR_POLICY_REQUIRED', path: 'metadata' },
  { name: 'no spec', yaml: 'apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\n', code: 'WARDEN_ERR_POLICY_REQUIRED', path: '' },
  { name: 'named port with endPort', yaml: ing('toPorts: [{ports: [{port: http, endPort: 90}]}]'), code: 'WARDEN_ERR_POLICY_PORT', path: 'spec.ingress[0].toPorts[0].ports[0].endPort' },
  { name: 'toServices', yaml: head + '  egress:\n  - toServices: [{k8sService: {serviceName: x}}]\n', code: 'WARDEN_ERR_POLICY_UNSUPPORTED', path: 'spec.egress[0].toServices' },
  { name: 'nodeSelector', yaml: head.replace('  endpointSelector', '  nodeSelector'), code: 'WARDEN_ERR_POLICY_UNSUPPORTED', path: 'spec.nodeSelector' },
  { name: 'kafka rules', yaml: ing('toPorts: [{ports: [{port: "9092", protocol: TCP}], rules: {kafka: [{topic: t}]}}]'), code: 'WARDEN_ERR_POLICY_UNSUPPORTED', path: 'spec.ingress[0].toPorts[0].rules.kafka' },
  { name: 'headerMatches secret (no secret source)', yaml: ing('toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{headerMatches: [{name: x, secret: {name: s, namespace: d}}]}]}}]'), code: 'WARDEN_ERR_POLICY_UNSUPPORTED', path: 'spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret' },
  { name: 'headerMatches unknown mismatch action', yaml: ing('toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{headerMatches: [{name: x, value: y, mismatch: DROP}]}]}}]'), code: 'WARDEN_ERR_POLICY_VALUE', path: 'spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch' },
  { name: 'headerMatches action on a framing field', yaml: ing('toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{headerMatches: [{name: Content-Length, value: "0", mismatch: REPLACE}]}]}}]'), code: 'WARDEN_ERR_POLICY_UNSUPPORTED', path: 'spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].name' },
  { name: 'headerMatches action value with a line break', yaml: ing('toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{headerMatches: [{name: x-a, value: "a\\r\\nX-Evil: 1", mismatch: ADD}]}]}}]'), code: 'WARDEN_ERR_POLICY_VALUE', path: 'spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].value' },
  { name: 'serverNames', yaml: head + '  egress:\n  - toPorts: [{ports: [{port: "443", protocol: TCP}], serverNames: [a.example]}]\n', code: 'WARDEN_ERR_POLICY_UNSUPPORTED', path: 'spec.egress[0].toPorts[0].serverNames' },
  { name: 'HTTP rules on UDP', yaml: ing('toPorts: [{ports: [{port: "80", protocol: UDP}], rules: {http: [{}]}}]'), code: 'WARDEN_ERR_POLICY_PROTOCOL', path: 'spec.ingress[0].toPorts[0].ports[0].protocol' },
  { name: 'L7 rules on port 0', yaml: ing('toPorts: [{ports: [{port: "0", protocol: TCP}], rules: {http: [{}]}}]'), code: 'WARDEN_ERR_POLICY_PORT', path: 'spec.ingress[0].toPorts[0].ports[0].port' },
  { name: 'DNS rules on ingress', yaml: ing('toPorts: [{ports: [{port: "53", protocol: UDP}], rules: {dns: [{matchName: a.b}]}}]'), code: 'WARDEN_ERR_POLICY_VALUE', path: 'spec.ingress[0].toPorts[0].rules.dns' },
  { name: 'L7 rules in a deny', yaml: head + '  ingressDeny:\n  - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{}]}}]\n', code: 'WARDEN_ERR_POLICY_VALUE', path: 'spec.ingressDeny[0].toPorts[0].rules' },
  { name: 'mixing peer kinds', yaml: ing('fromEndpoints: [{}]\n    fromCIDR: [10.0.0.0/8]'), code: 'WARDEN_ERR_POLICY_VALUE', path: 'spec.ingress[0]' },
  { name: 'bad matchPattern', yaml: head + '  egress:\n  - toFQDNs: [{matchPattern: "a b.com"}]\n', code: 'WARDEN_ERR_POLICY_VALUE', path: 'spec.egress[0].toFQDNs[0].matchPattern' },
  { name: 'unknown operator', yaml: ing('fromEndpoints: [{matchExpressions: [{key: app, operator: Equals, values: [x]}]}]'), code: 'WARDEN_ERR_POLICY_SELECTOR', path: 'spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator' },
  { name: 'In without values', yaml: ing('fromEndpoints: [{matchExpressions: [{key: app, operator: In}]}]'), code: 'WARDEN_ERR_POLICY_SELECTOR', path: 'spec.ingress[0].fromEndpoints[0].matchExpressions[0].values' },
  { name: 'CNP selecting another namespace', yaml: head.replace('{app: billing-service}', '{io.kubernetes.pod.namespace: kube-system}'), code: 'WARDEN_ERR_POLICY_SELECTOR', path: 'spec.endpointSelector' },
  { name: 'too many ports', yaml: ing(`toPorts: [{ports: [${Array.from({ length: 41 }, (_, i) => `{port: "${i + 1}"}`).join(', ')}]}]`), code: 'WARDEN_ERR_POLICY_PORT', path: 'spec.ingress[0].toPorts[0].ports' },
  { name: 'duplicate key', yaml: head + '  ingress: []\n  ingress: []\n', code: 'WARDEN_ERR_POLICY_SYNTAX', path: '' },
  { name: 'IPv6 CIDR', yaml: ing('fromCIDR: ["2001:db8::/32"]'), code: 'WARDEN_ERR_POLICY_UNSUPPORTED', path: 'spec.ingress[0].fromCIDR[0]' }
]

t.test('bad policy files', async (t) => {
  for (const c of cases) {
    const dir = tempTree(t, { 'p/bad.yaml': c.yaml as string, 'p/good.yaml': head.replace('name: p', 'name: good') + '  ingress: [{fromEndpoints: [{}]}]\n', 'e.yaml': ENDPOINTS })
    const { errors, summary } = await loadSnapshot({ policies: join(dir, 'p'), endpoints: join(dir, 'e.yaml') })
    t.ok(errors.length >= 1, `${c.name}: reported`)
    const e = errors.find((x) => x.code === c.code && x.path === c.path)
    t.ok(e !== undefined, `${c.name}: ${c.code} at "${c.path}" (got ${errors.map(formatPolicyError).join(' | ')})`)
    t.ok(errors.every((x) => x.file === join(dir, 'p/bad.yaml')), `${c.name}: names the file`)
    if (c.line !== undefined) t.equal(e?.line, c.line, `${c.name}: line`)
    t.ok((e?.line ?? 0) >= 1 && (e?.col ?? 0) >= 1, `${c.name}: has a position`)
    t.equal(summary.policies, 1, `${c.name}: the good file still loads`)
  }
})

t.test('a 100 MB file is refused unread', async (t) => {
  const dir = tempTree(t, { 'p/huge.yaml': '', 'e.yaml': ENDPOINTS })
  truncateSync(join(dir, 'p/huge.yaml'), 100 * 1024 * 1024) // sparse: no 100 MB written
  const { errors } = await loadSnapshot({ policies: join(dir, 'p'), endpoints: join(dir, 'e.yaml') })
  t.match(errors, [{ code: 'WARDEN_ERR_POLICY_TOO_LARGE', line: 1, col: 1 }])
})

const epCases: { name: string, yaml: string, code: string, path: string, line: number }[] = [
  { name: 'duplicate name', yaml: 'endpoints:\n- {name: a, ipv4: 10.0.0.1, interface: if1}\n- {name: a, ipv4: 10.0.0.2, interface: if2}\n', code: 'WARDEN_ERR_ENDPOINT_DUPLICATE', path: 'endpoints[1].name', line: 3 },
  { name: 'duplicate IP', yaml: 'endpoints:\n- {name: a, ipv4: 10.0.0.1, interface: if1}\n- {name: b, ipv4: 10.0.0.1, interface: if2}\n', code: 'WARDEN_ERR_ENDPOINT_DUPLICATE', path: 'endpoints[1].ipv4', line: 3 },
  { name: 'bad IP', yaml: 'endpoints:\n- {name: a, ipv4: 10.0.0.256, interface: if1}\n', code: 'WARDEN_ERR_ENDPOINT_IP', path: 'endpoints[0].ipv4', line: 2 },
  { name: 'missing interface', yaml: 'endpoints:\n- {name: a, ipv4: 10.0.0.1}\n', code: 'WARDEN_ERR_POLICY_REQUIRED', path: 'endpoints[0]', line: 2 },
  { name: 'unknown field', yaml: 'endpoints:\n- name: a\n  ipv4: 10.0.0.1\n  interface: if1\n  lables: {}\n', code: 'WARDEN_ERR_POLICY_UNKNOWN_FIELD', path: 'endpoints[0].lables', line: 5 },
  { name: 'label value type', yaml: 'endpoints:\n- {name: a, ipv4: 10.0.0.1, interface: if1, labels: {tier: 1}}\n', code: 'WARDEN_ERR_POLICY_TYPE', path: 'endpoints[0].labels.tier', line: 2 }
]

t.test('bad endpoints files', async (t) => {
  for (const c of epCases) {
    const dir = tempTree(t, { 'p/good.yaml': head + '  ingress: [{fromEndpoints: [{}]}]\n', 'e.yaml': c.yaml })
    const { errors } = await loadSnapshot({ policies: join(dir, 'p'), endpoints: join(dir, 'e.yaml') })
    t.match(errors, [{ code: c.code, path: c.path, line: c.line, file: join(dir, 'e.yaml') }], c.name)
  }
})

t.test('openStore fails closed when the initial load has any error', async (t) => {
  const dir = tempTree(t, { 'p/good.yaml': head + '  ingress: [{fromEndpoints: [{}]}]\n', 'p/bad.yaml': ing('toPorts: [{ports: [{port: "99999"}]}]'), 'e.yaml': ENDPOINTS })
  const err = await openStore({ policies: join(dir, 'p'), endpoints: join(dir, 'e.yaml'), watch: false }).then(() => null, (e: unknown) => e)
  t.ok(err instanceof PolicyLoadError)
  t.equal((err as PolicyLoadError).code, 'WARDEN_ERR_POLICY_LOAD')
  t.match((err as PolicyLoadError).errors, [{ code: 'WARDEN_ERR_POLICY_PORT', path: 'spec.ingress[0].toPorts[0].ports[0].port', line: 8 }])
  t.match(formatPolicyError((err as PolicyLoadError).errors[0]), /bad\.yaml:8:\d+: spec\.ingress\[0\]\.toPorts\[0\]\.ports\[0\]\.port: port 99999 is out of range/)
})
