/**
 * The ingress HTTP rules of one endpoint and port, as the peers (HAProxy, nginx) can express them:
 * source IPs (one group per identity), method and path patterns. Built from the same policy the
 * agent enforces, either through the store's compiled `Snapshot` (the contract in
 * policy-store/src/types.ts) or, for the benchmark's own simple policies, by `rulesFromManifests`.
 */
import { parseAllDocuments } from 'yaml'
import { DIR, l7Key, type Snapshot } from '../policy-store/src/types.js'

/** One allowed (source, method, path) combination. Null fields are not checked (Cilium). */
export interface PeerRule {
  /** Group name, stable and config-safe (one per identity), e.g. `id256`. */
  group: string
  /** Source IPv4 addresses or prefixes of the identity; `0.0.0.0/0` for a wildcard peer. */
  sources: string[]
  /** RE2 full-match patterns as written in the policy. */
  method: string | null
  path: string | null
}

export interface PeerPolicy {
  /** The protected port (the upstream's). */
  port: number
  rules: PeerRule[]
}

export class PeerRulesError extends Error {
  readonly code = 'WARDEN_ERR_BENCH_PEER_RULES'
  constructor (message: string, readonly context: Record<string, unknown> = {}) {
    super(message)
    this.name = 'PeerRulesError'
  }
}

/**
 * From the store's snapshot: the HTTP table of (endpoint, ingress, port). Peers have no header or
 * host rules here: such a policy is refused rather than silently loosened.
 */
export function rulesFromSnapshot (snap: Snapshot, endpoint: string, port: number): PeerPolicy {
  const ep = snap.endpoints.find((e) => e.name === endpoint || `${e.namespace}/${e.name}` === endpoint)
  if (ep === undefined) throw new PeerRulesError(`no endpoint ${endpoint} in the snapshot`, { endpoint })
  const table = snap.http.get(l7Key(ep.id, DIR.INGRESS, port))
  if (table === undefined) throw new PeerRulesError(`no HTTP rules for ${endpoint} port ${port}`, { endpoint, port })
  const ipsOf = (identity: number): string[] => snap.endpoints.filter((e) => e.identity === identity).map((e) => e.ipv4)
  const rules: PeerRule[] = []
  const add = (group: string, sources: string[], policy: typeof table.anyIdentity): void => {
    if (policy === null || sources.length === 0) return
    if (policy.allowAll) { rules.push({ group, sources, method: null, path: null }); return }
    for (const r of policy.rules) {
      if (r.host !== null || r.headers.length > 0) throw new PeerRulesError('host and header rules are not generated for the peers', { rule: r.rule })
      rules.push({ group, sources, method: r.method?.source ?? null, path: r.path?.source ?? null })
    }
  }
  for (const [identity, policy] of [...table.byIdentity].sort((a, b) => a[0] - b[0])) add(`id${identity}`, ipsOf(identity), policy)
  add('any', ['0.0.0.0/0'], table.anyIdentity)
  return { port, rules }
}

export interface BenchEndpoint {
  name: string
  namespace?: string
  labels: Record<string, string>
  ipv4: string
  interface: string
}

type Json = Record<string, unknown>
const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v)

/** `k8s:app` and `any:app` select label `app`; the bench's endpoints carry k8s labels only. */
function matchLabels (sel: unknown, ep: BenchEndpoint, policyNs: string): boolean {
  if (!isObj(sel)) throw new PeerRulesError('selector must be an object', { sel })
  for (const k of Object.keys(sel)) if (k !== 'matchLabels') throw new PeerRulesError(`selector field ${k} is not supported by the bench's reader`, { sel })
  const want = (sel.matchLabels ?? {}) as Json
  let namesNs = false
  for (const [rawKey, value] of Object.entries(want)) {
    const key = rawKey.replace(/^(k8s|any):/, '')
    if (key === 'io.kubernetes.pod.namespace') { namesNs = true; if ((ep.namespace ?? 'default') !== value) return false; continue }
    if (ep.labels[key] !== value) return false
  }
  return namesNs || (ep.namespace ?? 'default') === policyNs
}

/**
 * A deliberately small reader for the benchmark's own policies (namespaced CNPs with matchLabels
 * selectors, ingress rules, TCP ports, http method/path): anything else is refused, so the peers
 * are never generated from a policy this reader does not fully understand. L4-only rules become
 * a rule with no method and no path.
 */
export function rulesFromManifests (texts: string[], endpoints: BenchEndpoint[], target: string, port: number): PeerPolicy {
  const ep = endpoints.find((e) => e.name === target)
  if (ep === undefined) throw new PeerRulesError(`no endpoint ${target}`, { target })
  const rules: PeerRule[] = []
  const groups = new Map<string, string>()
  for (const text of texts) {
    for (const doc of parseAllDocuments(text)) {
      const d = doc.toJS() as unknown
      if (!isObj(d) || d.kind !== 'CiliumNetworkPolicy') throw new PeerRulesError('only CiliumNetworkPolicy documents are supported', { kind: isObj(d) ? d.kind : undefined })
      const meta = (d.metadata ?? {}) as Json
      const ns = typeof meta.namespace === 'string' ? meta.namespace : 'default'
      const spec = d.spec as Json
      for (const k of Object.keys(spec)) if (k !== 'endpointSelector' && k !== 'ingress') throw new PeerRulesError(`spec.${k} is not supported by the bench's reader`)
      if (!matchLabels(spec.endpointSelector, ep, ns)) continue
      for (const rule of (spec.ingress ?? []) as Json[]) {
        for (const k of Object.keys(rule)) if (k !== 'fromEndpoints' && k !== 'toPorts') throw new PeerRulesError(`ingress.${k} is not supported by the bench's reader`)
        const peers = endpoints.filter((p) => ((rule.fromEndpoints ?? []) as unknown[]).some((s) => matchLabels(s, p, ns)))
        if (peers.length === 0) continue
        for (const tp of (rule.toPorts ?? []) as Json[]) {
          const ports = (tp.ports ?? []) as Json[]
          if (!ports.some((p) => Number(p.port) === port && (p.protocol ?? 'TCP') === 'TCP')) continue
          const key = peers.map((p) => p.ipv4).sort().join(',')
          const group = groups.get(key) ?? `id${groups.size}`
          groups.set(key, group)
          const sources = peers.map((p) => p.ipv4)
          const http = ((tp.rules ?? {}) as Json).http as Json[] | undefined
          if (http === undefined) { rules.push({ group, sources, method: null, path: null }); continue }
          for (const h of http) {
            for (const k of Object.keys(h)) if (k !== 'method' && k !== 'path') throw new PeerRulesError(`http.${k} is not supported by the bench's reader`)
            rules.push({ group, sources, method: (h.method as string | undefined) ?? null, path: (h.path as string | undefined) ?? null })
          }
        }
      }
    }
  }
  return { port, rules }
}

/** How a full-match pattern can be evaluated: a literal compare, a prefix, or a regex. */
export type PatternKind = { kind: 'exact', value: string } | { kind: 'prefix', value: string } | { kind: 'regex', value: string }

const META = /[\\^$.|?*+()[\]{}]/

/** The same shortcut warden's matchers take: `abc` is a literal, `abc.*` a prefix, else a regex. */
export function classifyPattern (p: string): PatternKind {
  if (!META.test(p)) return { kind: 'exact', value: p }
  if (p.endsWith('.*') && !META.test(p.slice(0, -2))) return { kind: 'prefix', value: p.slice(0, -2) }
  return { kind: 'regex', value: p }
}
