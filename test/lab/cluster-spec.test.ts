// The cluster lab's file (docs/lab.md) is read strictly: each mistake is refused with where it is.
import t from 'tap'
import { parseClusterSpec } from '../../lab/cluster.js'

const good = `
prefix: wdq-
workDir: /run/x
underlay: 198.19.140.0/24
etcd: {ip: 198.19.140.2, clientPort: 23810, peerPort: 23811}
nodes:
  - name: a
    ip: 198.19.140.11
    podCIDR: 198.19.141.0/24
    endpoints:
      - {name: web, labels: {app: web}, ipv4: 198.19.141.10, interface: lxc-web}
  - name: b
    ip: 198.19.140.12
    podCIDR: 198.19.142.0/24
`

t.test('a good file', async (t) => {
  const s = parseClusterSpec(good)
  t.equal(s.nodes.length, 2)
  t.same(s.nodes[0].endpoints[0], { name: 'web', namespace: 'default', labels: { app: 'web' }, ipv4: '198.19.141.10', interface: 'lxc-web' })
  t.same(s.nodes[1].endpoints, [], 'a node may have no workloads')
  t.same(s.etcd, { ip: '198.19.140.2', clientPort: 23810, peerPort: 23811, tls: false, auth: false })
  const secure = parseClusterSpec(good.replace('peerPort: 23811}', 'peerPort: 23811, tls: true, auth: true}'))
  t.same(secure.etcd, { ip: '198.19.140.2', clientPort: 23810, peerPort: 23811, tls: true, auth: true }, 'etcd with TLS and a password')
  const withPorts = parseClusterSpec(good.replace('interface: lxc-web}', 'interface: lxc-web, ports: [{name: http-alt, port: 8080}]}'))
  t.same(withPorts.nodes[0].endpoints[0].ports, [{ name: 'http-alt', port: 8080, protocol: 'TCP' }], 'named ports, TCP by default')
})

const bad: Array<[string, string, RegExp]> = [
  ['an unknown field', good.replace('prefix: wdq-', 'prefix: wdq-\nextra: 1'), /unknown field "extra"/],
  ['a node outside the underlay', good.replace('ip: 198.19.140.12', 'ip: 198.19.150.12'), /nodes\[1\]\.ip must be an address in the underlay/],
  ['a pod outside its node\'s CIDR', good.replace('ipv4: 198.19.141.10', 'ipv4: 198.19.142.10'), /podCIDR 198\.19\.141\.0\/24/],
  ['overlapping pod CIDRs', good.replace('podCIDR: 198.19.142.0/24', 'podCIDR: 198.19.141.128/25'), /pod CIDRs of a and b overlap/],
  ['a pod CIDR with host bits', good.replace('podCIDR: 198.19.142.0/24', 'podCIDR: 198.19.142.1/24'), /host bits/],
  ['two nodes of one name', good.replace('name: b', 'name: a'), /node name a is used twice/],
  ['etcd outside the underlay', good.replace('ip: 198.19.140.2,', 'ip: 198.19.14.2,'), /etcd\.ip must be an address in the underlay/],
  ['the same port twice for etcd', good.replace('peerPort: 23811', 'peerPort: 23810'), /must differ/],
  ['a node address used twice', good.replace('ip: 198.19.140.12', 'ip: 198.19.140.11'), /used twice/],
  ['an interface name too long', good.replace('interface: lxc-web', 'interface: lxc-web-0123456789'), /interface must be 1\.\.15/],
  ['a node name that cannot name a namespace', good.replace('name: b', 'name: B_1'), /nodes\[1\]\.name must be/],
  ['no nodes', good.slice(0, good.indexOf('nodes:')) + 'nodes: []\n', /nodes must be a non-empty list/],
  ['a relative work directory', good.replace('workDir: /run/x', 'workDir: run/x'), /absolute path/],
  ['an external host outside the underlay', good + 'external: [{name: inet, ip: 198.19.141.100}]\n', /external\[0\]\.ip must be an address in the underlay/],
  ['an external host on a node\'s address', good + 'external: [{name: inet, ip: 198.19.140.11}]\n', /used twice/],
  ['etcd auth without TLS', good.replace('peerPort: 23811}', 'peerPort: 23811, auth: true}'), /etcd\.auth needs etcd\.tls/],
  ['etcd tls not a boolean', good.replace('peerPort: 23811}', 'peerPort: 23811, tls: yes-please}'), /etcd\.tls must be true or false/],
  ['a named port of another protocol', good.replace('interface: lxc-web}', 'interface: lxc-web, ports: [{name: x, port: 80, protocol: ICMP}]}'), /ports\[0\]\.protocol must be TCP, UDP or SCTP/],
  ['a named port without a number', good.replace('interface: lxc-web}', 'interface: lxc-web, ports: [{name: x}]}'), /ports\[0\]\.port must be a port number/],
  ['not YAML', 'prefix: [', /cluster file/]
]

for (const [what, text, want] of bad) {
  t.test(what, async (t) => { t.throws(() => parseClusterSpec(text), { code: 'WARDEN_ERR_LAB', message: want }) })
}
