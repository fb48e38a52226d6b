// Cilium's selection and enforcement semantics (docs/policy.md),
// checked through the compiled snapshot with the kernel's first-match lookup and trace.
import t from 'tap'
import { DIR, lookupKernel, PROTO, type Snapshot } from '../../policy-store/src/index.js'
import { compile, verdict } from './helpers.js'

const cnp = (name: string, spec: string, ns = ''): string =>
  `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: ${name}\n${ns !== '' ? `  namespace: ${ns}\n` : ''}spec:\n${spec}`
const ccnp = (name: string, spec: string): string =>
  `apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: ${name}\nspec:\n${spec}`
const ep = (s: Snapshot, ns: string, name: string): { id: number, identity: number } => s.endpoints.find((e) => e.namespace === ns && e.name === name)!

t.test('namespace scoping of a CNP', async (t) => {
  const s = await compile(t, {
    'a.yaml': cnp('web-in', `  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {app: checkout-service}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: default, app: prometheus}}]
`, 'shop')
  })
  t.equal(verdict(s, { from: 'shop/checkout-service', to: 'shop/web', port: 80 }), 'allowed L4', 'same namespace peer')
  t.equal(verdict(s, { from: 'default/checkout-service', to: 'shop/web', port: 80 }), 'denied L3', 'same labels, other namespace')
  t.equal(verdict(s, { from: 'prometheus', to: 'shop/web', port: 9999 }), 'allowed L3', 'peer naming its namespace crosses')
  t.equal(verdict(s, { from: 'other', to: 'billing-service', port: 80 }), 'allowed L3', '{} selects only its own namespace')
})

t.test('a CCNP selects across namespaces; its peers are pods of any namespace', async (t) => {
  const s = await compile(t, {
    'c.yaml': ccnp('all-checkout', `  endpointSelector: {matchLabels: {app: checkout-service}}
  ingress:
  - fromEndpoints: [{}]
`)
  })
  t.equal(verdict(s, { from: 'web', to: 'default/checkout-service', port: 1 }), 'allowed L3')
  t.equal(verdict(s, { from: 'other', to: 'shop/checkout-service', port: 1 }), 'allowed L3')
  t.equal(verdict(s, { from: '8.8.8.8', to: 'shop/checkout-service', port: 1 }), 'denied L3', 'world is not a pod')
})

t.test('matchExpressions: In, NotIn, Exists, DoesNotExist', async (t) => {
  const s = await compile(t, {
    'm.yaml': cnp('expr', `  endpointSelector: {matchLabels: {app: billing-service}}
  ingress:
  - fromEndpoints:
    - matchExpressions:
      - {key: app, operator: In, values: [checkout-service, auditing-service, prometheus]}
      - {key: system, operator: DoesNotExist}
    toPorts: [{ports: [{port: "1"}]}]
  - fromEndpoints:
    - matchExpressions:
      - {key: system, operator: Exists}
    toPorts: [{ports: [{port: "2"}]}]
  - fromEndpoints:
    - matchExpressions:
      - {key: app, operator: NotIn, values: [checkout-service]}
    toPorts: [{ports: [{port: "3"}]}]
`)
  })
  const v = (from: string, port: number): string => verdict(s, { from, to: 'billing-service', port })
  t.equal(v('checkout-service', 1), 'allowed L4')
  t.equal(v('prometheus', 1), 'denied L4', 'has system label')
  t.equal(v('other', 1), 'denied L4')
  t.equal(v('prometheus', 2), 'allowed L4')
  t.equal(v('checkout-service', 2), 'denied L4')
  t.equal(v('other', 3), 'allowed L4')
  t.equal(v('checkout-service', 3), 'denied L4')
})

t.test('deny beats allow, at any specificity', async (t) => {
  const s = await compile(t, {
    'allow.yaml': cnp('allow', `  endpointSelector: {matchLabels: {app: billing-service}}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "81", protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: auditing-service}}]
`),
    'deny.yaml': cnp('deny', `  endpointSelector: {matchLabels: {app: billing-service}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: checkout-service}}]
  - toPorts: [{ports: [{port: "81", protocol: TCP}]}]
    fromEndpoints: [{matchLabels: {app: auditing-service}}]
`)
  })
  const b = ep(s, 'default', 'billing-service')
  const co = ep(s, 'default', 'checkout-service')
  // The narrower allow key (ANY, TCP, 80) must not let checkout through: a deny at (checkout, TCP, 80).
  t.equal(lookupKernel(s.kernel, b.id, DIR.INGRESS, co.identity, PROTO.TCP, 80)?.verdict, 'deny')
  t.equal(verdict(s, { from: 'checkout-service', to: 'billing-service', port: 80 }), 'denied L4')
  t.equal(verdict(s, { from: 'checkout-service', to: 'billing-service', port: 5 }), 'denied L3')
  t.equal(verdict(s, { from: 'other', to: 'billing-service', port: 80 }), 'allowed L4')
  t.equal(verdict(s, { from: 'auditing-service', to: 'billing-service', port: 80 }), 'allowed L4')
  t.equal(verdict(s, { from: 'auditing-service', to: 'billing-service', port: 81 }), 'denied L4')
  t.equal(verdict(s, { from: 'auditing-service', to: 'billing-service', port: 82 }), 'allowed L3')
  t.match(verdict(s, { from: 'other', to: 'billing-service', port: 82 }), /^denied/)
})

t.test('L4 wildcard merge: an allow without L7 rules opens all HTTP for that peer, still via the proxy', async (t) => {
  const s = await compile(t, {
    'l7.yaml': cnp('l7', `  endpointSelector: {matchLabels: {app: billing-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: checkout-service}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET, path: /only}]}}]
  - fromEndpoints: [{matchLabels: {app: auditing-service}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET, path: /only}]}}]
  - fromEndpoints: [{matchLabels: {app: auditing-service}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: prometheus}}]
`)
  })
  const b = ep(s, 'default', 'billing-service')
  const v = (from: string, method: string, path: string): string => verdict(s, { from, to: 'billing-service', port: 8080, method, path })
  t.equal(v('checkout-service', 'GET', '/only'), 'allowed L7')
  t.equal(v('checkout-service', 'GET', '/other'), 'denied L7')
  t.equal(v('auditing-service', 'DELETE', '/anything'), 'allowed L7', 'L4 allow on the same port wins over its L7 rules')
  t.equal(v('prometheus', 'POST', '/x'), 'allowed L7', 'an L3-only allow is allow-all HTTP on an L7 port')
  t.equal(lookupKernel(s.kernel, b.id, DIR.INGRESS, ep(s, 'default', 'prometheus').identity, PROTO.TCP, 8080)?.verdict, 'redirect-http')
  t.equal(lookupKernel(s.kernel, b.id, DIR.INGRESS, ep(s, 'default', 'prometheus').identity, PROTO.TCP, 9090)?.verdict, 'allow')
  t.equal(v('other', 'GET', '/only'), 'denied L3')
})

t.test('default deny per direction; enableDefaultDeny false; `{}` element', async (t) => {
  const s = await compile(t, {
    'e.yaml': cnp('egress-only', `  endpointSelector: {matchLabels: {app: other}}
  egress:
  - toEndpoints: [{matchLabels: {app: billing-service}}]
`),
    'x.yaml': cnp('additive', `  endpointSelector: {matchLabels: {app: prometheus}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {app: other}}]
`),
    'z.yaml': cnp('deny-all-egress', `  endpointSelector: {matchLabels: {app: auditing-service}}
  egress:
  - {}
`)
  })
  t.equal(verdict(s, { from: 'other', to: 'billing-service', port: 1 }), 'allowed L3')
  t.equal(verdict(s, { from: 'other', to: 'checkout-service', port: 1 }), 'denied L3', 'egress is default deny now')
  t.equal(verdict(s, { from: 'checkout-service', to: 'other', port: 1 }), 'allowed L3', 'ingress untouched')
  t.equal(verdict(s, { from: 'checkout-service', to: 'prometheus', port: 1 }), 'allowed L3', 'additive policy keeps default allow')
  t.equal(verdict(s, { from: 'auditing-service', to: 'billing-service', port: 1 }), 'denied L3', 'egress: [{}] denies all')
})

t.test('entities and CIDRs', async (t) => {
  const s = await compile(t, {
    'w.yaml': cnp('world', `  endpointSelector: {matchLabels: {app: other}}
  egress:
  - toEntities: [world]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
  - toEntities: [cluster]
    toPorts: [{ports: [{port: "53"}]}]
`)
  })
  t.equal(verdict(s, { from: 'other', to: '8.8.8.8', port: 443 }), 'allowed L4')
  t.equal(verdict(s, { from: 'other', to: '8.8.8.8', port: 80 }), 'denied L4', 'world is allowed on 443 only')
  t.equal(verdict(s, { from: 'other', to: '192.0.2.10', port: 80 }), 'allowed L3')
  t.equal(verdict(s, { from: 'other', to: '192.0.2.200', port: 80 }), 'denied L4', 'except')
  t.equal(verdict(s, { from: 'other', to: '192.0.2.200', port: 443 }), 'allowed L4', 'except is still world')
  t.equal(verdict(s, { from: 'other', to: 'kube-system/kube-dns', port: 53, protocol: 'UDP' }), 'allowed L4')
  t.equal(verdict(s, { from: 'other', to: 'kube-system/kube-dns', port: 443 }), 'denied L4', 'a pod is not world')
})

t.test('port ranges and protocol ANY', async (t) => {
  const s = await compile(t, {
    'r.yaml': cnp('ranges', `  endpointSelector: {matchLabels: {app: billing-service}}
  ingress:
  - toPorts: [{ports: [{port: "8000", endPort: 8100}]}]
  - fromEndpoints: [{matchLabels: {app: checkout-service}}]
    toPorts: [{ports: [{port: "8050", protocol: TCP}], rules: {http: [{path: "/x"}]}}]
`)
  })
  for (const proto of ['TCP', 'UDP', 'SCTP'] as const) t.equal(verdict(s, { from: 'other', to: 'billing-service', port: 8100, protocol: proto }), 'allowed L4', proto)
  t.equal(verdict(s, { from: 'other', to: 'billing-service', port: 8101 }), 'denied L4')
  t.equal(verdict(s, { from: 'checkout-service', to: 'billing-service', port: 8050, path: '/y' }), 'allowed L7', 'wildcard L3 allow opens HTTP')
  t.equal(verdict(s, { from: 'other', to: 'billing-service', port: 8050, path: '/y' }), 'allowed L7')
  t.equal(verdict(s, { from: 'other', to: 'billing-service', port: 8050, protocol: 'UDP' }), 'allowed L4', 'UDP is not redirected')
})
