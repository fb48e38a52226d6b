// Needs root (namespaces, tc eBPF, bpf_sk_assign, IP_TRANSPARENT, a bpffs mount, etcd); CI runs as root.
// Three nodes of a cluster lab, an agent in each sharing identities through the lab's etcd, on
// the real datapath: the seed's billing policy enforced at node a for clients on node b; a
// client's egress through node b's proxy keeps its address and is judged at node a with its
// identity; etcd stopped, started, and restored empty; node b's agent killed (its pods vanish
// from node a when its lease expires) and restarted (the same identities); two nodes allocating
// the same new label set at once get one identity.
// Own names: netns wdc3-, underlay 198.19.143.0/24, etcd 23808, bpffs under /run/warden-test-wdc3.
import t from 'tap'
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { execFile } from 'node:child_process'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { bpffsRoot, clusterDown, clusterUp, endpointsFile, etcdEndpoint, parseClusterSpec, podNs, restartEtcd, stopEtcd } from '../../lab/cluster.js'
import { NodeAgent } from '../../lab/cluster-agents.js'
import { startBilling, stop, type Started } from '../../demo/services.js'
import { repoRoot } from '../../demo/session.js'
import { openIpcacheReader } from '../../redirect-bpf/src/index.js'
import { poll } from '../helpers/poll.js'

const spec = parseClusterSpec(`
prefix: wdc3-
workDir: /run/warden-test-wdc3
underlay: 198.19.143.0/24
etcd: {ip: 198.19.143.2, clientPort: 23808, peerPort: 23809}
nodes:
  - name: a
    ip: 198.19.143.11
    podCIDR: 198.19.131.0/24
    endpoints:
      - {name: billing-service, labels: {app: billing-service, class: sensitive}, ipv4: 198.19.131.10, interface: lxc-billing}
  - name: b
    ip: 198.19.143.12
    podCIDR: 198.19.132.0/24
    endpoints:
      - {name: checkout-service, labels: {app: checkout-service}, ipv4: 198.19.132.11, interface: lxc-checkout}
      - {name: auditing-service, labels: {app: auditing-service}, ipv4: 198.19.132.12, interface: lxc-auditing}
      - {name: prometheus, labels: {app: prometheus, system: monitoring}, ipv4: 198.19.132.13, interface: lxc-prom}
  - name: c
    ip: 198.19.143.13
    podCIDR: 198.19.133.0/24
    endpoints:
      - {name: data-exporter, labels: {app: data-exporter}, ipv4: 198.19.133.14, interface: lxc-exporter}
`)

const policies = mkdtempSync(join(tmpdir(), 'warden-three-nodes-'))
cpSync(join(repoRoot(), 'demo', 'policies', 'billing-policy.yaml'), join(policies, 'billing-policy.yaml'))
// prometheus's own egress rule: its requests go through node b's proxy before node a's
writeFileSync(join(policies, 'prometheus-egress.yaml'), `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: prometheus-egress}
spec:
  endpointSelector: {matchLabels: {app: prometheus}}
  egress:
  - toEndpoints: [{matchLabels: {app: billing-service}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET, path: "/healthz"}]}}]
`)

const agents = new Map(spec.nodes.map((n) => [n.name, new NodeAgent(spec, n.name, {
  policies,
  args: ['--proxy-port', '17360', '--dns-proxy-port', '17361', '--route-table', '2460',
    '--kvstore', etcdEndpoint(spec), '--node-name', n.name, '--node-ip', n.ip, '--pod-cidr', n.podCidr, '--kvstore-lease-ttl', '3']
})]))
const agent = (n: string): NodeAgent => agents.get(n) as NodeAgent
let billing: Started | undefined

t.teardown(async () => {
  for (const a of agents.values()) await a.stop()
  if (billing !== undefined) await stop(billing)
  await clusterDown(spec)
  rmSync(policies, { recursive: true, force: true })
})

async function curl (node: string, from: string, args: string[]): Promise<string> {
  return await new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', podNs(spec, node, from), 'curl', '-s', '-w', ' %{http_code}', '--connect-timeout', '2', '--max-time', '4', ...args],
      { timeout: 10_000 }, (err, stdout) => {
        const code = (err as { code?: unknown } | null)?.code
        resolve(code === 28 ? 'timeout' : String(stdout).replace(/\s+/g, ' ').trim())
      })
  })
}
const charge = async (from = 'checkout-service'): Promise<string> => await curl('b', from, ['-o', '/dev/null', '-X', 'POST', 'http://billing-service:8080/api/v1/charge'])
const invoices = async (from: string): Promise<string> => await curl('b', from, ['-X', 'GET', 'http://billing-service:8080/api/v1/invoices/123'])
const invoicesCode = async (from: string): Promise<string> => (await invoices(from)).split(' ').at(-1) ?? ''

async function until<T> (what: () => Promise<T> | T, ok: (v: T) => boolean, ms = 20_000): Promise<T> {
  return await poll(what, ok, ms, 200)
}

/** An address's identity in a node's kernel ipcache (read from its pinned map). */
function identityAt (node: string, ip: string): number {
  const r = openIpcacheReader(join(bpffsRoot(spec), node))
  try { return r.lookupIdentity(ip) } finally { r.close() }
}

function billingLog (): string[] {
  try { return readFileSync(join(spec.workDir, 'billing', 'access.log'), 'utf8').split('\n').filter((l) => l !== '') } catch { return [] }
}

t.test('three nodes, one etcd', async (t) => {
  await clusterDown(spec)
  await clusterUp(spec)
  billing = startBilling(spec.workDir, podNs(spec, 'a', 'billing-service'))
  for (const a of agents.values()) await a.start()

  // the seed's billing policy at node a, for clients on node b (identities from etcd)
  t.equal(await until(charge, (v) => v === '404'), '404', 'checkout (node b) may POST a charge to billing (node a)')
  t.equal(await invoices('checkout-service'), 'Access denied 403', 'checkout may not GET invoices: 403 from node a\'s proxy')
  t.equal(await invoicesCode('auditing-service'), '404', 'auditing may GET invoices (nginx answers 404)')
  t.equal(await charge('auditing-service'), '403', 'auditing may not POST a charge')
  t.equal(await curl('c', 'data-exporter', ['-o', '/dev/null', 'http://billing-service:8080/healthz']), 'timeout', 'data-exporter (node c) is dropped at node a: no rule allows it')

  // prometheus's egress goes through node b's proxy, from prometheus's own address, and node a
  // judges it with prometheus's identity (the seed's `system: monitoring` rule)
  const before = billingLog().length
  t.equal(await curl('b', 'prometheus', ['-o', '/dev/null', 'http://billing-service:8080/healthz']), '200', 'prometheus GET /healthz: allowed by both nodes')
  t.equal(await curl('b', 'prometheus', ['-o', '/dev/null', 'http://billing-service:8080/metrics']), '403', 'prometheus GET /metrics: 403 from node b\'s egress proxy')
  // nginx writes its access line once the response is sent, and node a's agent its own after the
  // response too, batched: wait for the lines rather than read once.
  const seen = (await until(billingLog, (ls) => ls.length > before)).slice(before)
  t.ok(seen.length === 1 && seen[0].startsWith('198.19.132.13 '), `billing-service saw prometheus's address, once: ${seen.join(' | ')}`)
  const prometheusAtA = (): string[] => agent('a').log().split('\n').filter((l) => l.includes('"http request"') && l.includes('"/healthz"') && l.includes('198.19.132.13'))
  const byLabels = (l: string): boolean => l.includes('k8s:app=prometheus') && l.includes('"allowed"')
  const atA = await until(prometheusAtA, (ls) => ls.some(byLabels))
  t.ok(atA.some(byLabels), `node a's access log names prometheus by its labels: ${atA.at(-1) ?? 'none'}`)

  // etcd stopped: everything known stays enforced; started again: the same
  await stopEtcd(spec)
  t.equal(await charge(), '404', 'etcd down: checkout still allowed')
  t.equal(await invoices('checkout-service'), 'Access denied 403', 'etcd down: L7 still enforced')
  await restartEtcd(spec)
  t.equal(await until(charge, (v) => v === '404'), '404', 'etcd back: unchanged')

  // etcd restored empty: the agents republish; enforcement never changes, also while node a is
  // back on etcd and node b is not yet (node a must not take b's absent keys for deletions)
  const checkoutId = identityAt('a', '198.19.132.11')
  const logged = (n: string): number => agent(n).log().split('republished').length
  const [loggedA, loggedB] = [logged('a'), logged('b')]
  await restartEtcd(spec, true)
  t.equal(await charge(), '404', 'etcd empty: node a keeps what it knows')
  const seenAtA = new Set<number>()
  t.ok(await until(() => { seenAtA.add(identityAt('a', '198.19.132.11')); return logged('a') > loggedA && logged('b') > loggedB }, (v) => v, 30_000),
    'nodes a and b reconnected and republished their keys')
  for (let i = 0; i < 20; i++) { seenAtA.add(identityAt('a', '198.19.132.11')); await sleep(100) }
  t.strictSame([...seenAtA], [checkoutId], 'node a knew checkout by its identity all along (sampled every 100 ms)')
  t.ok(agent('a').log().includes('etcd lost data'), 'node a logged that etcd lost its data, not that b\'s pods were deleted')
  t.equal(await until(charge, (v) => v === '404'), '404', 'after the agents republished: still allowed')
  t.equal(identityAt('a', '198.19.132.11'), checkoutId, 'checkout keeps its identity at node a')

  // node b's agent killed: its lease expires and node a forgets its pods (world: dropped);
  // restarted: the same identities come back and checkout is allowed again
  const prometheusId = identityAt('a', '198.19.132.13')
  await agent('b').stop(true)
  t.not(await until(() => identityAt('a', '198.19.132.11'), (v) => v !== checkoutId, 30_000), checkoutId, 'node b\'s pods left node a\'s ipcache when its lease expired')
  t.equal(await charge(), 'timeout', 'checkout, now unknown at node a, is dropped there')
  await agent('b').start()
  t.equal(await until(() => identityAt('a', '198.19.132.11'), (v) => v === checkoutId), checkoutId, 'restarted: checkout has its old identity at node a')
  t.equal(identityAt('a', '198.19.132.13'), prometheusId, 'and so has prometheus')
  t.equal(await until(charge, (v) => v === '404'), '404', 'and may POST again')

  // the same new label set on nodes a and c at the same moment: one identity
  const add = (node: string, name: string, ip: string, ifname: string): void => {
    const file = endpointsFile(spec, node)
    writeFileSync(file, readFileSync(file, 'utf8') + `  - name: ${name}\n    labels: {app: batch-job, team: ledger}\n    ipv4: ${ip}\n    interface: ${ifname}\n`)
  }
  add('a', 'job-a', '198.19.131.40', 'lxc-joba')
  add('c', 'job-c', '198.19.133.40', 'lxc-jobc')
  const onA = await until(() => identityAt('a', '198.19.131.40'), (v) => v > 255)
  const onC = await until(() => identityAt('c', '198.19.133.40'), (v) => v > 255)
  t.ok(onA > 255, 'node a allocated an identity for its new pod')
  t.equal(onC, onA, 'node c allocated the same one for the same labels')
  t.equal(await until(() => identityAt('b', '198.19.133.40'), (v) => v === onA), onA, 'and node b knows both pods by it')
  t.equal(identityAt('b', '198.19.131.40'), onA, 'both of them')
})
