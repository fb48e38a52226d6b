// HTTP rules on port ranges of any width. Cilium has no width limit for L7 rules on a range
// (pkg/policy/api/l4.go, PortProtocol.EndPort; only DNS rules refuse ranges, in
// pkg/policy/api/rule_validation.go), and its connectivity tests (cilium-cli/connectivity/
// manifests/echo-ingress-l7-http.yaml, from 1.17 with `port: "4096"`, `endPort: 8191`) put
// HTTP rules on a 4,096-port range. warden keeps one L7 table per range, found for every port in it.
import t from 'tap'
import { DIR, l7Key, type L7PortTable } from '../../policy-store/src/index.js'
import { L7Tables } from '../../policy-store/src/l7-tables.js'
import { httpSnapshotFromWire, httpSnapshotToWire } from '../../agent/workers/snapshot-wire.js'
import { compile, verdict } from './helpers.js'

const cnp = (name: string, spec: string): string =>
  `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: ${name}\nspec:\n${spec}`

const RANGE = cnp('echo-ingress-l7-http', `  endpointSelector: {matchLabels: {app: billing-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: checkout-service}}]
    toPorts:
    - ports: [{port: "4096", endPort: 8191, protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/$"}
        - {method: GET, path: "/public$"}
        - {method: GET, path: "/private$", headers: ["X-Very-Secret-Token: 42"]}
`)

t.test('HTTP rules on 4096-8191 apply on every port of the range, with one table', async (t) => {
  const s = await compile(t, { 'r.yaml': RANGE })
  const v = (port: number, path: string, headers: string[] = []): string =>
    verdict(s, { from: 'checkout-service', to: 'billing-service', port, method: 'GET', path, headers })
  for (const port of [4096, 6000, 8191]) {
    t.equal(v(port, '/public'), 'allowed L7', `GET /public on ${port}`)
    t.equal(v(port, '/private'), 'denied L7', `GET /private without the token on ${port}`)
    t.equal(v(port, '/private', ['X-Very-Secret-Token: 42']), 'allowed L7', `GET /private with the token on ${port}`)
  }
  t.equal(verdict(s, { from: 'checkout-service', to: 'billing-service', port: 4095, method: 'GET', path: '/public' }), 'denied L4', 'below the range')
  t.equal(verdict(s, { from: 'checkout-service', to: 'billing-service', port: 8192, method: 'GET', path: '/public' }), 'denied L4', 'above the range')
  t.equal(verdict(s, { from: 'other', to: 'billing-service', port: 6000, method: 'GET', path: '/public' }), 'denied L3', 'another peer is dropped in the kernel')
  const billing = s.endpoints.find((e) => e.name === 'billing-service' && e.namespace === 'default')!
  const tables = [...s.http.values()].filter((x) => x.endpointId === billing.id)
  t.equal(tables.length, 1, 'one L7 table for the whole range')
  t.strictSame([tables[0].port, tables[0].endPort], [4096, 8191])
  t.equal(s.kernel.filter((e) => e.endpointId === billing.id && e.direction === DIR.INGRESS && e.verdict === 'redirect-http').length, 1, 'one kernel entry for the range')
})

t.test('the whole port space with HTTP rules, and an L4 rule splitting it', async (t) => {
  const s = await compile(t, {
    'r.yaml': cnp('wide', `  endpointSelector: {matchLabels: {app: billing-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: checkout-service}}]
    toPorts: [{ports: [{port: "1", endPort: 65535, protocol: TCP}], rules: {http: [{path: "/a"}]}}]
  - fromEndpoints: [{matchLabels: {app: checkout-service}}]
    toPorts: [{ports: [{port: "30000", endPort: 30010, protocol: TCP}]}]
`)
  })
  const v = (port: number, path: string): string => verdict(s, { from: 'checkout-service', to: 'billing-service', port, path })
  t.equal(v(1, '/a'), 'allowed L7')
  t.equal(v(1, '/b'), 'denied L7')
  t.equal(v(65535, '/b'), 'denied L7')
  t.equal(v(30005, '/b'), 'allowed L7', 'an L4 allow on a sub-range opens HTTP there only (L7 wildcarding)')
  t.equal(v(30011, '/b'), 'denied L7')
  const billing = s.endpoints.find((e) => e.name === 'billing-service' && e.namespace === 'default')!
  t.equal([...s.http.values()].filter((x) => x.endpointId === billing.id).length, 3, 'three segments, three tables')
})

t.test('DNS rules still refuse port ranges, as Cilium does', async (t) => {
  await t.rejects(compile(t, {
    'd.yaml': cnp('dns', `  endpointSelector: {}
  egress:
  - toPorts: [{ports: [{port: "53", endPort: 54, protocol: UDP}], rules: {dns: [{matchName: a.example}]}}]
`)
  }), /WARDEN_ERR_POLICY_PORT/)
})

t.test('L7Tables: exact ports, ranges, edits, and a copy for proxy workers', async (t) => {
  const table = (endpointId: number, port: number, endPort: number): L7PortTable<string> => ({ endpointId, direction: DIR.INGRESS, protocol: 6, port, endPort, byIdentity: new Map<number, string>(), anyIdentity: null })
  const m = new L7Tables<string>()
  const a = table(1, 80, 80)
  const b = table(1, 4096, 8191)
  const c = table(2, 1, 65535)
  m.set(l7Key(1, 0, 80), a).set(l7Key(1, 0, 4096), b).set(l7Key(2, 0, 1), c)
  t.equal(m.get(l7Key(1, 0, 80)), a)
  t.equal(m.get(l7Key(1, 0, 81)), undefined, 'a port between tables')
  t.equal(m.get(l7Key(1, 0, 5000)), b)
  t.equal(m.get(l7Key(1, 0, 8191)), b)
  t.equal(m.get(l7Key(1, 0, 8192)), undefined)
  t.equal(m.get(l7Key(1, 1, 5000)), undefined, 'the other direction')
  t.equal(m.get(l7Key(2, 0, 65535)), c)
  t.equal(m.size, 3)
  m.delete(l7Key(1, 0, 4096))
  t.equal(m.get(l7Key(1, 0, 5000)), undefined, 'a deleted range is gone')
  t.equal(new L7Tables(m).get(l7Key(2, 0, 300)), c, 'a copy indexes its ranges')
  const s = await compile(t, { 'r.yaml': RANGE })
  const billing = s.endpoints.find((e) => e.name === 'billing-service' && e.namespace === 'default')!
  const { snapshot } = httpSnapshotFromWire(httpSnapshotToWire(s))
  t.equal(snapshot.http.get(l7Key(billing.id, DIR.INGRESS, 7000))?.endPort, 8191, 'a worker finds the range too')
})
