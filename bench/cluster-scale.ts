/**
 * Cluster scale: ENTRIES remote endpoints (100,000) and IDENTITIES cluster identities (2,000)
 * written into etcd, as NODES other nodes would publish them, and three agents (a 3-node
 * cluster lab, lab/cluster.ts) taking them in. Measured from outside the agents:
 *
 *   - the time from the first write until every agent's KERNEL ipcache holds every entry: the
 *     pinned map's entry count, read as the kernel reports it (its memlock figure, per entry the
 *     same as for the entries already there at start, polled every 20 ms), then checked by a
 *     full key walk and a lookup of a sample of addresses;
 *   - each agent's VmRSS and VmHWM, etcd's, and each kernel ipcache's `bytes_memlock`;
 *   - one more change at that size: CHANGES new entries put one at a time, each timed until
 *     every agent's kernel has it (lookups every millisecond), p50/p99; then each deleted, timed
 *     until every kernel has dropped it.
 *
 * The writer is this script with the etcd3 client, in Cilium's formats (cluster/src/keys.ts):
 * a node record per other node (HostIP 198.19.200.N, none of them an agent), `id/<ID>` per
 * identity, `ip/v1/default/<IP>` per pod (100.64.0.0/10, ENTRIES / NODES per node), in
 * transactions of 100 puts, 8 in flight. A policy on each agent's pod selects one identity in 10,
 * so the identities also reach the policy compiler.
 *
 * Run: `node dist/bench/cluster-scale.js` after `npm run build`, as root. Knobs: ENTRIES
 * (100000), IDENTITIES (2000), NODES (100), CHANGES (50); PROFILE_DIR: the agents write CPU profiles
 * there when they stop (the start of the changes is printed on stderr, on the monotonic clock). Lab names `wds-`, underlay
 * 198.19.192.0/24, etcd 23820/23821, proxy ports 17700/17701, route table 2800; a veth `wds-h`
 * gives this process (in the host namespace) a path to etcd. Everything is removed at the end.
 */
import { closeSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { execFileSync } from 'node:child_process'
import { cpus, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Etcd3 } from 'etcd3'
import { createMapRef, objGet, RawMap } from 'bpf'
import { bpffsRoot, clusterDown, clusterUp, etcdEndpoint, parseClusterSpec, underlayNs } from '../lab/cluster.js'
import { NodeAgent } from '../lab/cluster-agents.js'
import { openIpcacheReader } from '../redirect-bpf/src/index.js'
import { formatIpcacheValue, formatLabelsKey, formatNodeValue, idKey, ipcacheKey, nodeKey } from '../cluster/src/keys.js'

const ENTRIES = Number(process.env.ENTRIES ?? 100_000)
const IDENTITIES = Number(process.env.IDENTITIES ?? 2000)
const NODES = Number(process.env.NODES ?? 100)
const CHANGES = Number(process.env.CHANGES ?? 50)
const FIRST_ID = 20000
const TXN_PUTS = 100
const IN_FLIGHT = 8

const spec = parseClusterSpec(`
prefix: wds-
workDir: /run/warden-bench-wds
underlay: 198.19.192.0/24
etcd: {ip: 198.19.192.2, clientPort: 23820, peerPort: 23821}
nodes:
  - {name: a, ip: 198.19.192.11, podCIDR: 198.19.196.0/24, endpoints: [{name: web, labels: {app: web}, ipv4: 198.19.196.2, interface: lxc-web-a}]}
  - {name: b, ip: 198.19.192.12, podCIDR: 198.19.197.0/24, endpoints: [{name: web, labels: {app: web}, ipv4: 198.19.197.2, interface: lxc-web-b}]}
  - {name: c, ip: 198.19.192.13, podCIDR: 198.19.198.0/24, endpoints: [{name: web, labels: {app: web}, ipv4: 198.19.198.2, interface: lxc-web-c}]}
`, 'bench/cluster-scale.ts')

const HOST_IF = 'wds-h'
const HOST_IP = '198.19.192.254'

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {tier: front}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`

function podIp (i: number): string { return `100.${64 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}` }
function otherNode (n: number): { name: string, ip: string } { return { name: `other-${n}`, ip: `198.19.200.${1 + n}` } }
function identityOf (i: number): number { return FIRST_ID + (i % IDENTITIES) }
function pct (xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.ceil(p / 100 * s.length) - 1)]
}
function ms (x: number): number { return Math.round(x * 10) / 10 }

/** VmRSS and VmHWM of a process, in MiB. */
function memory (pid: number): { rssMiB: number, hwmMiB: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN)
  return { rssMiB: Math.round(kb('VmRSS') / 1024), hwmMiB: Math.round(kb('VmHWM') / 1024) }
}

/** The kernel's memlock figure of a pinned map (its fdinfo: what bpftool shows as bytes_memlock). */
class MapMemory {
  private readonly fd: number
  constructor (readonly pin: string) { this.fd = objGet(pin) }
  bytes (): number {
    return Number(/^memlock:\s+(\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${this.fd}`, 'utf8'))?.[1] ?? NaN)
  }

  close (): void { closeSync(this.fd) }
}

/** Entries of a pinned map, counted by walking its keys (bpf syscalls). */
function countKeys (pin: string): number {
  const ref = createMapRef(objGet(pin), { transfer: true })
  let n = 0
  try { for (const _ of new RawMap(ref).keys()) n++ } finally { ref.close() }
  return n
}

function maxEntries (pin: string): number {
  return (JSON.parse(execFileSync('bpftool', ['-j', 'map', 'show', 'pinned', pin], { encoding: 'utf8' })) as { max_entries: number }).max_entries
}

function hostLinkUp (): void {
  execFileSync('ip', ['link', 'add', HOST_IF, 'type', 'veth', 'peer', 'name', 'h-bench', 'netns', underlayNs(spec)])
  execFileSync('ip', ['-n', underlayNs(spec), 'link', 'set', 'h-bench', 'master', 'br0', 'up'])
  execFileSync('ip', ['addr', 'add', `${HOST_IP}/32`, 'dev', HOST_IF])
  execFileSync('ip', ['link', 'set', HOST_IF, 'up'])
  execFileSync('ip', ['route', 'add', `${spec.etcd.ip}/32`, 'dev', HOST_IF, 'src', HOST_IP])
}

function hostLinkDown (): void {
  try { execFileSync('ip', ['link', 'del', HOST_IF], { stdio: 'ignore' }) } catch { /* not there */ }
}

async function main (): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root')
  const policies = mkdtempSync(join(tmpdir(), 'wds-bench-'))
  writeFileSync(join(policies, 'web.yaml'), POLICY)
  const agents = spec.nodes.map((n) => new NodeAgent(spec, n.name, {
    policies,
    nodeArgs: process.env.PROFILE_DIR === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', process.env.PROFILE_DIR],
    args: ['--proxy-port', '17700', '--dns-proxy-port', '17701', '--route-table', '2800',
      '--kvstore', etcdEndpoint(spec), '--node-name', n.name, '--node-ip', n.ip, '--pod-cidr', n.podCidr]
  }))
  let client: Etcd3 | undefined
  const pins = spec.nodes.map((n) => join(bpffsRoot(spec), n.name, 'l7p_ipcache'))
  try {
    hostLinkDown()
    await clusterDown(spec)
    await clusterUp(spec)
    hostLinkUp()
    for (const a of agents) await a.start()
    client = new Etcd3({ hosts: `http://${spec.etcd.ip}:${spec.etcd.clientPort}` })
    const readers = pins.map((p) => openIpcacheReader(join(p, '..')))
    // every agent has the other two nodes and their pods: the baseline the kernel count starts from
    for (let i = 0; i < 30_000 && !readers.every((r) => spec.nodes.every((n) => r.lookupIdentity(n.endpoints[0].ipv4) !== 2)); i += 20) await sleep(20)
    await sleep(1000)
    const mem = pins.map((p) => new MapMemory(p))
    const base = pins.map((p) => countKeys(p))
    const perEntry = mem.map((m, i) => m.bytes() / base[i])
    const target = base.map((b) => b + ENTRIES + NODES)
    const before = { agents: agents.map((a) => memory(a.pid as number)), kernelBytes: mem.map((m) => m.bytes()) }

    // the writer: node records, identities, then the pods, as other nodes would publish them
    const t0 = performance.now()
    const ops: Array<[string, string]> = []
    for (let n = 0; n < NODES; n++) {
      const o = otherNode(n)
      ops.push([nodeKey('default', o.name), formatNodeValue({ name: o.name, cluster: 'default', ipv4: [o.ip], podCidr: null })])
    }
    for (let i = 0; i < IDENTITIES; i++) {
      const labels = [`k8s:app=scale-${i}`, 'k8s:io.kubernetes.pod.namespace=default']
      if (i % 10 === 0) labels.push('k8s:tier=front')
      ops.push([idKey(FIRST_ID + i), formatLabelsKey(labels)])
    }
    for (let i = 0; i < ENTRIES; i++) {
      const o = otherNode(i % NODES)
      ops.push([ipcacheKey(podIp(i)), formatIpcacheValue({ ip: podIp(i), hostIP: o.ip, identity: identityOf(i), namespace: 'default', pod: `pod-${i}`, cluster: 'default', node: o.name, endpointId: 1 + (i % 4000) })])
    }
    let next = 0
    const kv = client
    await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
      while (next < ops.length) {
        const batch = ops.slice(next, next + TXN_PUTS)
        next += TXN_PUTS
        await kv.kv.txn({ compare: [], success: batch.map(([k, v]) => ({ request_put: { key: Buffer.from(k), value: Buffer.from(v) } })), failure: [] })
      }
    }))
    const written = performance.now() - t0
    const reached: number[] = pins.map(() => NaN)
    const deadline = t0 + 600_000
    while (reached.some((x) => Number.isNaN(x))) {
      for (let i = 0; i < pins.length; i++) {
        if (Number.isNaN(reached[i]) && Math.round(mem[i].bytes() / perEntry[i]) >= target[i]) reached[i] = performance.now() - t0
      }
      if (performance.now() > deadline) break
      await sleep(20)
    }
    const counted = pins.map((p) => countKeys(p))
    const sample = [0, 1, ENTRIES >> 1, ENTRIES - 1]
    const sampleOk = readers.every((r) => sample.every((i) => r.lookupIdentity(podIp(i)) === identityOf(i)))
    await sleep(2000) // let the agents settle (their persist timer, GC) before reading memory
    const full = { agents: agents.map((a) => memory(a.pid as number)), kernelBytes: pins.map((p) => (JSON.parse(execFileSync('bpftool', ['-j', 'map', 'show', 'pinned', p], { encoding: 'utf8' })) as { bytes_memlock: number }).bytes_memlock) }

    // one more change at that size (its start on the monotonic clock, for CPU profiles of the agents)
    console.error(`changes from monotonic ${process.hrtime.bigint() / 1000n} us`)
    const puts: number[] = []
    const dels: number[] = []
    for (let c = 0; c < CHANGES; c++) {
      const i = ENTRIES + c
      const o = otherNode(c % NODES)
      const ip = podIp(i)
      const s = performance.now()
      await kv.put(ipcacheKey(ip)).value(formatIpcacheValue({ ip, hostIP: o.ip, identity: identityOf(i), namespace: 'default', pod: `pod-${i}`, cluster: 'default', node: o.name, endpointId: 1 }))
      while (!readers.every((r) => r.lookupIdentity(ip) === identityOf(i))) {
        if (performance.now() - s > 30_000) throw new Error(`${ip} never reached every kernel`)
        await sleep(1)
      }
      puts.push(performance.now() - s)
    }
    for (let c = 0; c < CHANGES; c++) {
      const ip = podIp(ENTRIES + c)
      const s = performance.now()
      await kv.delete().key(ipcacheKey(ip))
      while (!readers.every((r) => r.lookupIdentity(ip) === 2)) {
        if (performance.now() - s > 30_000) throw new Error(`${ip} never left every kernel`)
        await sleep(1)
      }
      dels.push(performance.now() - s)
    }
    const etcdPid = (JSON.parse(readFileSync(join(spec.workDir, 'lab.json'), 'utf8')) as { etcdPid: number }).etcdPid
    const after = { agents: agents.map((a) => memory(a.pid as number)), etcd: memory(etcdPid) }
    for (const r of readers) r.close()
    for (const m of mem) m.close()
    console.log(JSON.stringify({
      date: new Date().toISOString(),
      machine: { cpus: cpus().length, load: loadavg().map((x) => Math.round(x * 10) / 10) },
      written: { entries: ENTRIES, identities: IDENTITIES, nodes: NODES, ms: ms(written) },
      kernel: {
        maxEntries: pins.map((p) => maxEntries(p)),
        baseline: base,
        entries: counted,
        expected: target,
        sampleIdentitiesOk: sampleOk,
        everyEntryInKernelMs: reached.map(ms),
        bytesMemlockBefore: before.kernelBytes,
        bytesMemlock: full.kernelBytes
      },
      agentsMiB: { before: before.agents, full: full.agents, afterChanges: after.agents },
      etcdMiB: after.etcd,
      oneMoreChange: {
        put: { n: puts.length, p50: ms(pct(puts, 50)), p99: ms(pct(puts, 99)), max: ms(Math.max(...puts)) },
        delete: { n: dels.length, p50: ms(pct(dels, 50)), p99: ms(pct(dels, 99)), max: ms(Math.max(...dels)) }
      }
    }))
  } finally {
    client?.close()
    for (const a of agents) await a.stop()
    hostLinkDown()
    await clusterDown(spec)
    rmSync(policies, { recursive: true, force: true })
  }
}

main().catch((err) => { console.error(err); process.exitCode = 1 })
