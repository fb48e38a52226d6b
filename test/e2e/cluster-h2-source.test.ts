// Needs root (namespaces, tc eBPF, bpf_sk_assign, IP_TRANSPARENT, a bpffs mount, etcd); CI runs as root.
// HTTP/2 through the proxy keeps the client's address. Two nodes of a cluster lab sharing
// identities through etcd; a real h2c server on node a answers each stream with the address its
// session came from, and real clients (curl --http2-prior-knowledge) send through their node's
// egress proxy. Same node: the server sees the client pod. Across nodes: node a's ingress
// policy, which admits one identity of node b and not the other, tells the two clients apart
// (it sees their addresses, hence their identities, not node b's), and node a's access log
// names the client.
// Own lab names: prefix wdhs-, subnet 198.19.208.0/20, etcd 23830-23831, ports 17800-17801, table 2900.
import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { clusterDown, clusterUp, etcdEndpoint, parseClusterSpec, podNs } from '../../lab/cluster.js'
import { NodeAgent } from '../../lab/cluster-agents.js'
import { poll } from '../helpers/poll.js'
import { completeLines } from '../../demo/log-lines.js'

const root = process.getuid?.() === 0

const spec = parseClusterSpec(`
prefix: wdhs-
workDir: /run/warden-test-wdhs
underlay: 198.19.208.0/24
etcd: {ip: 198.19.208.2, clientPort: 23830, peerPort: 23831}
nodes:
  - name: a
    ip: 198.19.208.11
    podCIDR: 198.19.209.0/24
    endpoints:
      - {name: server, labels: {app: server}, ipv4: 198.19.209.10, interface: wdhs-server}
      - {name: near, labels: {app: near, role: client}, ipv4: 198.19.209.20, interface: wdhs-near}
  - name: b
    ip: 198.19.208.12
    podCIDR: 198.19.210.0/24
    endpoints:
      - {name: good, labels: {app: good, role: client}, ipv4: 198.19.210.10, interface: wdhs-good}
      - {name: other, labels: {app: other, role: client}, ipv4: 198.19.210.11, interface: wdhs-other}
`)
const SERVER = '198.19.209.10'
const NEAR = '198.19.209.20'
const GOOD = '198.19.210.10'
const OTHER = '198.19.210.11'
const NODE_B = '198.19.208.12'

const policies = mkdtempSync(join(tmpdir(), 'warden-cluster-h2-source-'))
const http = 'rules: {http: [{method: GET, path: "/public/.*"}]}'
// every client may GET /public/... on the server, through its own node's egress proxy
writeFileSync(join(policies, 'clients.yaml'), `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: clients-egress}
spec:
  endpointSelector: {matchLabels: {role: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], ${http}}]
`)
// the server admits two identities only: "good" of node b and "near" of its own node
writeFileSync(join(policies, 'server.yaml'), `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-ingress}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: good}}, {matchLabels: {app: near}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], ${http}}]
`)

const agents = spec.nodes.map((n) => new NodeAgent(spec, n.name, {
  policies,
  args: ['--proxy-port', '17800', '--dns-proxy-port', '17801', '--route-table', '2900',
    '--kvstore', etcdEndpoint(spec), '--node-name', n.name, '--node-ip', n.ip, '--pod-cidr', n.podCidr, '--kvstore-lease-ttl', '5']
}))
const started: number[] = []

t.teardown(async () => {
  for (const a of agents) await a.stop()
  for (const pid of started) { try { process.kill(pid, 'SIGKILL') } catch { /* already gone */ } }
  await clusterDown(spec)
  rmSync(policies, { recursive: true, force: true })
})

/** An h2c GET from a pod: `<body> <status>`, `timeout`, or curl's failure. */
async function h2get (node: string, pod: string, path: string): Promise<string> {
  return await new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', podNs(spec, node, pod), 'curl', '-s', '--http2-prior-knowledge', '-w', ' %{http_code}',
      '--connect-timeout', '2', '--max-time', '5', `http://${SERVER}:8080${path}`], { timeout: 10_000 }, (err, stdout) => {
      const code = (err as { code?: unknown } | null)?.code
      resolve(code === 28 ? 'timeout' : String(stdout).replace(/\s+/g, ' ').trim())
    })
  })
}

async function until (node: string, pod: string, path: string, want: string): Promise<string> {
  let got = ''
  for (let i = 0; i < 100 && got !== want; i++) { got = await h2get(node, pod, path); if (got !== want) await sleep(100) }
  return got
}

/** An agent's whole log lines (the last one may be half written). */
function lines (a: NodeAgent): string[] {
  return completeLines(a.log())
}

/** Node a's access lines for HTTP/2 streams. */
function h2Lines (a: NodeAgent): Array<Record<string, unknown>> {
  return lines(a).filter((l) => l.includes('"http request"') && l.includes('"HTTP/2"')).map((l) => JSON.parse(l) as Record<string, unknown>)
}

/**
 * Whether the agent's log has (or comes to have) a line `ok` accepts: it writes kernel drops
 * and access lines on its own schedule (batched, after the response), not before the client
 * sees the answer.
 */
async function logged (a: NodeAgent, ok: (l: string) => boolean): Promise<boolean> {
  return await poll(() => lines(a).some(ok), (v) => v)
}

t.test('HTTP/2 streams through the proxy keep the client\'s address', { skip: root ? false : 'needs root' }, async (t) => {
  await clusterDown(spec)
  await clusterUp(spec)
  // h2c only (no HTTP/1 fallback): each stream is answered with the session's peer address
  const server = spawn('ip', ['netns', 'exec', podNs(spec, 'a', 'server'), process.execPath, '-e',
    "require('http2').createServer().on('stream', (s) => { s.respond({ ':status': 200 }); s.end('from ' + s.session.socket.remoteAddress) }).listen(8080, '0.0.0.0')"],
  { stdio: 'ignore' })
  started.push(server.pid as number)
  const [a, b] = agents
  for (const x of agents) await x.start()

  t.test('same node: the server sees the client pod', async (t) => {
    t.equal(await until('a', 'near', '/public/x', `from ${NEAR} 200`), `from ${NEAR} 200`, 'near\'s stream reached the server from near\'s address')
    t.equal(await h2get('a', 'near', '/private'), 'Access denied 403', 'a path no rule allows: 403 from the proxy')
  })

  t.test('across nodes: node a judges the client\'s identity, not node b', async (t) => {
    t.equal(await until('b', 'good', '/public/x', `from ${GOOD} 200`), `from ${GOOD} 200`,
      'good\'s stream, sent by node b\'s proxy, reached the server on node a from good\'s address')
    t.equal(await h2get('b', 'good', '/private'), 'Access denied 403', 'a path no rule allows: 403 from node b\'s proxy')
    t.equal(await h2get('b', 'other', '/public/x'), 'upstream connect error 503',
      'other, allowed by node b, gets 503 from its proxy: node a dropped the session, which came from other\'s address')
    t.ok(await logged(a, (l) => l.includes('"flow dropped"') && l.includes(`"srcIp":"${OTHER}"`) && l.includes('"reason":"drop_policy"')),
      'node a dropped it by its ingress policy, seeing other\'s address')
    t.ok(await logged(b, (l) => l.includes('"http request"') && l.includes('"HTTP/2"') && l.includes('"upstream-connect"')),
      'node b\'s access log has other\'s stream as an upstream connect failure')
    const good = (l: Record<string, unknown>): boolean => l.path === '/public/x' && l.verdict === 'allowed' && JSON.stringify(l).includes(GOOD) && JSON.stringify(l).includes('app=good')
    const atA = (await poll(() => h2Lines(a), (ls) => ls.some(good))).filter((l) => l.path === '/public/x' && l.verdict === 'allowed')
    t.ok(atA.some(good),
      `node a's ingress proxy logged good's stream with good's address and labels: ${JSON.stringify(atA.at(-1))}`)
    t.notOk(h2Lines(a).some((l) => JSON.stringify(l).includes(NODE_B)), 'node b\'s own address is on none of node a\'s HTTP/2 lines')
  })
})
