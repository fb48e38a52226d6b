/**
 * `node dist/bench/cluster-kvstore.js [--label-sets N] [--changes N]`: the cluster store alone
 * (no kernel), three agents in this process against one real etcd on loopback (port 23796):
 *
 *   - allocation: N new label sets, all three agents preparing all of them at once (competing
 *     for every one); identities allocated per second, and whether all three agree;
 *   - propagation: N endpoint changes published by agent A, each timed until agent B's remote
 *     state has it (etcd write + watch + B's copy), p50/p99. The kernel write and the compile
 *     come on top: the 3-node lab's convergence bench measures the whole path.
 *
 * Prints one JSON object. etcd is started and stopped by PID, its data directory removed.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { pino } from 'pino'
import { EtcdProcess } from '../lab/etcd.js'
import { ClusterStore } from '../cluster/src/cluster.js'
import { MemoryIdentityAllocator, type Endpoint } from '../policy-store/src/index.js'

const { values } = parseArgs({ options: { 'label-sets': { type: 'string' }, changes: { type: 'string' } } })
const LABEL_SETS = Number(values['label-sets'] ?? 300)
const CHANGES = Number(values.changes ?? 100)

function pct (xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))]
}

async function main (): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'wdk-bench-'))
  const etcd = new EtcdProcess({ name: 'wdkbench', dataDir: join(dir, 'etcd'), clientPort: 23796, peerPort: 23797 })
  const agents: ClusterStore[] = []
  try {
    await etcd.start()
    const log = pino({ level: 'silent' })
    for (const [i, name] of ['node-a', 'node-b', 'node-c'].entries()) {
      agents.push(await ClusterStore.open({
        urls: [`http://${etcd.endpoint}`], nodeName: name, nodeIP: `192.0.2.${i + 1}`, clusterName: 'default', leaseTtlSeconds: 30,
        stateDir: join(dir, name), local: new MemoryIdentityAllocator(), logger: log
      }))
    }
    for (const a of agents) if (!(await a.conn.waitConnected(10000))) throw new Error('agent did not connect')

    // Allocation: every agent asks for every new label set at once.
    const sets = Array.from({ length: LABEL_SETS }, (_, i) => [`k8s:app=bench-${i}`, 'k8s:io.kubernetes.pod.namespace=bench'])
    const t0 = process.hrtime.bigint()
    await Promise.all(agents.map(async (a, i) => await a.allocator.prepare(i % 2 === 0 ? sets : [...sets].reverse(), Date.now())))
    const allocMs = Number(process.hrtime.bigint() - t0) / 1e6
    const ids = agents.map((a) => sets.map((s) => a.allocator.acquireIdentity(s, Date.now())))
    const agree = ids.every((x) => x.every((n, j) => n === ids[0][j]))

    // Propagation: A adds one pod at a time; time until B's remote state has it.
    const [a, b] = agents
    const id = ids[0][0]
    const eps: Endpoint[] = []
    const samples: number[] = []
    let want = ''
    let resolve: () => void = () => {}
    b.onRemote((r) => { if (want !== '' && r.ipcache.some((e) => e.prefix === want)) { want = ''; resolve() } })
    for (let i = 0; i < CHANGES; i++) {
      const ip = `10.200.${i >> 8}.${i & 255}`
      eps.push({ id: i + 1, name: `pod-${i}`, namespace: 'bench', labels: { app: 'bench-0' }, identityLabels: sets[0], identity: id, ipv4: ip, interface: `lxc${i}`, ports: [], line: 1 })
      const seen = new Promise<void>((r) => { resolve = r })
      want = `${ip}/32`
      const s0 = process.hrtime.bigint()
      a.publishEndpoints(eps)
      await seen
      samples.push(Number(process.hrtime.bigint() - s0) / 1e6)
    }
    console.log(JSON.stringify({
      node: process.version, cpus: cpus().length, cpu: cpus()[0]?.model, etcd: '3.4 (Debian etcd-server), loopback, one member',
      allocation: { labelSets: LABEL_SETS, agents: agents.length, ms: Math.round(allocMs), perSecond: Math.round(LABEL_SETS / (allocMs / 1000)), agree },
      propagation: { changes: CHANGES, p50Ms: +pct(samples, 50).toFixed(2), p99Ms: +pct(samples, 99).toFixed(2), maxMs: +Math.max(...samples).toFixed(2) }
    }))
  } finally {
    for (const a of agents) await a.close({ leave: true })
    await etcd.stop()
    await rm(dir, { recursive: true, force: true })
  }
}

main().catch((err) => { console.error(err); process.exitCode = 1 })
