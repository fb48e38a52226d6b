/**
 * The kvstore keys and values against Cilium's: the layout table of Cilium's
 * Documentation/kvstore.rst, `Label.FormatForKVStore` (pkg/labels/labels.go: `source:key=value;`),
 * `identity.IPIdentityPair` (pkg/identity/identity.go) and `node.Node` (pkg/node/types/node.go).
 */
import t from 'tap'
import {
  formatIpcacheValue, formatLabelsKey, formatNodeValue, idKey, ipcacheKey, lockKey, nodeKey, parseIdKey,
  parseIpcacheValue, parseLabelsKey, parseNodeValue, parseValueKey, valueKey
} from '../../cluster/src/keys.js'

t.test('keys follow the layout of Documentation/kvstore.rst', async (t) => {
  const labels = formatLabelsKey(['k8s:io.kubernetes.pod.namespace=default', 'k8s:app=foo'])
  t.equal(labels, 'k8s:app=foo;k8s:io.kubernetes.pod.namespace=default;')
  t.equal(idKey(12345), 'cilium/state/identities/v1/id/12345')
  t.equal(valueKey(labels, '192.168.60.11'), 'cilium/state/identities/v1/value/k8s:app=foo;k8s:io.kubernetes.pod.namespace=default;/192.168.60.11')
  t.equal(lockKey(labels), 'cilium/state/identities/v1/locks/k8s:app=foo;k8s:io.kubernetes.pod.namespace=default;')
  t.equal(ipcacheKey('10.15.189.162'), 'cilium/state/ip/v1/default/10.15.189.162')
  t.equal(nodeKey('default', 'k8s1'), 'cilium/state/nodes/v1/default/k8s1')
})

t.test('labels are ordered by key, as LabelArray.Sort does, and parse back', async (t) => {
  // `b` sorts after `a.kubernetes.io/x` by key; a whole-string sort would agree here, but a key
  // that is a prefix of another (app, app.kubernetes.io/name) must come first.
  const ls = ['k8s:app.kubernetes.io/name=web', 'k8s:app=web', 'k8s:b=', 'k8s:io.kubernetes.pod.namespace=shop']
  const key = formatLabelsKey(ls)
  t.equal(key, 'k8s:app=web;k8s:app.kubernetes.io/name=web;k8s:b=;k8s:io.kubernetes.pod.namespace=shop;')
  t.strictSame(parseLabelsKey(key), [...ls].sort())
  t.strictSame(parseLabelsKey(''), [])
  for (const bad of ['k8s:app=web', 'app=web;', 'k8s:=x;', 'k8s:app;']) {
    t.throws(() => parseLabelsKey(bad), { code: 'WARDEN_ERR_KVSTORE_FORMAT' }, bad)
  }
})

t.test('id and value keys parse strictly', async (t) => {
  t.equal(parseIdKey('cilium/state/identities/v1/id/256'), 256)
  for (const bad of ['cilium/state/identities/v1/id/255', 'cilium/state/identities/v1/id/65536', 'cilium/state/identities/v1/id/0300', 'cilium/state/identities/v1/id/x']) {
    t.throws(() => parseIdKey(bad), { code: 'WARDEN_ERR_KVSTORE_FORMAT' }, bad)
  }
  // labels may hold '/' (app.kubernetes.io/name): the node suffix is after the last one
  t.strictSame(parseValueKey('cilium/state/identities/v1/value/k8s:app.kubernetes.io/name=web;/10.0.0.1'), { labelsKey: 'k8s:app.kubernetes.io/name=web;', node: '10.0.0.1' })
  t.throws(() => parseValueKey('cilium/state/identities/v1/value/k8s:a=b;/'), { code: 'WARDEN_ERR_KVSTORE_FORMAT' })
})

t.test('ipcache values are IPIdentityPair JSON', async (t) => {
  const v = formatIpcacheValue({ ip: '10.15.189.162', hostIP: '192.168.60.11', identity: 32398, namespace: 'default', pod: 'pod-to-b', cluster: 'default', node: 'k8s1', endpointId: 3251 })
  t.equal(v, '{"IP":"10.15.189.162","Mask":null,"HostIP":"192.168.60.11","ID":32398,"Key":0,"Metadata":"cilium-global:default:k8s1:3251","K8sNamespace":"default","K8sPodName":"pod-to-b"}')
  t.strictSame(parseIpcacheValue(ipcacheKey('10.15.189.162'), v), { ip: '10.15.189.162', prefixLen: 32, hostIP: '192.168.60.11', identity: 32398, namespace: 'default', pod: 'pod-to-b' })
  // a CIDR entry carries its mask (base64 of net.IPMask)
  t.equal(parseIpcacheValue(ipcacheKey('10.1.0.0'), '{"IP":"10.1.0.0","Mask":"//8AAA==","HostIP":"","ID":300,"Key":0}').prefixLen, 16)
  const bad: [string, string][] = [
    ['10.0.0.1', 'not json'],
    ['10.0.0.1', '{"IP":"10.0.0.2","Mask":null,"HostIP":"","ID":300}'],
    ['10.0.0.1', '{"IP":"10.0.0.1","Mask":null,"HostIP":"","ID":7}'],
    ['10.0.0.1', '{"IP":"10.0.0.1","Mask":null,"HostIP":"x","ID":300}'],
    ['10.0.0.1', '{"IP":"10.0.0.1","Mask":"/wD/AA==","HostIP":"","ID":300}'],
    ['fd00::1', '{"IP":"fd00::1","Mask":null,"HostIP":"","ID":300}']
  ]
  for (const [ip, value] of bad) t.throws(() => parseIpcacheValue(ipcacheKey(ip), value), { code: 'WARDEN_ERR_KVSTORE_FORMAT' }, value)
})

t.test('node values are node.Node JSON', async (t) => {
  const v = formatNodeValue({ name: 'k8s1', cluster: 'default', ipv4: ['192.168.60.11'], podCidr: '10.11.0.0/16' })
  const o = JSON.parse(v)
  t.equal(o.Name, 'k8s1')
  t.equal(o.Cluster, 'default')
  t.strictSame(o.IPAddresses, [{ Type: 'InternalIP', IP: '192.168.60.11' }])
  t.strictSame(o.IPv4AllocCIDR, { IP: '10.11.0.0', Mask: '//8AAA==' })
  t.strictSame(parseNodeValue(nodeKey('default', 'k8s1'), v), { name: 'k8s1', cluster: 'default', ipv4: ['192.168.60.11'], podCidr: '10.11.0.0/16' })
  // IPv6 addresses of a dual-stack Cilium node are skipped, not refused
  t.strictSame(parseNodeValue(nodeKey('c1', 'n2'), '{"Name":"n2","Cluster":"c1","IPAddresses":[{"Type":"InternalIP","IP":"fd00::2"},{"Type":"InternalIP","IP":"10.0.0.2"}],"IPv4AllocCIDR":null}').ipv4, ['10.0.0.2'])
  t.throws(() => parseNodeValue(nodeKey('default', 'k8s2'), v), { code: 'WARDEN_ERR_KVSTORE_FORMAT' }, 'name differs from the key')
  t.throws(() => parseNodeValue('cilium/state/nodes/v1/default', v), { code: 'WARDEN_ERR_KVSTORE_FORMAT' })
})
