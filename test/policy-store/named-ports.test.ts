// Named ports: `port: "http"` resolves per destination endpoint, as Kubernetes and Cilium do
// (pkg/policy/l4.go: ingress uses the selected endpoint's own named ports, egress the peers';
// Cilium's connectivity tests cilium-cli/connectivity/manifests/echo-ingress-l7-http-named-port.yaml
// and client-egress-l7-http-named-port.yaml). The ports come from the endpoints file.
import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { DIR, lookupKernel, openStore, PROTO, type PolicyStore, type Snapshot, type SnapshotDiff } from '../../policy-store/src/index.js'
import { compile, tempTree, verdict } from './helpers.js'

const EPS = (echoPort: number, echo2Port = 9090): string => `endpoints:
  - {name: echo, labels: {kind: echo}, ipv4: 10.42.0.20, interface: lxc-echo, ports: [{name: http-8080, port: ${echoPort}, protocol: TCP}, {name: dns, port: 53, protocol: UDP}]}
  - {name: echo2, labels: {kind: echo, replica: two}, ipv4: 10.42.0.22, interface: lxc-echo2, ports: [{name: http-8080, port: ${echo2Port}}]}
  - {name: other-echo, labels: {kind: other-echo}, ipv4: 10.42.0.23, interface: lxc-oecho, ports: [{name: http-8080, port: 7070}]}
  - {name: client, labels: {kind: client}, ipv4: 10.42.0.21, interface: lxc-client}
  - {name: client2, labels: {kind: client, other: client}, ipv4: 10.42.0.24, interface: lxc-client2}
`
const cnp = (name: string, spec: string): string =>
  `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: ${name}\nspec:\n${spec}`

const INGRESS = cnp('echo-ingress-l7-http-named-port', `  endpointSelector: {matchLabels: {kind: echo}}
  ingress:
  - fromEndpoints: [{matchLabels: {other: client}}]
    toPorts:
    - ports: [{port: "http-8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/$"}
        - {method: GET, path: "/public$"}
`)
const EGRESS = cnp('client-egress-l7-http-named-port', `  endpointSelector: {matchLabels: {kind: client}}
  egress:
  - toEndpoints: [{matchLabels: {kind: echo}}]
    toPorts:
    - ports: [{port: "http-8080", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/"}]
`)

t.test('ingress: the name resolves to each selected endpoint\'s own container port', async (t) => {
  const s = await compile(t, { 'i.yaml': INGRESS }, EPS(8080))
  const v = (to: string, port: number, path = '/public'): string => verdict(s, { from: 'client2', to, port, method: 'GET', path })
  t.equal(v('echo', 8080), 'allowed L7', 'echo names 8080 http-8080')
  t.equal(v('echo', 8080, '/private'), 'denied L7')
  t.equal(v('echo', 9090), 'denied L4', 'echo2\'s number is not echo\'s')
  t.equal(v('echo2', 9090), 'allowed L7', 'echo2 names 9090 http-8080')
  t.equal(v('echo2', 8080), 'denied L4')
  t.equal(verdict(s, { from: 'client', to: 'echo', port: 8080 }), 'denied L3', 'another client is dropped in the kernel')
})

t.test('egress: the name resolves to each peer\'s container port; other peers get nothing', async (t) => {
  const s = await compile(t, { 'e.yaml': EGRESS }, EPS(8080))
  const v = (to: string, port: number): string => verdict(s, { from: 'client', to, port, method: 'GET', path: '/' })
  t.equal(v('echo', 8080), 'allowed L7')
  t.equal(v('echo2', 9090), 'allowed L7')
  t.equal(v('echo', 9090), 'denied L4', 'echo2\'s number is not allowed to echo (another identity)')
  t.equal(v('other-echo', 7070), 'denied L3', 'a peer the rule does not select')
})

t.test('a name with no container port, a protocol that differs: nothing is allowed', async (t) => {
  const s = await compile(t, {
    'n.yaml': cnp('n', `  endpointSelector: {matchLabels: {kind: echo}}
  ingress:
  - fromEndpoints: [{matchLabels: {other: client}}]
    toPorts: [{ports: [{port: "grpc"}, {port: "dns", protocol: TCP}]}]
`)
  }, EPS(8080))
  const echo = s.endpoints.find((e) => e.name === 'echo')!
  const c2 = s.endpoints.find((e) => e.name === 'client2')!
  for (const [proto, port] of [[PROTO.TCP, 53], [PROTO.UDP, 53], [PROTO.TCP, 0], [PROTO.TCP, 8080]] as const) {
    t.not(lookupKernel(s.kernel, echo.id, DIR.INGRESS, c2.identity, proto, port)?.verdict, 'allow', `${proto}/${port} not allowed`)
  }
})

t.test('endpoint ports change: the entries follow, incrementally', async (t) => {
  const dir = tempTree(t, { 'p/i.yaml': INGRESS, 'e.yaml': EPS(8080) })
  const store = await openStore({ policies: join(dir, 'p'), endpoints: join(dir, 'e.yaml') })
  t.teardown(() => store.close())
  const at = (s: Snapshot, port: number): string | undefined => {
    const echo = s.endpoints.find((e) => e.name === 'echo')!
    const c2 = s.endpoints.find((e) => e.name === 'client2')!
    return lookupKernel(s.kernel, echo.id, DIR.INGRESS, c2.identity, PROTO.TCP, port)?.verdict
  }
  t.equal(at(store.current(), 8080), 'redirect-http')
  const next = nextSnapshot(store)
  writeFileSync(join(dir, 'e.yaml'), EPS(8081))
  const { snap, diff } = await next
  t.equal(at(snap, 8081), 'redirect-http', 'the new number is redirected')
  t.not(at(snap, 8080), 'redirect-http', 'the old one is not')
  const echo = snap.endpoints.find((e) => e.name === 'echo')!
  t.strictSame(diff.kernelEndpoints, [echo.id], 'only echo\'s entries changed')
  t.ok(diff.kernelAdded.some((e) => e.port === 8081) && diff.kernelRemoved.some((e) => e.port === 8080), 'the diff moves the port')
})

t.test('the endpoints file checks ports', async (t) => {
  const bad = (ports: string): Promise<Snapshot> => compile(t, {}, `endpoints:\n  - {name: a, labels: {}, ipv4: 10.42.0.1, interface: lxc-a, ports: ${ports}}\n`)
  await t.rejects(bad('[{name: HTTP, port: 80}]'), /WARDEN_ERR_POLICY_VALUE/, 'upper case')
  await t.rejects(bad('[{name: http, port: 0}]'), /WARDEN_ERR_POLICY_VALUE/, 'port 0')
  await t.rejects(bad('[{name: http, port: 80, protocol: ICMP}]'), /WARDEN_ERR_POLICY_VALUE/, 'protocol')
  await t.rejects(bad('[{name: http, port: 80}, {name: http, port: 81}]'), /WARDEN_ERR_ENDPOINT_DUPLICATE/, 'duplicate name')
})

t.test('a named port refuses endPort', async (t) => {
  await t.rejects(compile(t, { 'x.yaml': cnp('x', `  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: "http", endPort: 90}]}]
`) }, EPS(8080)), /WARDEN_ERR_POLICY_PORT/)
})

function nextSnapshot (store: PolicyStore): Promise<{ snap: Snapshot, diff: SnapshotDiff }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error('no snapshot in time')) }, 3000)
    const off = store.onSnapshot((snap, diff) => { clearTimeout(timer); off(); resolve({ snap, diff }) })
  })
}
