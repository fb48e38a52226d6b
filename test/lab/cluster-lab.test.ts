// Needs root (namespaces, veths, a bpf filesystem mount, etcd); CI runs as root.
// `warden lab up --cluster` builds three nodes on an underlay with native routes and an etcd;
// workloads reach each other across nodes without any agent; `down` leaves nothing behind.
import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { clusterDown, clusterLeftovers, parseClusterSpec, podNs, nodeNs, endpointsFile, externalNs } from '../../lab/cluster.js'
import { repoRoot } from '../../demo/session.js'

const dir = mkdtempSync(join(tmpdir(), 'warden-cluster-lab-'))
const file = join(dir, 'cluster.yaml')
const text = `
prefix: wdcl-
workDir: /run/warden-test-wdcl
underlay: 198.19.136.0/24
etcd: {ip: 198.19.136.2, clientPort: 23802, peerPort: 23803}
nodes:
  - name: a
    ip: 198.19.136.11
    podCIDR: 198.19.137.0/24
    endpoints:
      - {name: server, labels: {app: server}, ipv4: 198.19.137.10, interface: wdcl-server}
  - name: b
    ip: 198.19.136.12
    podCIDR: 198.19.138.0/24
    endpoints:
      - {name: client-b, labels: {app: client}, ipv4: 198.19.138.10, interface: wdcl-cb}
  - name: c
    ip: 198.19.136.13
    podCIDR: 198.19.139.0/24
    endpoints:
      - {name: client-c, namespace: other, labels: {app: client}, ipv4: 198.19.139.10, interface: wdcl-cc}
external:
  - {name: inet, ip: 198.19.136.100}
`
writeFileSync(file, text)
const spec = parseClusterSpec(text)
const started: number[] = []

t.teardown(async () => {
  for (const pid of started) { try { process.kill(pid, 'SIGKILL') } catch { /* already gone */ } }
  await clusterDown(spec)
  rmSync(dir, { recursive: true, force: true })
})

interface Run { code: number, stdout: string, stderr: string }
async function run (cmd: string, args: string[], timeout = 20_000): Promise<Run> {
  return await new Promise((resolve) => {
    execFile(cmd, args, { timeout }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1
      resolve({ code, stdout: String(stdout), stderr: String(stderr) })
    })
  })
}
const warden = async (...args: string[]): Promise<Run> => await run(process.execPath, [join(repoRoot(), 'bin', 'warden.js'), ...args])
const inNs = async (ns: string, argv: string[]): Promise<Run> => await run('ip', ['netns', 'exec', ns, ...argv])

/** One line of text from host:port, asked from inside `ns` ('' when it cannot connect). */
async function hello (ns: string, host: string): Promise<string> {
  const r = await inNs(ns, ['curl', '-s', '--connect-timeout', '2', '--max-time', '3', `telnet://${host}:8080`])
  return r.stdout.trim()
}

t.test('three nodes up, traffic across them, and down', async (t) => {
  await clusterDown(spec) // whatever a killed run left
  const up = await warden('lab', 'up', '--cluster', file)
  t.equal(up.code, 0, `lab up succeeds ${up.stderr}`)
  t.match(up.stdout, /etcd:\/\/198\.19\.136\.2:23802/, 'it prints the etcd endpoint')
  t.match(up.stdout, /--uplink ul0/, 'and how to start an agent inside a node')

  const again = await warden('lab', 'up', '--cluster', file)
  t.equal(again.code, 1, 'a second up is refused')
  t.match(again.stderr, /already exist/, 'because the namespaces exist')

  // a TCP server in node a's workload, ended by its PID
  const server = spawn('ip', ['netns', 'exec', podNs(spec, 'a', 'server'), process.execPath, '-e',
    "require('net').createServer((s) => s.end(require('os').hostname() + ' ' + s.remoteAddress + '\\n')).listen(8080, '0.0.0.0')"], { stdio: 'ignore' })
  started.push(server.pid as number)
  let got = ''
  for (let i = 0; i < 50 && got === ''; i++) { got = await hello(podNs(spec, 'a', 'server'), '127.0.0.1'); if (got === '') await sleep(100) }
  t.not(got, '', 'the server listens')

  t.match(await hello(podNs(spec, 'b', 'client-b'), '198.19.137.10'), /198\.19\.138\.10$/,
    'a workload on node b reaches node a\'s by address, and the server sees its address (no NAT)')
  t.match(await hello(podNs(spec, 'c', 'client-c'), 'server.default'), /198\.19\.139\.10$/,
    'a workload on node c reaches it by name (/etc/hosts lists every node\'s workloads)')
  t.match(await hello(externalNs(spec, 'inet'), '198.19.137.10'), /198\.19\.136\.100$/,
    'a host outside the cluster, on the underlay, reaches node a\'s workload (it routes each pod CIDR to its node)')
  const route = await run('ip', ['-n', nodeNs(spec, 'b'), 'route', 'get', '198.19.137.10'])
  t.match(route.stdout, /via 198\.19\.136\.11 dev ul0/, 'node b routes node a\'s pods over the underlay to node a')
  const etcd = await inNs(nodeNs(spec, 'c'), ['curl', '-s', '--max-time', '3', 'http://etcd:23802/version'])
  t.match(etcd.stdout, /etcdserver/, 'etcd answers on the underlay, from a node')
  const eps = await run('cat', [endpointsFile(spec, 'c')])
  t.match(eps.stdout, /name: client-c\n\s+namespace: other/, 'each node gets an endpoints file of its own workloads')

  const down = await warden('lab', 'down', '--cluster', file)
  t.equal(down.code, 0, `lab down succeeds ${down.stderr}`)
  t.same(await clusterLeftovers(spec), [], 'nothing is left: namespaces, /etc/netns, the bpffs mount, etcd, the work directory')
  t.equal((await warden('lab', 'down', '--cluster', file)).code, 0, 'down again is a no-op')
})
