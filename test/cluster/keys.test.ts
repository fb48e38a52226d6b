/**
 * The kvstore keys and values against Cilium's: the layout table of Cilium's
 * Documentation/kvstore.rst, `Label.FormatForKVStore` (pkg/labels/labels.go: `source:key=value;`),
 * `identity.IPIdentityPair` and `identity.NamedPort` (pkg/identity/identity.go; the named ports
 * ordered by name with u8proto's protocol names, as pkg/ipcache/kvstore.go writes them) and
 * `node.Node` (pkg/node/types/node.go).
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
  t.strictSame(parseIpcacheValue(ipcacheKey('10.15.189.162'), v), { ip: '10.15.189.162', prefixLen: 32, hostIP: '192.168.60.11', identity: 32398, namespace: 'default', pod: 'pod-to-b', ports: [] })
  // the init identity, as Cilium publishes an endpoint whose labels have no number yet
  t.equal(parseIpcacheValue(ipcacheKey('10.0.0.9'), '{"IP":"10.0.0.9","Mask":null,"HostIP":"","ID":5,"Key":0}').identity, 5)
  // a Mask (base64 of net.IPMask) is read when it is a single address; a wider prefix is refused
  t.equal(parseIpcacheValue(ipcacheKey('10.1.0.7'), '{"IP":"10.1.0.7","Mask":"/////w==","HostIP":"","ID":300,"Key":0}').prefixLen, 32)
  for (const [ip, mask] of [['10.1.0.0', '//8AAA=='], ['10.1.2.5', '////AA=='], ['1.2.3.4', 'AAAAAA==']]) {
    t.throws(() => parseIpcacheValue(ipcacheKey(ip), `{"IP":"${ip}","Mask":"${mask}","HostIP":"","ID":300,"Key":0}`), { code: 'WARDEN_ERR_KVSTORE_FORMAT' }, `${ip} with mask ${mask} refused`)
  }
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
  const o = JSON.parse(v) as Record<string, unknown>
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

t.test('an endpoint\'s named ports are IPIdentityPair.NamedPorts, ordered by name, omitted when none', async (t) => {
  const base = { ip: '10.15.189.162', hostIP: '192.168.60.11', identity: 32398, namespace: 'default', pod: 'echo', cluster: 'default', node: 'k8s1', endpointId: 3251 }
  const v = formatIpcacheValue({ ...base, ports: [{ name: 'metrics', port: 9090, protocol: 'TCP' }, { name: 'dns', port: 53, protocol: 'UDP' }, { name: 'http-alt', port: 8080, protocol: 'TCP' }] })
  // Go's encoding/json of identity.IPIdentityPair: K8sServiceAccount (omitempty, none here)
  // comes before NamedPorts; each NamedPort is {"Name","Port","Protocol"}
  t.equal(v, '{"IP":"10.15.189.162","Mask":null,"HostIP":"192.168.60.11","ID":32398,"Key":0,"Metadata":"cilium-global:default:k8s1:3251",' +
    '"K8sNamespace":"default","K8sPodName":"echo","NamedPorts":[{"Name":"dns","Port":53,"Protocol":"UDP"},{"Name":"http-alt","Port":8080,"Protocol":"TCP"},{"Name":"metrics","Port":9090,"Protocol":"TCP"}]}')
  t.strictSame(parseIpcacheValue(ipcacheKey(base.ip), v).ports, [{ name: 'dns', port: 53, protocol: 'UDP' }, { name: 'http-alt', port: 8080, protocol: 'TCP' }, { name: 'metrics', port: 9090, protocol: 'TCP' }])
  t.notMatch(formatIpcacheValue({ ...base, ports: [] }), /NamedPorts/, 'omitempty')
  // what Cilium's reader takes: any case (lower-cased), an empty protocol as TCP, SCTP; a
  // K8sServiceAccount is read past
  const cilium = '{"IP":"10.0.0.1","Mask":null,"HostIP":"","ID":300,"Key":0,"K8sServiceAccount":"sa","NamedPorts":[{"Name":"HTTP","Port":80,"Protocol":""},{"Name":"assoc","Port":9,"Protocol":"sctp"}]}'
  t.strictSame(parseIpcacheValue(ipcacheKey('10.0.0.1'), cilium).ports, [{ name: 'http', port: 80, protocol: 'TCP' }, { name: 'assoc', port: 9, protocol: 'SCTP' }])
  const entry = (np: string): string => `{"IP":"10.0.0.1","Mask":null,"HostIP":"","ID":300,"Key":0,"NamedPorts":${np}}`
  const many = JSON.stringify(Array.from({ length: 129 }, (_, i) => ({ Name: `p${i}`, Port: 1000 + i, Protocol: 'TCP' })))
  const bad = [
    '{"Name":"http"}', // not a list
    '[{"Name":"http","Port":0,"Protocol":"TCP"}]',
    '[{"Name":"http","Port":65536,"Protocol":"TCP"}]',
    '[{"Name":"http","Port":"80","Protocol":"TCP"}]',
    '[{"Name":"http","Port":80,"Protocol":"ANY"}]',
    '[{"Name":"http","Port":80,"Protocol":"ICMP"}]',
    '[{"Name":"8080","Port":80,"Protocol":"TCP"}]', // no letter
    '[{"Name":"http--x","Port":80,"Protocol":"TCP"}]',
    '[{"Name":"a-very-long-port-name","Port":80,"Protocol":"TCP"}]',
    '[{"Name":"http","Port":80,"Protocol":"TCP"},{"Name":"HTTP","Port":81,"Protocol":"TCP"}]', // one name twice
    '[null]',
    many
  ]
  for (const np of bad) t.throws(() => parseIpcacheValue(ipcacheKey('10.0.0.1'), entry(np)), { code: 'WARDEN_ERR_KVSTORE_FORMAT' }, np.slice(0, 80))
  t.strictSame(parseIpcacheValue(ipcacheKey('10.0.0.1'), entry('null')).ports, [], 'null is none (Go marshals a nil slice so)')
  t.strictSame(parseIpcacheValue(ipcacheKey('10.0.0.1'), entry(JSON.stringify((JSON.parse(many) as unknown[]).slice(0, 128)))).ports.length, 128, 'at the bound')
})
