/**
 * Policy compile benchmark (issue 2): 10,000 rules over 1,000 identities, full compile time,
 * then the re-compile after a one-rule change (one file rewritten). Targets: < 1 s, < 20 ms.
 * Run: `node dist/bench/policy-compile.js` after `npx tsc -p tsconfig.build.json`.
 * Knobs: RULES (10000), IDENTITIES (1000), FILES (100), RUNS (5).
 */
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadSnapshot, MemoryIdentityAllocator, openStore } from '../policy-store/src/index.js'
import { Compiler } from '../policy-store/src/compile.js'

const RULES = Number(process.env.RULES ?? 10000)
const IDENTITIES = Number(process.env.IDENTITIES ?? 1000)
const FILES = Number(process.env.FILES ?? 100)
const RUNS = Number(process.env.RUNS ?? 5)

function endpointsYaml (): string {
  const lines = ['endpoints:']
  for (let i = 0; i < IDENTITIES; i++) {
    lines.push(`  - {name: svc-${i}, namespace: ns-${i % 10}, labels: {app: svc-${i}, tier: t${i % 7}}, ipv4: 10.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}, interface: lxc${i}}`)
  }
  return lines.join('\n') + '\n'
}

/** Rule r: svc-(r mod N) accepts from svc-(r*7+1 mod N) on a port; every 4th has HTTP rules, every 10th is an egress deny. */
function fileYaml (f: number, version = 0): string {
  const per = RULES / FILES
  const docs: string[] = []
  for (let j = 0; j < per; j++) {
    const r = f * per + j
    const dst = r % IDENTITIES
    const src = (r * 7 + 1) % IDENTITIES
    const ns = `ns-${dst % 10}`
    const port = 8000 + (r % 50) + (j === 0 ? version : 0)
    const peerNs = `ns-${src % 10}`
    let item: string
    if (r % 10 === 9) {
      docs.push(`apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: r${r}, namespace: ${ns}}\nspec:\n  endpointSelector: {matchLabels: {app: svc-${dst}}}\n  egressDeny:\n  - toEndpoints: [{matchLabels: {app: svc-${src}, io.kubernetes.pod.namespace: ${peerNs}}}]\n    toPorts: [{ports: [{port: "${port}", protocol: TCP}]}]\n`)
      continue
    }
    item = `  - fromEndpoints: [{matchLabels: {app: svc-${src}, io.kubernetes.pod.namespace: ${peerNs}}}]\n    toPorts:\n    - ports: [{port: "${port}", protocol: TCP}]\n`
    if (r % 4 === 0) item += `      rules: {http: [{method: GET, path: "/api/v${r % 3}/.*"}, {method: POST, path: "/items/[0-9]+"}]}\n`
    docs.push(`apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: r${r}, namespace: ${ns}}\nspec:\n  endpointSelector: {matchLabels: {app: svc-${dst}}}\n  ingress:\n${item}`)
  }
  return docs.join('---\n')
}

function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[s.length >> 1]
}

async function main (): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'warden-bench-'))
  try {
    mkdirSync(join(dir, 'p'))
    for (let f = 0; f < FILES; f++) writeFileSync(join(dir, 'p', `f${f}.yaml`), fileYaml(f))
    writeFileSync(join(dir, 'e.yaml'), endpointsYaml())
    const opts = { policies: join(dir, 'p'), endpoints: join(dir, 'e.yaml') }
    console.log(`policy-compile: ${RULES} rules in ${FILES} files over ${IDENTITIES} endpoints/identities; node ${process.version}, ${cpus()[0]?.model ?? '?'}`)

    // Full load: read + parse + validate (RE2 compile) + compile, cold each time.
    const full: number[] = []
    let entries = 0
    for (let i = 0; i < RUNS; i++) {
      const t0 = performance.now()
      const { snapshot, errors } = await loadSnapshot(opts)
      full.push(performance.now() - t0)
      if (errors.length > 0) throw new Error(errors.map((e) => e.message).join('\n'))
      entries = snapshot.kernel.length
    }

    // Compile only (files already parsed and validated), cold compiler each time.
    const store0 = await openStore({ ...opts, watch: false })
    const internals = store0 as unknown as { lastGood: Map<string, never>, endpoints: never[] }
    const compileCold: number[] = []
    for (let i = 0; i < RUNS; i++) {
      const c = new Compiler(new MemoryIdentityAllocator())
      const t0 = performance.now()
      c.compile({ endpoints: internals.endpoints, files: [...internals.lastGood.values()], learned: [], hostIPs: [], now: Date.now() })
      compileCold.push(performance.now() - t0)
    }
    await store0.close()

    // One-rule change through the store (one file re-read, re-validated, affected endpoints re-compiled).
    const store = await openStore({ ...opts, watch: false })
    const incr: number[] = []
    const compileOnly: number[] = []
    const s = store as unknown as { load: () => Promise<unknown>, compileNow: () => unknown }
    for (let i = 1; i <= RUNS; i++) {
      writeFileSync(join(dir, 'p', 'f7.yaml'), fileYaml(7, i))
      const t0 = performance.now()
      await s.load()
      const t1 = performance.now()
      s.compileNow()
      const t2 = performance.now()
      incr.push(t2 - t0)
      compileOnly.push(t2 - t1)
    }
    await store.close()
    console.log(`  compile (parsed):  median ${median(compileCold).toFixed(1)} ms (runs: ${compileCold.map((x) => x.toFixed(0)).join(', ')})  [target < 1000 ms]`)
    console.log(`  full load+compile: median ${median(full).toFixed(1)} ms (runs: ${full.map((x) => x.toFixed(0)).join(', ')}), ${entries} kernel entries (read + YAML parse + validate + compile)`)
    console.log(`  one-rule change:   median ${median(incr).toFixed(1)} ms total, of which compile ${median(compileOnly).toFixed(1)} ms  [target < 20 ms]`)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
