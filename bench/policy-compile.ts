/**
 * Policy compile benchmark: 10,000 rules over 1,000 identities, full compile time,
 * then the re-compile after a one-rule change (one file rewritten). Targets: < 1 s, < 20 ms.
 * Also: a reload with nothing changed, and the DNS proxy's `setLearnedNames` path (1,000
 * learned names on top of the policy, then one more name per DNS answer).
 * Every step reports the median wall time AND process CPU time (user + system): the dev machine
 * is shared, so wall times are inflated by other work while CPU time is what the step costs.
 * Run: `node dist/bench/policy-compile.js` after `npx tsc -p tsconfig.build.json`.
 * Knobs: RULES (10000), IDENTITIES (1000), FILES (100), RUNS (5), NAMES (1000).
 */
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadSnapshot, MemoryIdentityAllocator, openStore, type LearnedName } from '../policy-store/src/index.js'
import { Compiler } from '../policy-store/src/compile.js'
import type { FilePolicies } from '../policy-store/src/model.js'
import { parseYamlString } from '../policy-store/src/source-file.js'
import { validatePolicyFile } from '../policy-store/src/validate.js'

const RULES = Number(process.env.RULES ?? 10000)
const IDENTITIES = Number(process.env.IDENTITIES ?? 1000)
const FILES = Number(process.env.FILES ?? 100)
const RUNS = Number(process.env.RUNS ?? 5)
const NAMES = Number(process.env.NAMES ?? 1000)

function endpointsYaml (): string {
  const lines = ['endpoints:']
  for (let i = 0; i < IDENTITIES; i++) {
    lines.push(`  - {name: svc-${i}, namespace: ns-${i % 10}, labels: {app: svc-${i}, tier: t${i % 7}}, ipv4: 10.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}, interface: lxc${i}}`)
  }
  return lines.join('\n') + '\n'
}

/** The peer of rule r (its "src"); FQDN rules use it to name their pattern. */
const srcOf = (r: number): number => (r * 7 + 1) % IDENTITIES
/** Every 20th rule (r mod 20 = 5) is an egress toFQDNs rule; NAMES learned names match them. */
const isFqdnRule = (r: number): boolean => r % 20 === 5

/**
 * Rule r: svc-(r mod N) accepts from svc-(r*7+1 mod N) on a port; every 4th has HTTP rules,
 * every 10th is an egress deny, every 20th an egress toFQDNs `*.svc-<src>.example.com` on 443.
 */
function fileYaml (f: number, version = 0): string {
  const per = RULES / FILES
  const docs: string[] = []
  for (let j = 0; j < per; j++) {
    const r = f * per + j
    const dst = r % IDENTITIES
    const src = srcOf(r)
    const ns = `ns-${dst % 10}`
    const port = 8000 + (r % 50) + (j === 0 ? version : 0)
    const peerNs = `ns-${src % 10}`
    const head = `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: r${r}, namespace: ${ns}}\nspec:\n  endpointSelector: {matchLabels: {app: svc-${dst}}}\n`
    if (r % 10 === 9) {
      docs.push(`${head}  egressDeny:\n  - toEndpoints: [{matchLabels: {app: svc-${src}, io.kubernetes.pod.namespace: ${peerNs}}}]\n    toPorts: [{ports: [{port: "${port}", protocol: TCP}]}]\n`)
      continue
    }
    if (isFqdnRule(r) && j !== 0) {
      docs.push(`${head}  egress:\n  - toFQDNs: [{matchPattern: "*.svc-${src}.example.com"}]\n    toPorts: [{ports: [{port: "443", protocol: TCP}]}]\n`)
      continue
    }
    let item = `  - fromEndpoints: [{matchLabels: {app: svc-${src}, io.kubernetes.pod.namespace: ${peerNs}}}]\n    toPorts:\n    - ports: [{port: "${port}", protocol: TCP}]\n`
    if (r % 4 === 0) item += `      rules: {http: [{method: GET, path: "/api/v${r % 3}/.*"}, {method: POST, path: "/items/[0-9]+"}]}\n`
    docs.push(`${head}  ingress:\n${item}`)
  }
  return docs.join('---\n')
}

/** Learned name k matches the FQDN rule number (k mod #fqdn rules); 1-2 IPs in 198.18.0.0/15. */
function learnedName (k: number, fqdnSrcs: number[], now: number): LearnedName {
  const src = fqdnSrcs[k % fqdnSrcs.length]
  const ip = (n: number): string => `198.${18 + ((n >> 16) & 1)}.${(n >> 8) & 255}.${n & 255}`
  return { name: `h${k}.svc-${src}.example.com.`, ipv4: k % 3 === 0 ? [ip(2 * k), ip(2 * k + 1)] : [ip(2 * k)], expiresAt: now + 3600_000 }
}

interface Sample { wall: number, cpu: number }
const cpuNow = (): number => { const u = process.cpuUsage(); return (u.user + u.system) / 1000 }
async function measure<T> (fn: () => T | Promise<T>): Promise<{ value: T, s: Sample }> {
  const c0 = cpuNow()
  const t0 = performance.now()
  const value = await fn()
  return { value, s: { wall: performance.now() - t0, cpu: cpuNow() - c0 } }
}
function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[s.length >> 1]
}
const fmt = (x: number): string => x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2)
function report (label: string, samples: Sample[], target = ''): void {
  const w = median(samples.map((x) => x.wall))
  const c = median(samples.map((x) => x.cpu))
  const max = samples.length > 1 ? `, max wall ${fmt(Math.max(...samples.map((x) => x.wall)))}` : ''
  console.log(`  ${label.padEnd(44)} wall ${fmt(w).padStart(7)} ms   cpu ${fmt(c).padStart(7)} ms   (n=${samples.length}${max})${target !== '' ? '  [target ' + target + ']' : ''}`)
}

async function main (): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'warden-bench-'))
  try {
    mkdirSync(join(dir, 'p'))
    for (let f = 0; f < FILES; f++) writeFileSync(join(dir, 'p', `f${f}.yaml`), fileYaml(f))
    writeFileSync(join(dir, 'e.yaml'), endpointsYaml())
    const opts = { policies: join(dir, 'p'), endpoints: join(dir, 'e.yaml') }
    const fqdnSrcs: number[] = []
    for (let r = 0; r < RULES; r++) if (isFqdnRule(r) && r % (RULES / FILES) !== 0) fqdnSrcs.push(srcOf(r))
    console.log(`policy-compile: ${RULES} rules (${fqdnSrcs.length} toFQDNs) in ${FILES} files over ${IDENTITIES} endpoints/identities; ` +
      `node ${process.version}, ${cpus().length} x ${cpus()[0]?.model ?? '?'}, load average ${loadavg()[0].toFixed(1)}`)

    // Full load: read + parse + validate (RE2 compile) + compile, cold each time.
    const full: Sample[] = []
    let entries = 0
    for (let i = 0; i < RUNS; i++) {
      const { value: { snapshot, errors }, s } = await measure(async () => await loadSnapshot(opts))
      full.push(s)
      if (errors.length > 0) throw new Error(errors.map((e) => e.message).join('\n'))
      entries = snapshot.kernel.length
    }
    // Its steps: YAML parse (the fast path the store uses, and the yaml package it falls back
    // to) and validate of every file (cold), then compile (cold).
    const parseFast: Sample[] = []
    const parseYaml: Sample[] = []
    const validate: Sample[] = []
    const texts = Array.from({ length: FILES }, (_, f) => readFileSync(join(dir, 'p', `f${f}.yaml`), 'utf8'))
    let files: FilePolicies[] = []
    for (let i = 0; i < RUNS; i++) {
      const { value: parsed, s: sp } = await measure(() => texts.map((b, f) => parseYamlString(b, `f${f}.yaml`, 0, false, true)))
      parseFast.push(sp)
      if (parsed.some((p) => 'errors' in p || p.fast !== true)) throw new Error('bench files should take the fast path')
      const { value: validated, s: sv } = await measure(() => parsed.map((p) => { if ('errors' in p) throw new Error('parse'); return validatePolicyFile(p).policies }))
      validate.push(sv)
      files = validated
    }
    const store0 = await openStore({ ...opts, watch: false })
    const internals = store0 as unknown as { endpoints: never[] }
    const compileCold: Sample[] = []
    for (let i = 0; i < RUNS; i++) {
      const c = new Compiler(new MemoryIdentityAllocator())
      compileCold.push((await measure(() => c.compile({ endpoints: internals.endpoints, files, learned: [], hostIPs: [], now: Date.now() }))).s)
    }
    await store0.close()

    // Through a store, as the agent runs it (watch events are what call load + compileNow).
    const store = await openStore({ ...opts, watch: false })
    const s = store as unknown as { load: () => Promise<unknown>, compileNow: () => unknown }
    const noopLoad: Sample[] = []
    const noopCompile: Sample[] = []
    for (let i = 0; i < RUNS; i++) {
      noopLoad.push((await measure(async () => await s.load())).s)
      noopCompile.push((await measure(() => s.compileNow())).s)
    }
    const oneLoad: Sample[] = []
    const oneCompile: Sample[] = []
    const oneTotal: Sample[] = []
    for (let i = 1; i <= RUNS; i++) {
      writeFileSync(join(dir, 'p', 'f7.yaml'), fileYaml(7, i))
      const a = (await measure(async () => await s.load())).s
      const b = (await measure(() => s.compileNow())).s
      oneLoad.push(a)
      oneCompile.push(b)
      oneTotal.push({ wall: a.wall + b.wall, cpu: a.cpu + b.cpu })
    }

    // setLearnedNames: the DNS proxy hands over the whole set on every answer with new IPs.
    const now = Date.now()
    const names = Array.from({ length: NAMES }, (_, k) => learnedName(k, fqdnSrcs, now))
    const bulk = await measure(() => store.setLearnedNames(names))
    const withIps = bulk.value.ipcache.length
    const oneName: Sample[] = []
    const sameSet: Sample[] = []
    let set = names
    for (let i = 0; i < Math.max(RUNS, 100); i++) {
      set = [...set, learnedName(NAMES + i, fqdnSrcs, now)]
      const cur = set
      oneName.push((await measure(() => store.setLearnedNames(cur))).s)
      sameSet.push((await measure(() => store.setLearnedNames(cur))).s)
    }
    await store.close()
    // The yaml package on the same files, for reference (last: its garbage would weigh on the
    // steps above, and process CPU time counts the GC threads).
    for (let i = 0; i < 2; i++) parseYaml.push((await measure(() => texts.map((b, f) => parseYamlString(b, `f${f}.yaml`)))).s)

    console.log(`  (${entries} kernel entries; ${withIps} ipcache entries with ${NAMES} learned names)`)
    report('compile (already parsed), cold', compileCold, '< 1000 ms')
    report('full load: read + parse + validate + compile', full)
    report('  YAML parse, all files (fast path)', parseFast)
    report('  YAML parse, all files (yaml package)', parseYaml)
    report('  validate (RE2 compile), all files', validate)
    report('reload, nothing changed: load', noopLoad)
    report('reload, nothing changed: compile', noopCompile)
    report('one-rule change: total', oneTotal, '< 20 ms')
    report('one-rule change: load (rescan, re-read)', oneLoad)
    report('one-rule change: compile', oneCompile)
    report(`setLearnedNames: ${NAMES} names at once`, [bulk.s])
    report('setLearnedNames: +1 name (one DNS answer)', oneName, '< 100 ms')
    report('setLearnedNames: same set again', sameSet)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
