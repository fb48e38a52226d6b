// Identity labels are filtered as Cilium's labelsfilter does (its default list, and the
// examples of https://docs.cilium.io/en/latest/operations/performance/scalability/identity-relevant-labels/).
import t from 'tap'
import { IdentityLabelFilter } from '../../policy-store/src/label-filter.js'
import { compile } from './helpers.js'

const keep = (f: IdentityLabelFilter, keys: string[]): string[] => keys.filter((k) => f.keeps(`k8s:${k}=x`))

t.test('the default list drops the per-pod and per-rollout labels and keeps the others', async (t) => {
  const f = new IdentityLabelFilter()
  const dropped = ['pod-template-hash', 'controller-revision-hash', 'pod-template-generation', 'statefulset.kubernetes.io/pod-name',
    'apps.kubernetes.io/pod-index', 'batch.kubernetes.io/job-completion-index', 'batch.kubernetes.io/controller-uid', 'controller-uid',
    'kubernetes.io/hostname', 'io.kubernetes.container.name', 'beta.kubernetes.io/arch', 'node.beta.kubernetes.io/x', 'k8s.io/x',
    'annotation.foo', 'etcd_node']
  t.strictSame(keep(f, dropped), [])
  // Cilium keeps these (job-name is only an example of a user exclusion in its documentation).
  const kept = ['app', 'app.kubernetes.io/name', 'io.kubernetes.pod.namespace', 'io.cilium.k8s.namespace.labels.team',
    'io.cilium.k8s.policy.cluster', 'job-name', 'batch.kubernetes.io/job-name', 'version', 'k8s-app']
  t.strictSame(keep(f, kept), kept)
  t.ok(f.keeps('reserved:host'))
})

t.test('the documented inclusion example: only the listed keys (as prefixes) and the default inclusions', async (t) => {
  const f = new IdentityLabelFilter(['io\\.kubernetes\\.pod\\.namespace', 'k8s-app', 'app', 'name', 'kind$', 'other$'])
  const kept = ['k8s-app', 'app', 'name', 'kind', 'other', 'k8s-app-team', 'app-production', 'name-defined', 'app.kubernetes.io/name',
    'io.kubernetes.pod.namespace', 'io.cilium.k8s.namespace.labels.env']
  t.strictSame(keep(f, kept), kept)
  t.strictSame(keep(f, ['kinds', 'other2', 'team', 'env', 'pod-template-hash']), [], 'everything else is dropped')
})

t.test('the documented exclusion example adds to the defaults', async (t) => {
  const f = new IdentityLabelFilter(['!controller-uid', '!job-name'])
  t.strictSame(keep(f, ['controller-uid', 'job-name', 'job-name-x', 'pod-template-hash']), [])
  t.strictSame(keep(f, ['app', 'team', 'batch.kubernetes.io/job-name']), ['app', 'team', 'batch.kubernetes.io/job-name'])
})

t.test('the longer match wins, sources restrict a pattern, replace drops the defaults', async (t) => {
  // Cilium's own example: {!foo, foo.bar} keeps foo.bar (the inclusion matches more of it).
  const f = new IdentityLabelFilter(['!foo', 'foo\\.bar'], { replace: true })
  t.strictSame(keep(f, ['foo.bar', 'foo.barn', 'foo', 'foo.baz', 'other']), ['foo.bar', 'foo.barn'])
  const s = new IdentityLabelFilter(['container:!app'])
  t.ok(s.keeps('k8s:app=x'), 'a k8s label is not a container label')
  t.notOk(s.keeps('container:app=x'))
  const r = new IdentityLabelFilter(['!team'], { replace: true })
  t.strictSame(keep(r, ['pod-template-hash', 'team', 'app']), ['pod-template-hash', 'app'], 'the defaults are gone')
  t.ok(new IdentityLabelFilter(['!io\\.kubernetes'], { replace: true }).keeps('k8s:io.kubernetes.pod.namespace=a'), 'the namespace label always counts')
})

t.test('bad patterns are refused by name', async (t) => {
  t.throws(() => new IdentityLabelFilter(['app(']), { code: 'WARDEN_ERR_LABEL_FILTER' })
  t.throws(() => new IdentityLabelFilter(['k8s:!']), { code: 'WARDEN_ERR_LABEL_FILTER' })
  t.throws(() => new IdentityLabelFilter(['!k8s:app']), { code: 'WARDEN_ERR_LABEL_FILTER', message: /k8s:!app/ })
})

t.test('pods of one deployment share an identity whatever their pod-template-hash', async (t) => {
  const snap = await compile(t, { 'p.yaml': 'apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress: [{}]\n' }, `endpoints:
  - {name: web-5d8f-a, labels: {app: web, pod-template-hash: 5d8f}, ipv4: 10.42.0.10, interface: lxc-a}
  - {name: web-77c4-b, labels: {app: web, pod-template-hash: 77c4, controller-revision-hash: x1}, ipv4: 10.42.0.11, interface: lxc-b}
`)
  const [a, b] = snap.endpoints
  t.equal(a.identity, b.identity)
  t.strictSame(a.identityLabels, ['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=default'])
  t.equal(b.labels['pod-template-hash'], '77c4', 'the endpoint keeps all its labels')
})
