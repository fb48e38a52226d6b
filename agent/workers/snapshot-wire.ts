/**
 * The HTTP proxy's part of a Snapshot as structured-clone data, for proxy workers (worker
 * threads, agent/workers/): compiled matchers hold RE2 objects and closures, which cannot cross
 * threads, so they travel as their sources and are compiled again on the other side with the
 * policy store's own compileFullMatch, once per distinct source. Everything else the proxy reads
 * (endpoints, identity labels, the L7 tables' shape and rule references) is plain data.
 */
import { L7Tables } from '../../policy-store/src/l7-tables.js'
import { compileFullMatch } from '../../policy-store/src/matchers.js'
import type {
  CompiledHttpRule, Endpoint, HeaderAction, HeaderRequirement, HttpPolicy, L7PortTable, Label, RuleRef, Snapshot, StringMatcher
} from '../../policy-store/src/types.js'

interface WireRule {
  method: string | null
  path: string | null
  host: string | null
  headers: readonly HeaderRequirement[]
  headerActions?: readonly HeaderAction[]
  rule: RuleRef
  httpIndex: number
}

interface WirePolicy {
  allowAll: boolean
  allowAllRule?: RuleRef
  rules: WireRule[]
}

interface WireTable {
  endpointId: number
  direction: L7PortTable<HttpPolicy>['direction']
  protocol: L7PortTable<HttpPolicy>['protocol']
  port: number
  endPort: number
  byIdentity: Array<[number, WirePolicy]>
  anyIdentity: WirePolicy | null
}

export interface HttpSnapshotWire {
  version: number
  createdAt: number
  endpoints: readonly Endpoint[]
  identities: ReadonlyMap<number, readonly Label[]>
  http: Array<[number, WireTable]>
}

/** What a proxy worker needs of `snap`, as data a MessagePort can carry. */
export function httpSnapshotToWire (snap: Snapshot): HttpSnapshotWire {
  // One HttpPolicy is often shared by many identities: keep it one object (structured clone
  // keeps shared references, and the other side then compiles it once).
  const seen = new Map<HttpPolicy, WirePolicy>()
  const policy = (p: HttpPolicy): WirePolicy => {
    let w = seen.get(p)
    if (w === undefined) {
      w = { allowAll: p.allowAll, rules: p.rules.map(ruleToWire) }
      if (p.allowAllRule !== undefined) w.allowAllRule = p.allowAllRule
      seen.set(p, w)
    }
    return w
  }
  const http: Array<[number, WireTable]> = []
  for (const [key, t] of snap.http) {
    http.push([key, {
      endpointId: t.endpointId,
      direction: t.direction,
      protocol: t.protocol,
      port: t.port,
      endPort: t.endPort,
      byIdentity: [...t.byIdentity].map(([id, p]) => [id, policy(p)]),
      anyIdentity: t.anyIdentity === null ? null : policy(t.anyIdentity)
    }])
  }
  return { version: snap.version, createdAt: snap.createdAt, endpoints: snap.endpoints, identities: snap.identities, http }
}

function ruleToWire (r: CompiledHttpRule): WireRule {
  return {
    method: r.method?.source ?? null,
    path: r.path?.source ?? null,
    host: r.host?.source ?? null,
    headers: r.headers,
    ...(r.headerActions !== undefined ? { headerActions: r.headerActions } : {}),
    rule: r.rule,
    httpIndex: r.httpIndex
  }
}

/**
 * A Snapshot the HTTP proxy can enforce, from `httpSnapshotToWire`'s data. The kernel, ipcache,
 * DNS and FQDN parts are empty: a worker enforces HTTP only. `reuse` (the previous result's
 * `matchers`) carries compiled patterns from one snapshot to the next, so that a policy edit
 * compiles only what it adds; the result's `matchers` hold just the patterns this one uses.
 */
export function httpSnapshotFromWire (w: HttpSnapshotWire, reuse?: ReadonlyMap<string, StringMatcher>): { snapshot: Snapshot, matchers: Map<string, StringMatcher> } {
  const matchers = new Map<string, StringMatcher>()
  const compile = (source: string | null): StringMatcher | null => {
    if (source === null) return null
    let m = matchers.get(source)
    if (m === undefined) {
      m = reuse?.get(source) ?? compileFullMatch(source)
      matchers.set(source, m)
    }
    return m
  }
  const done = new Map<WirePolicy, HttpPolicy>()
  const policy = (p: WirePolicy): HttpPolicy => {
    let h = done.get(p)
    if (h === undefined) {
      h = {
        allowAll: p.allowAll,
        rules: p.rules.map((r) => ({ method: compile(r.method), path: compile(r.path), host: compile(r.host), headers: r.headers, ...(r.headerActions !== undefined ? { headerActions: r.headerActions } : {}), rule: r.rule, httpIndex: r.httpIndex }))
      }
      if (p.allowAllRule !== undefined) h.allowAllRule = p.allowAllRule
      done.set(p, h)
    }
    return h
  }
  const http = new L7Tables<HttpPolicy>()
  for (const [key, t] of w.http) {
    http.set(key, {
      endpointId: t.endpointId,
      direction: t.direction,
      protocol: t.protocol,
      port: t.port,
      endPort: t.endPort,
      byIdentity: new Map(t.byIdentity.map(([id, p]) => [id, policy(p)])),
      anyIdentity: t.anyIdentity === null ? null : policy(t.anyIdentity)
    })
  }
  const snapshot: Snapshot = {
    version: w.version,
    createdAt: w.createdAt,
    endpoints: w.endpoints,
    identities: w.identities,
    ipcache: [],
    kernel: [],
    http,
    dns: new Map(),
    fqdnSelectors: []
  }
  return { snapshot, matchers }
}
