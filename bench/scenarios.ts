/**
 * The scenarios of `npm run bench`. Every scenario sends one kind of request from the client
 * namespace; what differs is what stands between the client and the upstream.
 */
import { REQUESTS, type BenchRequest, type PolicySet } from './workloads.js'

export type ScenarioKind = 'direct' | 'warden' | 'haproxy' | 'nginx'

export interface Scenario {
  name: string
  kind: ScenarioKind
  /** The policy enforced (none for direct). */
  set: PolicySet | null
  request: BenchRequest
  description: string
  /** Extra `warden run` flags (warden scenarios). */
  agentArgs?: readonly string[]
  /** HTTP/2 with prior knowledge on both sides, driven by h2load instead of autocannon. */
  h2?: boolean
}

export const SCENARIOS: readonly Scenario[] = [
  { name: 'direct', kind: 'direct', set: null, request: REQUESTS.allow, description: 'no agent: client to the nginx upstream (the limit)' },
  { name: 'warden-l4', kind: 'warden', set: 'l4', request: REQUESTS.allow, description: 'agent attached, port allowed at L4 only: the kernel path, with BPF host routing (the default)' },
  { name: 'warden-l4-legacy', kind: 'warden', set: 'l4', request: REQUESTS.allow, agentArgs: ['--host-routing', 'legacy'], description: 'the same with --host-routing legacy: the programs on the host\'s own routing path' },
  { name: 'warden-l7', kind: 'warden', set: 'l7', request: REQUESTS.allow, description: "the seed's billing policy, allowed POST /api/v1/charge from checkout" },
  { name: 'warden-l7-deny', kind: 'warden', set: 'l7', request: REQUESTS.deny, description: 'the billing policy, denied POST /api/v1/refund (403)' },
  { name: 'warden-l7-scale', kind: 'warden', set: 'scale', request: REQUESTS.scale, description: '1,000 HTTP rules over 100 identities, matching the last rule' },
  { name: 'haproxy-l7', kind: 'haproxy', set: 'l7', request: REQUESTS.allow, description: 'HAProxy 2.6, the billing policy as src/method/path ACLs, explicit reverse proxy' },
  { name: 'nginx-l7', kind: 'nginx', set: 'l7', request: REQUESTS.allow, description: 'nginx 1.22, the billing policy as geo + map, explicit reverse proxy' },
  { name: 'haproxy-l7-deny', kind: 'haproxy', set: 'l7', request: REQUESTS.deny, description: 'HAProxy, denied request (403)' },
  { name: 'nginx-l7-deny', kind: 'nginx', set: 'l7', request: REQUESTS.deny, description: 'nginx, denied request (403)' },
  { name: 'haproxy-l7-scale', kind: 'haproxy', set: 'scale', request: REQUESTS.scale, description: 'HAProxy with the 1,000-rule policy, matching the last rule' },
  { name: 'nginx-l7-scale', kind: 'nginx', set: 'scale', request: REQUESTS.scale, description: 'nginx with the 1,000-rule policy, matching the last rule' },
  { name: 'direct-h2', kind: 'direct', set: null, request: REQUESTS.allow, h2: true, description: 'HTTP/2 (h2c), h2load straight to the nginx upstream\'s HTTP/2 port (the limit)' },
  { name: 'warden-l7-h2', kind: 'warden', set: 'l7h2', request: REQUESTS.allow, h2: true, description: 'HTTP/2 (h2c) both sides, the billing policy, allowed POST /api/v1/charge (h2load)' },
  { name: 'haproxy-l7-h2', kind: 'haproxy', set: 'l7h2', request: REQUESTS.allow, h2: true, description: 'HAProxy 2.6 with HTTP/2 on both sides, the same ACLs (h2load)' }
]

/** Scenarios cross-checked with wrk under `--wrk` (the top figures). */
export const WRK_SCENARIOS = ['direct', 'haproxy-l7', 'nginx-l7', 'warden-l7']

/** Selects scenarios by name (comma-separated), in the canonical order. */
export function selectScenarios (names: string | undefined): Scenario[] {
  if (names === undefined || names === '') return [...SCENARIOS]
  const wanted = names.split(',').map((s) => s.trim()).filter((s) => s !== '')
  for (const w of wanted) if (!SCENARIOS.some((s) => s.name === w)) throw new Error(`unknown scenario ${w} (known: ${SCENARIOS.map((s) => s.name).join(', ')})`)
  return SCENARIOS.filter((s) => wanted.includes(s.name))
}
