/**
 * Cluster convergence: from a pod added to node a's endpoints file to node b's kernel holding
 * its address with its identity (what node b enforces), in a 3-node cluster lab with one etcd
 * (lab/cluster.ts). CHANGES pods are added one after the other; each one's time is measured by
 * polling node b's pinned ipcache every millisecond. LABEL_SETS distinct label sets, so the first
 * pod of each set also allocates a new identity (etcd lock + create), the others reuse one.
 * Reports p50, p99 and max, for all changes and for the allocating ones.
 * Run: `node dist/bench/cluster-convergence.js` after `npm run build`, as root.
 * Knobs: CHANGES (100), LABEL_SETS (10).
 */
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs'
import { cpus, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { bpffsRoot, clusterDown, clusterUp, endpointsFile, etcdEndpoint, parseClusterSpec } from '../lab/cluster.js'
import { NodeAgent } from '../lab/cluster-agents.js'
import { openIpcacheReader } from '../redirect-bpf/src/index.js'

const CHANGES = Number(process.env.CHANGES ?? 100)
const LABEL_SETS = Number(process.env.LABEL_SETS ?? 10)

const spec = parseClusterSpec(`
prefix: wdcb-
workDir: /run/warden-bench-wdcb
underlay: 198.19.128.0/24
etcd: {ip: 198.19.128.2, clientPort: 23812, peerPort: 23813}
nodes:
  - {name: a, ip: 198.19.128.11, podCIDR: 198.19.136.0/22, endpoints: [{name: first, labels: {app: first}, ipv4: 198.19.136.2, interface: lxc-first}]}
  - {name: b, ip: 198.19.128.12, podCIDR: 198.19.140.0/24}
  - {name: c, ip: 198.19.128.13, podCIDR: 198.19.141.0/24}
`, 'bench/cluster-convergence.ts')

function quantile (sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]
}

function summary (xs: number[]): string {
  const s = [...xs].sort((a, b) => a - b)
  return `n=${s.length} p50 ${quantile(s, 0.5).toFixed(1)} ms, p99 ${quantile(s, 0.99).toFixed(1)} ms, max ${s[s.length - 1].toFixed(1)} ms`
}

async function main (): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root')
  const policies = mkdtempSync(join(tmpdir(), 'warden-bench-conv-'))
  const agents = spec.nodes.map((n) => new NodeAgent(spec, n.name, {
    policies,
    args: ['--proxy-port', '17380', '--dns-proxy-port', '17381', '--route-table', '2480',
      '--kvstore', etcdEndpoint(spec), '--node-name', n.name, '--node-ip', n.ip, '--pod-cidr', n.podCidr]
  }))
  try {
    await clusterDown(spec)
    await clusterUp(spec)
    for (const a of agents) await a.start()
    const atA = openIpcacheReader(join(bpffsRoot(spec), 'a'))
    const atB = openIpcacheReader(join(bpffsRoot(spec), 'b'))
    // the first pod, already there at start: wait until node b has it (the cluster is up)
    for (let i = 0; i < 30_000 && atB.lookupIdentity('198.19.136.2') === 2; i++) await sleep(1)
    const all: number[] = []
    const allocating: number[] = []
    for (let i = 0; i < CHANGES; i++) {
      const n = i + 10
      const ip = `198.19.${136 + (n >> 8)}.${n & 255}`
      const set = i % LABEL_SETS
      const t0 = performance.now()
      appendFileSync(endpointsFile(spec, 'a'), `  - {name: pod-${i}, labels: {app: conv-${set}}, ipv4: ${ip}, interface: lxc-p${i}}\n`)
      let id = 2
      while ((id = atB.lookupIdentity(ip)) === 2) {
        if (performance.now() - t0 > 30_000) throw new Error(`pod-${i} never reached node b`)
        await sleep(1)
      }
      const ms = performance.now() - t0
      if (id !== atA.lookupIdentity(ip)) throw new Error(`pod-${i}: node b has identity ${id}, node a ${atA.lookupIdentity(ip)}`)
      all.push(ms)
      if (i < LABEL_SETS) allocating.push(ms)
    }
    atA.close()
    atB.close()
    console.log(`cluster convergence, 3 nodes, ${CHANGES} pods added to node a one at a time (${cpus().length} CPUs, load ${loadavg().map((x) => x.toFixed(1)).join(' ')})`)
    console.log(`  every change:            ${summary(all)}`)
    console.log(`  new identity allocated:  ${summary(allocating)}`)
    console.log(`  identity reused:         ${summary(all.slice(LABEL_SETS))}`)
  } finally {
    for (const a of agents) await a.stop()
    await clusterDown(spec)
    rmSync(policies, { recursive: true, force: true })
  }
}

main().catch((err) => { console.error(err); process.exitCode = 1 })
