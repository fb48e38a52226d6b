// Needs root (namespaces, tc eBPF, a bpffs mount, etcd); CI runs as root.
// Two nodes of a cluster lab on the real datapath. Node a's agent starts while etcd is down: its
// pod x, whose labels were never numbered, gets the init identity and only what the rule for
// `reserved:init` allows; once etcd answers, x gets its identity and its own policy. Node b's pod
// y publishes its named port, and x reaches y only through `toPorts: [{ports: [{port:
// "http-alt"}]}]` -- on the port y's entry in etcd names, and on the new one when y's port moves.
// Last, etcd is lost while running and pod z arrives on node a: init identity, then its own.
// Own names: netns wdn-, underlay 198.19.240.0/24, pods 198.19.241-242.0/24, etcd 23852, proxy
// and metrics ports 18000-18002 (in each node's namespace), route table 3100, bpffs and state
// under /run/warden-test-wdn.
import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { bpffsRoot, clusterDown, clusterUp, endpointsFile, etcdEndpoint, externalNs, parseClusterSpec, podNs, restartEtcd, stopEtcd, underlayNs } from '../../lab/cluster.js'
import { NodeAgent } from '../../lab/cluster-agents.js'
import { startIn, stop, type Started } from '../../demo/services.js'
import { ipcacheKey, parseIpcacheValue } from '../../cluster/src/keys.js'
import { openIpcacheReader } from '../../redirect-bpf/src/index.js'
import { RESERVED } from '../../policy-store/src/index.js'
import { runCli } from '../helpers/cli.js'
import { poll } from '../helpers/poll.js'

const spec = parseClusterSpec(`
prefix: wdn-
workDir: /run/warden-test-wdn
underlay: 198.19.240.0/24
etcd: {ip: 198.19.240.2, clientPort: 23852, peerPort: 23853}
nodes:
  - name: a
    ip: 198.19.240.11
    podCIDR: 198.19.241.0/24
    endpoints:
      - {name: x, labels: {app: x}, ipv4: 198.19.241.10, interface: lxc-x}
      - {name: z, labels: {app: z}, ipv4: 198.19.241.11, interface: lxc-z}
  - name: b
    ip: 198.19.240.12
    podCIDR: 198.19.242.0/24
    endpoints:
      - {name: y, labels: {app: y}, ipv4: 198.19.242.10, interface: lxc-y, ports: [{name: http-alt, port: 8080, protocol: TCP}]}
external:
  - {name: ext, ip: 198.19.240.100}
`)
const X = '198.19.241.10'
const Y = '198.19.242.10'
const Z = '198.19.241.11'
const EXT = '198.19.240.100'

const policies = mkdtempSync(join(tmpdir(), 'wdn-policies-'))
// what an endpoint may do while its labels have no number: reach the outside host on 8080
writeFileSync(join(policies, 'init.yaml'), `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: init}
spec:
  endpointSelector: {matchLabels: {"reserved:init": ""}}
  egress:
  - toCIDR: [${EXT}/32]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`)
// x's own policy: y, on y's port named http-alt, and nothing else
writeFileSync(join(policies, 'x.yaml'), `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: x-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: x}}
  egress:
  - toEndpoints: [{matchLabels: {app: y}}]
    toPorts: [{ports: [{port: "http-alt", protocol: TCP}]}]
`)

const agents = new Map(spec.nodes.map((n) => [n.name, new NodeAgent(spec, n.name, {
  policies,
  args: ['--proxy-port', '18000', '--dns-proxy-port', '18001', '--route-table', '3100', '--metrics', '127.0.0.1:18002',
    '--kvstore', etcdEndpoint(spec), '--node-name', n.name, '--node-ip', n.ip, '--pod-cidr', n.podCidr, '--kvstore-lease-ttl', '3']
})]))
const agent = (n: string): NodeAgent => agents.get(n) as NodeAgent
const servers: Started[] = []

t.teardown(async () => {
  for (const a of agents.values()) await a.stop()
  // the agents' logs go with the work directory: keep their ends when something failed
  if (!t.passing()) for (const [n, a] of agents) t.comment(`agent ${n}:\n${a.log().split('\n').slice(-60).join('\n')}`)
  for (const s of servers) await stop(s)
  await clusterDown(spec)
  rmSync(policies, { recursive: true, force: true })
})

/** HTTP answers on 8080 and 8081 inside `netns`. */
function serve (netns: string, name: string): void {
  const js = "const h=require('http');for(const p of [8080,8081])h.createServer((q,s)=>s.end('ok')).listen(p)"
  servers.push(startIn(netns, name, [process.execPath, '-e', js], join(spec.workDir, `${name}.log`)))
}

/** A pod of node a fetches `ip:port`: the HTTP status, or `timeout` when the connection is dropped. */
async function fromA (pod: string, ip: string, port: number): Promise<string> {
  return await new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', podNs(spec, 'a', pod), 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--connect-timeout', '2', '--max-time', '4', `http://${ip}:${port}/`],
      { timeout: 10_000 }, (err, stdout) => {
        const code = (err as { code?: unknown } | null)?.code
        resolve(code === 28 ? 'timeout' : err !== null ? `curl exit ${String(code)}` : String(stdout).trim())
      })
  })
}

const fromX = async (ip: string, port: number): Promise<string> => await fromA('x', ip, port)

async function until<T> (what: () => Promise<T> | T, ok: (v: T) => boolean, ms = 30_000): Promise<T> {
  return await poll(what, ok, ms, 200)
}

/** A key's value in the lab's etcd (reachable from the underlay only), or null. */
async function etcdGet (key: string): Promise<string | null> {
  return await new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', underlayNs(spec), 'etcdctl', '--endpoints', `http://${spec.etcd.ip}:${spec.etcd.clientPort}`, 'get', key, '--print-value-only'],
      { timeout: 10_000, env: { ...process.env, ETCDCTL_API: '3' } }, (err, stdout) => {
        const v = String(stdout).trim()
        resolve(err !== null || v === '' ? null : v)
      })
  })
}

/** A metric of node a's agent (its metrics listener is in node a's namespace). */
async function metricA (name: string): Promise<number> {
  return await new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', `${spec.prefix}a`, 'curl', '-s', '--max-time', '4', 'http://127.0.0.1:18002/metrics'], { timeout: 10_000 }, (_err, stdout) => {
      const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(String(stdout))
      resolve(m === null ? NaN : Number(m[1]))
    })
  })
}

/** An address's identity in a node's kernel ipcache. */
function identityAt (node: string, ip: string): number {
  const r = openIpcacheReader(join(bpffsRoot(spec), node))
  try { return r.lookupIdentity(ip) } finally { r.close() }
}

t.test('the init identity while etcd is down, and named ports across nodes', { skip: process.getuid?.() !== 0 ? 'needs root' : false }, async (t) => {
  await clusterDown(spec)
  await clusterUp(spec)
  await stopEtcd(spec) // etcd is down before any agent ever numbered x's labels
  serve(externalNs(spec, 'ext'), 'ext')
  serve(podNs(spec, 'b', 'y'), 'y')

  // z joins node a later (its workload exists, its endpoints entry not yet)
  const fileA = endpointsFile(spec, 'a')
  const withZ = readFileSync(fileA, 'utf8')
  const zEntry = /\n {2}- name: z\n( {4}.*\n)+/.exec(withZ)?.[0] ?? ''
  t.not(zEntry, '', 'z\'s entry in node a\'s endpoints file')
  writeFileSync(fileA, withZ.replace(zEntry, '\n'))

  // The agent starts (it used to exit: a label set never numbered, etcd unreachable).
  await agent('a').start()
  t.equal(identityAt('a', X), RESERVED.INIT, 'x has the init identity in the kernel')
  t.ok(await until(() => agent('a').log().includes('endpoint has the init identity'), (v) => v, 5000), 'logged')
  t.equal(await metricA('warden_endpoints_init'), 1, 'counted: one endpoint with the init identity')
  const status = await runCli(['status', '--api-socket', agent('a').apiSocket])
  t.match(status.out, /DEGRADED[\s\S]*endpoint default\/x has the init identity/, '`warden status` says so')
  t.ok(await metricA('warden_kvstore_identity_allocation_failures_total') >= 1, 'and the failed allocation')
  t.equal(await fromX(EXT, 8080), '200', 'init: the rule for reserved:init allows the outside host on 8080')
  t.equal(await fromX(EXT, 8081), 'timeout', 'init: not on 8081')
  t.equal(await fromX(Y, 8080), 'timeout', 'init: x\'s own policy does not apply yet, nothing else is allowed')

  // etcd answers: x gets its identity (one snapshot), the kernel and etcd have it, its policy applies.
  // (from a new data directory: the member stopped right after `lab up` may not have finished
  // bootstrapping the first one)
  await restartEtcd(spec, true)
  const xId = await until(() => identityAt('a', X), (v) => v >= 256)
  t.ok(xId >= 256, `x got a cluster identity in the kernel (${xId})`)
  t.ok(await until(() => agent('a').log().includes('endpoint got the identity of its labels'), (v) => v, 5000), 'logged')
  t.equal(await metricA('warden_endpoints_init'), 0, 'no endpoint with the init identity left')
  // (the session that starts may write the entry it had first, with the init identity, 5)
  const publishedId = (v: string | null): number | null => v === null ? null : parseIpcacheValue(ipcacheKey(X), v).identity
  const published = await until(async () => publishedId(await etcdGet(ipcacheKey(X))), (v) => v !== null && v !== RESERVED.INIT)
  t.equal(published, xId, 'published to etcd with it')
  t.equal(await until(() => fromX(EXT, 8080), (v) => v === 'timeout'), 'timeout', 'x\'s own policy: the outside host is no longer allowed')

  // Node b starts with etcd up: y is published with its named port.
  await agent('b').start()
  const yEntry = await until(async () => await etcdGet(ipcacheKey(Y)), (v) => v !== null)
  t.match(yEntry, /"NamedPorts":\[\{"Name":"http-alt","Port":8080,"Protocol":"TCP"\}\]/, 'y\'s entry names its port')
  t.ok(await until(() => identityAt('a', Y), (v) => v >= 256) >= 256, 'node a knows y by its identity')
  t.equal(await until(() => fromX(Y, 8080), (v) => v === '200'), '200', 'x -> y:8080, y\'s http-alt: allowed')
  t.equal(await fromX(Y, 8081), 'timeout', 'x -> y:8081: not named, dropped')

  // y's port moves: node a follows what y's entry says.
  const file = endpointsFile(spec, 'b')
  writeFileSync(file, readFileSync(file, 'utf8').replace('port: 8080', 'port: 8081'))
  t.equal(await until(() => fromX(Y, 8081), (v) => v === '200'), '200', 'x -> y:8081 once y names it http-alt')
  t.equal(await fromX(Y, 8080), 'timeout', 'and 8080 no longer')

  // etcd lost while running, and a new pod: it gets the init identity, then its own once etcd is back.
  await stopEtcd(spec)
  t.equal(await until(() => metricA('warden_kvstore_connected'), (v) => v === 0), 0, 'node a sees the outage')
  writeFileSync(fileA, readFileSync(fileA, 'utf8').trimEnd() + '\n' + zEntry.replace(/^\n/, ''))
  t.equal(await until(() => identityAt('a', Z), (v) => v === RESERVED.INIT), RESERVED.INIT, 'z has the init identity')
  t.equal(identityAt('a', X), xId, 'x keeps its identity')
  t.equal(await fromA('z', EXT, 8080), '200', 'z: the rule for reserved:init applies')
  t.equal(await fromA('z', Y, 8080), 'timeout', 'z: nothing else')
  t.equal(await fromX(Y, 8081), '200', 'x: unchanged')
  await restartEtcd(spec)
  t.ok(await until(() => identityAt('a', Z), (v) => v >= 256) >= 256, 'z got a cluster identity once etcd was back')
  t.equal(await until(() => fromA('z', EXT, 8081), (v) => v === '200'), '200', 'z has no policy of its own: default allow, 8081 too')
})
