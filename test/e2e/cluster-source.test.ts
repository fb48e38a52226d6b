// Needs root (namespaces, tc eBPF, bpf_sk_assign, IP_TRANSPARENT, a bpffs mount, etcd); CI runs as root.
// Two nodes of a cluster lab, an agent in each (no shared store: the other node's pods are
// known by CIDR here). A client's request through its node's egress HTTP proxy reaches the
// other node with the CLIENT's address: that node's ingress policy tells two clients of the same
// node apart, its proxy judges the request again, and the server sees the client. The same for
// a DNS query through the client node's DNS proxy.
import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { clusterDown, clusterUp, parseClusterSpec, podNs } from '../../lab/cluster.js'
import { NodeAgent } from '../../lab/cluster-agents.js'
import { readLog, startDnsmasq, stop, type Started } from '../../demo/services.js'
import { poll } from '../helpers/poll.js'
import { completeLines } from '../../demo/log-lines.js'

const spec = parseClusterSpec(`
prefix: wdcx-
workDir: /run/warden-test-wdcx
underlay: 198.19.134.0/24
etcd: {ip: 198.19.134.2, clientPort: 23804, peerPort: 23805}
nodes:
  - name: a
    ip: 198.19.134.11
    podCIDR: 198.19.135.0/24
    endpoints:
      - {name: server, labels: {app: server}, ipv4: 198.19.135.10, interface: wdcx-server}
      - {name: dns, labels: {app: dns}, ipv4: 198.19.135.53, interface: wdcx-dns}
  - name: b
    ip: 198.19.134.12
    podCIDR: 198.19.130.0/24
    endpoints:
      - {name: good, labels: {app: client}, ipv4: 198.19.130.10, interface: wdcx-good}
      - {name: other, labels: {app: client}, ipv4: 198.19.130.11, interface: wdcx-other}
`)

const policies = mkdtempSync(join(tmpdir(), 'warden-cluster-source-'))
const http = 'rules: {http: [{method: GET, path: "/public/.*"}]}'
// b's clients may GET /public/... on a's pods, through b's egress proxy, and ask a's DNS
// server anything, through b's DNS proxy
writeFileSync(join(policies, 'client.yaml'), `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDR: [198.19.135.0/24]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], ${http}}]
  - toCIDR: [198.19.135.53/32]
    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*"}]}}]
`)
// a's DNS server takes queries from "good" only
writeFileSync(join(policies, 'dns.yaml'), `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns-ingress}
spec:
  endpointSelector: {matchLabels: {app: dns}}
  ingress:
  - fromCIDR: [198.19.130.10/32]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
`)
// a's server takes them from "good" only (its address), and judges the requests again
writeFileSync(join(policies, 'server.yaml'), `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-ingress}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromCIDR: [198.19.130.10/32]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], ${http}}]
`)

const ports = ['--proxy-port', '17310', '--dns-proxy-port', '17311', '--route-table', '2410']
const agents = spec.nodes.map((n) => new NodeAgent(spec, n.name, { policies, args: ports }))
const started: number[] = []
let dnsmasq: Started | undefined

t.teardown(async () => {
  for (const a of agents) await a.stop()
  if (dnsmasq !== undefined) await stop(dnsmasq)
  for (const pid of started) { try { process.kill(pid, 'SIGKILL') } catch { /* already gone */ } }
  await clusterDown(spec)
  rmSync(policies, { recursive: true, force: true })
})

async function get (from: string, path: string): Promise<string> {
  return await new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', podNs(spec, 'b', from), 'curl', '-s', '-w', ' %{http_code}', '--connect-timeout', '2',
      '--max-time', '4', `http://198.19.135.10:8080${path}`], { timeout: 10_000 }, (err, stdout) => {
      const code = (err as { code?: unknown } | null)?.code
      resolve(code === 28 ? 'timeout' : String(stdout).replace(/\s+/g, ' ').trim())
    })
  })
}

t.test('proxied egress keeps the client address across nodes', async (t) => {
  await clusterDown(spec)
  await clusterUp(spec)
  // the server answers with the address it sees
  const server = spawn('ip', ['netns', 'exec', podNs(spec, 'a', 'server'), process.execPath, '-e',
    "require('http').createServer((q, s) => s.end('from ' + q.socket.remoteAddress)).listen(8080, '0.0.0.0')"], { stdio: 'ignore' })
  started.push(server.pid as number)
  for (const a of agents) await a.start()

  let first = ''
  for (let i = 0; i < 30 && !first.endsWith(' 200'); i++) { first = await get('good', '/public/x'); if (!first.endsWith(' 200')) await sleep(100) }
  t.equal(first, 'from 198.19.130.10 200', 'the server on node a sees the client pod of node b, not node b')
  t.equal(await get('good', '/private'), 'Access denied 403', 'a path no rule allows: 403 from node b\'s egress proxy')
  t.equal(await get('other', '/public/x'), 'upstream connect error 503',
    'another client of node b, allowed by node b, gets 503 from its proxy: node a dropped the connection')
  // The agent logs the kernel's drop events and its proxy's access lines on their own schedule
  // (batched, after the response): wait for the lines instead of reading once.
  const droppedLine = (l: string): boolean => l.includes('"flow dropped"') && l.includes('"srcIp":"198.19.130.11"') && l.includes('"reason":"drop_policy"')
  t.ok((await poll(() => agents[0].log(), (log) => log.split('\n').some(droppedLine))).split('\n').some(droppedLine),
    'node a dropped it by its ingress policy, seeing the other client\'s address: it judged the client, not the node')

  // node a's access log has the request, from the client's address, decided by its ingress proxy
  const fromClient = (l: string): boolean => l.includes('198.19.130.10') && l.includes('"allowed"')
  const lines = (await poll(() => agents[0].log(), (log) => log.split('\n').some((l) => l.includes('"/public/x"') && fromClient(l))))
    .split('\n').filter((l) => l.includes('"/public/x"'))
  t.ok(lines.some(fromClient), `node a's access log names the client's address: ${lines[0] ?? agents[0].log().slice(-2000)}`)
  t.notOk(agents[0].log().includes('198.19.134.12'), 'node b\'s own address never shows at node a')
})

async function resolve (from: string): Promise<string> {
  return await new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', podNs(spec, 'b', from), process.execPath, '-e',
      "const r=new (require('dns').Resolver)({timeout:1500,tries:1});r.setServers(['198.19.135.53']);" +
      "r.resolve4('api.example.com',(e,a)=>console.log(e?e.code:a.join(',')))"], { timeout: 10_000 }, (_err, stdout) => { resolve(String(stdout).trim()) })
  })
}

t.test('proxied DNS keeps the client address across nodes', async (t) => {
  dnsmasq = startDnsmasq(spec.workDir, podNs(spec, 'a', 'dns'), '198.19.135.53', [{ name: 'api.example.com', ipv4: '192.0.2.7' }], 30)
  let got = ''
  for (let i = 0; i < 30 && got !== '192.0.2.7'; i++) { got = await resolve('good'); if (got !== '192.0.2.7') await sleep(100) }
  t.equal(got, '192.0.2.7', 'a client of node b resolves through its DNS proxy and node a\'s server')
  // The query log is another process's file, read while dnsmasq writes it: whole lines only.
  const queryLines = (): string[] => {
    const log = readLog(join(spec.workDir, 'dnsmasq', 'queries.log'))
    return completeLines(log).filter((l) => l.includes('query[A] api.example.com'))
  }
  const queries = await poll(queryLines, (ls) => ls.length > 0)
  t.ok(queries.length > 0 && queries.every((l) => l.endsWith('from 198.19.130.10')), `the server saw the client's address: ${queries.at(-1) ?? 'none'}`)
  t.not(await resolve('other'), '192.0.2.7', 'another client of node b is dropped by node a\'s ingress policy')
})
