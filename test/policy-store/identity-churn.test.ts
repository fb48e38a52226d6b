// 200,000 pods created and deleted on one node over simulated weeks, by rolling deployments
// whose pods carry a new name and `pod-template-hash` on every rollout, and one whose version
// label changes every rollout (a new identity each time). Driven through the compiler with a
// fake clock and the file allocator: no identity or endpoint id runs out, the state file stays
// bounded, a label set keeps its number while it is in use, and a released number is reused
// after the grace period, never before.
import t from 'tap'
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Compiler } from '../../policy-store/src/compile.js'
import { FileIdentityAllocator } from '../../policy-store/src/identity.js'
import type { RawEndpoint } from '../../policy-store/src/endpoints.js'
import type { FilePolicies } from '../../policy-store/src/model.js'
import { parseYamlString } from '../../policy-store/src/source-file.js'
import { validatePolicyFile } from '../../policy-store/src/validate.js'

const MINUTE = 60_000
const GRACE = 60 * MINUTE
const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`

function policies (): FilePolicies {
  const parsed = parseYamlString(POLICY, 'p.yaml', 0, true)
  if ('errors' in parsed) throw new Error(JSON.stringify(parsed.errors))
  const v = validatePolicyFile(parsed)
  if (v.errors.length > 0) throw new Error(JSON.stringify(v.errors))
  return { file: 'p.yaml', rules: [...v.policies.rules], policies: 1, skipped: 0 }
}

/** Deployment `d`, generation `g`: its pods' names and labels. */
const DEPLOYMENTS = ['web', 'api', 'db', 'cache', 'queue', 'worker', 'batch', 'canary']
const REPLICAS = 2
function pods (d: number, g: number, ip: (i: number) => string): RawEndpoint[] {
  const app = DEPLOYMENTS[d]
  const hash = (g * 2654435761 >>> 0).toString(16).padStart(8, '0').slice(0, 10)
  return Array.from({ length: REPLICAS }, (_, i) => ({
    name: `${app}-${hash}-${i}`,
    namespace: 'shop',
    // `canary` ships a new version label on every rollout: a new label set each time.
    labels: { app, 'pod-template-hash': hash, ...(app === 'canary' ? { version: `v${g}` } : {}) },
    ipv4: ip(i),
    interface: `lxc${d}x${i}x${g % 7}`,
    line: 1
  }))
}

t.test('200,000 pods of rolling deployments: no exhaustion, bounded state, stable and reused numbers', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'warden-churn-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  let now = Date.UTC(2026, 0, 1)
  let alloc = await FileIdentityAllocator.open(dir, { releaseGraceMs: GRACE, now })
  let compiler = new Compiler(alloc)
  const files = [policies()]
  const gen = DEPLOYMENTS.map(() => 0)
  const live = DEPLOYMENTS.map((_, d) => pods(d, 0, (i) => `10.1.${d}.${i + 1}`))
  let created = DEPLOYMENTS.length * REPLICAS
  const compile = (): ReturnType<Compiler['compile']>['snapshot'] =>
    compiler.compile({ endpoints: live.flat(), files, learned: [], hostIPs: [], now }).snapshot

  let snap = compile()
  const webIdentity = snap.endpoints.find((e) => e.labels.app === 'web')?.identity
  t.ok(webIdentity !== undefined && webIdentity >= 256)
  /** Identity number -> when the label set it was last given to stopped being used. */
  const freedAt = new Map<number, { labels: string, at: number }>()
  const labelsOf = new Map<number, string>()
  let maxStateBytes = 0
  let reusedIdentities = 0
  let reusedEndpointIds = 0
  const endpointFreedAt = new Map<number, number>()
  const endpointKeyOf = new Map<number, string>()
  let failures = 0
  const fail = (msg: string): void => { if (failures++ < 5) t.fail(msg) }
  let restarts = 0

  for (let step = 1; created < 200_000; step++) {
    now += MINUTE
    // One deployment rolls: its pods are replaced by a new generation (new names, new hash).
    const d = step % DEPLOYMENTS.length
    gen[d]++
    live[d] = pods(d, gen[d], (i) => `10.${2 + (gen[d] % 2)}.${d}.${i + 1}`)
    created += REPLICAS
    const prevIds = new Map(snap.endpoints.map((e) => [e.id, `${e.namespace}/${e.name}`]))
    const prevIdentities = new Set(snap.endpoints.map((e) => e.identity))
    snap = compile()

    const ids = new Set(snap.endpoints.map((e) => e.identity))
    for (const e of snap.endpoints) {
      const key = `${e.namespace}/${e.name}`
      if (e.labels.app === 'web' && e.identity !== webIdentity) fail(`web changed identity at step ${step}: ${e.identity}`)
      const labels = e.identityLabels.join(',')
      if (labels.includes('pod-template-hash')) fail(`pod-template-hash counted toward the identity: ${labels}`)
      // A number given to another label set / endpoint: only after the grace period.
      const was = labelsOf.get(e.identity)
      if (was !== undefined && was !== labels) {
        const f = freedAt.get(e.identity)
        if (f === undefined || now - f.at < GRACE) fail(`identity ${e.identity} reused for ${labels} ${f === undefined ? 'while in use' : `${now - f.at} ms after release`}`)
        reusedIdentities++
      }
      labelsOf.set(e.identity, labels)
      freedAt.delete(e.identity)
      const wasKey = endpointKeyOf.get(e.id)
      if (wasKey !== undefined && wasKey !== key) {
        const at = endpointFreedAt.get(e.id)
        if (at === undefined || now - at < GRACE) fail(`endpoint id ${e.id} reused for ${key} ${at === undefined ? 'while in use' : `${now - at} ms after release`}`)
        reusedEndpointIds++
      }
      endpointKeyOf.set(e.id, key)
      endpointFreedAt.delete(e.id)
    }
    const liveIds = new Set(snap.endpoints.map((e) => e.id))
    for (const [id] of prevIds) if (!liveIds.has(id) && !endpointFreedAt.has(id)) endpointFreedAt.set(id, now)
    for (const id of prevIdentities) if (!ids.has(id) && !freedAt.has(id)) freedAt.set(id, { labels: labelsOf.get(id) as string, at: now })

    if (step % 500 === 0) {
      await alloc.collect(now)
      await alloc.flush()
      maxStateBytes = Math.max(maxStateBytes, statSync(join(dir, 'identities.json')).size)
    }
    if (step % 20_000 === 0) {
      // A restart: the state file carries the numbers and their grace periods over.
      await alloc.collect(now)
      await alloc.flush()
      alloc = await FileIdentityAllocator.open(dir, { releaseGraceMs: GRACE, now })
      compiler = new Compiler(alloc)
      const before = new Map(snap.endpoints.map((e) => [`${e.namespace}/${e.name}`, [e.id, e.identity]]))
      snap = compile()
      for (const e of snap.endpoints) if (!t.same([e.id, e.identity], before.get(`${e.namespace}/${e.name}`), 'same numbers after a restart')) failures++
      restarts++
    }
  }
  t.equal(failures, 0, 'no number reused early, no identity change while in use')
  t.ok(created >= 200_000, `${created} pods created`)
  t.ok(restarts >= 2, `${restarts} restarts`)
  t.ok(reusedEndpointIds > 1000, `${reusedEndpointIds} endpoint ids reused after their grace period`)
  t.ok(reusedIdentities > 1000, `${reusedIdentities} identities reused after their grace period`)
  // In use: 16 pods and 8 label sets; in grace: one hour of rollouts (60 x 2 pods, 8 canary versions).
  t.ok(maxStateBytes < 32 * 1024, `state file at most ${maxStateBytes} bytes`)
  await alloc.collect(now)
  const sizes = alloc.sizes
  t.ok(sizes.endpoints <= 16 + 2 * 60 + 2, `endpoint ids reserved: ${sizes.endpoints}`)
  t.ok(sizes.identities <= 8 + 10, `identities reserved: ${sizes.identities}`)
  t.ok(Math.max(...snap.endpoints.map((e) => e.id)) < 300, 'the lowest free endpoint ids are reused')
})
