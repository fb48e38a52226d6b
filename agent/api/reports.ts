/**
 * What the local API answers, built from the agent's parts on each request (an operator's
 * command, not the data path). Plain JSON; the CLI renders tables from the same objects.
 */
import { RESERVED, type CompiledHttpRule, type DnsPolicy, type Endpoint, type KernelEntry, type RuleRef, type Snapshot } from '../../policy-store/src/types.js'
import type { StoreInventory } from '../../policy-store/src/index.js'
import { formatPolicyError } from '../../policy-store/src/errors.js'
import type { DatapathInspection } from '../../redirect-bpf/src/index.js'
import type { PersistedCache } from '../../proxy/src/dns/cache.js'
import type { EventRing } from '../observe/ring.js'
import type { ClusterStatus } from '../../cluster/src/cluster.js'
import type { ProxyPolicy } from '../workers/enforced-versions.js'

export interface ReportSources {
  version: string
  startedAt: number
  /** The store's latest snapshot (may be ahead of the kernel while an apply runs). */
  compiled (): Snapshot
  /** The snapshot in the kernel and the proxies. */
  active (): Snapshot
  inventory (): StoreInventory
  inspect (): DatapathInspection
  /** Each HTTP proxy (0: the main thread's, 1..: worker threads): running, the policy version it enforces, how far behind. */
  httpProxies (): ProxyPolicy[]
  auditAll: boolean
  metrics (): Record<string, number>
  fqdnCache (): PersistedCache['entries']
  ring: EventRing
  /** Cluster mode only: the cluster store's connection and copies. */
  cluster?: () => ClusterStatus
}

const epName = (e: Endpoint): string => `${e.namespace}/${e.name}`

function ruleText (r: RuleRef): { file: string, line: number, policy: string, section: string, index: number } {
  return { file: r.file, line: r.line, policy: r.policy, section: r.section, index: r.index }
}

/**
 * The (endpoint, direction) pairs no rule selects: the compiler gives them one rule-less
 * allow-everything entry. One pass over the entries, for every endpoint at once.
 */
function openDirections (snap: Snapshot): Set<number> {
  const open = new Set<number>()
  for (const k of snap.kernel) {
    if (k.rule === undefined && k.remoteIdentity === 0 && k.protocol === 0 && k.verdict === 'allow') open.add(k.endpointId * 2 + k.direction)
  }
  return open
}

export function statusReport (s: ReportSources): Record<string, unknown> {
  const snap = s.active()
  const inv = s.inventory()
  const dp = s.inspect()
  const m = s.metrics()
  const workers = s.httpProxies()
  const compiled = s.compiled().version
  const running = workers.filter((w) => w.running)
  const proxies = { total: workers.length, running: running.length }
  const pending = snap.endpoints.filter((e) => dp.pending.includes(e.interface))
  const rejected = inv.rejected.map(formatPolicyError)
  const degraded: string[] = []
  if (rejected.length > 0) degraded.push(`${rejected.length} policy error(s): the last good version of each rejected file is in force`)
  for (const e of pending) degraded.push(`endpoint ${epName(e)} not attached: interface ${e.interface} not found`)
  for (const e of snap.endpoints) {
    if (e.pendingIdentityLabels === undefined) continue
    degraded.push(`endpoint ${epName(e)} ${e.identity === RESERVED.INIT ? 'has the init identity' : `keeps its previous identity ${e.identity}`}: its labels have no number yet (kvstore unreachable?)`)
  }
  if (proxies.running < proxies.total) {
    degraded.push(`${proxies.total - proxies.running} of ${proxies.total} HTTP proxy workers down (worker ${workers.filter((w) => !w.running).map((w) => w.worker).join(', ')})`)
  }
  for (const w of workers) {
    if (!w.lagging) continue
    degraded.push(`HTTP proxy worker ${w.worker} enforces policy version ${String(w.policyVersion)}, ${compiled} compiled: behind for ${w.behindSeconds} s` +
      (snap.version < compiled ? ` (the kernel has ${snap.version}: is the apply failing? see the agent's log)` : ''))
  }
  const cluster = s.cluster?.()
  if (cluster !== undefined && cluster.state !== 'connected') {
    degraded.push(`kvstore ${cluster.state}${cluster.state === 'down' ? ` for ${cluster.downSeconds} s` : ''}${cluster.lastError !== null ? ` (${cluster.lastError.message})` : ''}: enforcing the cluster state last seen`)
  }
  if (cluster !== undefined && cluster.remoteEntriesDropped > 0) degraded.push(`${cluster.remoteEntriesDropped} remote ipcache entries beyond the limit are not enforced by identity`)
  const leftOut = m.warden_datapath_ipcache_left_out ?? 0
  if (leftOut > 0) degraded.push(`the kernel ipcache is full: ${leftOut} address entries left out are treated as world (--ipcache-max-entries)`)
  const sum = (...keys: string[]): number => keys.reduce((n, k) => n + (m[k] ?? 0), 0)
  const prefixed = (p: string): string[] => Object.keys(m).filter((k) => k.startsWith(p))
  const audited = snap.endpoints.filter((e) => e.audit === true).map(epName)
  return {
    version: s.version,
    pid: process.pid,
    uptimeSeconds: Math.round((Date.now() - s.startedAt) / 1000),
    healthy: degraded.length === 0,
    degraded,
    // httpProxy: the oldest version a running HTTP proxy enforces (each one's is in http.workers)
    policy: { compiled, kernel: snap.version, httpProxy: Math.min(...running.map((w) => w.policyVersion ?? snap.version), snap.version), dnsProxy: snap.version },
    audit: s.auditAll ? 'node' : audited.length > 0 ? 'endpoints' : 'off',
    auditEndpoints: audited,
    files: { loaded: inv.files, rejected },
    endpoints: {
      total: snap.endpoints.length,
      attached: snap.endpoints.length - pending.length,
      pending: pending.map((e) => ({ endpoint: epName(e), interface: e.interface, why: 'interface not found; attached when it appears' }))
    },
    identities: snap.identities.size,
    maps: dp.maps,
    http: {
      proxies,
      workers,
      connectionsActive: m.warden_http_connections_active ?? 0,
      requests: m.warden_http_requests ?? 0,
      allowed: m.warden_http_allowed ?? 0,
      denied: sum(...prefixed('warden_http_denied_')),
      audited: m.warden_http_audited ?? 0,
      rejected: sum(...prefixed('warden_http_rejected_')),
      upstreamErrors: sum(...prefixed('warden_http_upstream_errors_'))
    },
    dns: {
      queries: m.warden_dns_queries ?? 0,
      allowed: m.warden_dns_allowed ?? 0,
      refused: m.warden_dns_refused ?? 0,
      audited: m.warden_dns_audited ?? 0,
      errors: sum('warden_dns_upstreamTimeouts', 'warden_dns_upstreamErrors', 'warden_dns_formerr', 'warden_dns_overload')
    },
    kernel: {
      dropped: sum(...prefixed('warden_datapath_drop_')),
      audited: sum('warden_datapath_audit_policy', 'warden_datapath_audit_policy_deny')
    },
    fqdn: { names: m.warden_dns_cachedNames ?? 0, ips: m.warden_dns_cachedIps ?? 0, zombies: m.warden_dns_zombies ?? 0 },
    events: { buffered: s.ring.size, capacity: s.ring.capacity, seen: s.ring.total, followers: s.ring.followers },
    ...(cluster === undefined ? {} : { cluster })
  }
}

export function endpointsReport (s: ReportSources): Record<string, unknown>[] {
  const snap = s.active()
  const pending = new Set(s.inspect().pending)
  const open = openDirections(snap)
  const enforcement = (e: Endpoint, dir: 0 | 1): string => open.has(e.id * 2 + dir) ? 'no policy (allow all)' : 'enforcing'
  return snap.endpoints.map((e) => ({
    id: e.id,
    endpoint: epName(e),
    identity: e.identity,
    ipv4: e.ipv4,
    interface: e.interface,
    state: pending.has(e.interface) ? 'pending' : 'attached',
    audit: e.audit === true,
    ingress: enforcement(e, 0),
    egress: enforcement(e, 1),
    labels: e.identityLabels,
    // waiting for etcd to number these (the init identity, or the previous one kept)
    ...(e.pendingIdentityLabels !== undefined ? { pendingLabels: e.pendingIdentityLabels } : {})
  }))
}

export function identitiesReport (s: ReportSources): Record<string, unknown>[] {
  const snap = s.active()
  const eps = new Map<number, string[]>()
  for (const e of snap.endpoints) {
    const l = eps.get(e.identity)
    if (l === undefined) eps.set(e.identity, [epName(e)]); else l.push(epName(e))
  }
  return [...snap.identities].sort((a, b) => a[0] - b[0]).map(([id, labels]) => ({ identity: id, labels, endpoints: eps.get(id) ?? [] }))
}

export function fqdnReport (s: ReportSources): Record<string, unknown>[] {
  const rows: Record<string, unknown>[] = []
  for (const e of s.fqdnCache()) {
    for (const ip of e.ips) rows.push({ endpoint: e.endpoint, name: e.name, ip: ip.ip, expiresAt: new Date(ip.expiresAt).toISOString(), zombie: ip.zombie })
  }
  rows.sort((a, b) => String(a.endpoint).localeCompare(String(b.endpoint)) || String(a.name).localeCompare(String(b.name)) || String(a.ip).localeCompare(String(b.ip)))
  return rows
}

/** `namespace/name`, or a bare name when it is unique on the node. */
export function findEndpoint (snap: Snapshot, sel: string): Endpoint | undefined {
  if (sel.includes('/')) return snap.endpoints.find((e) => epName(e) === sel)
  const hits = snap.endpoints.filter((e) => e.name === sel)
  return hits.length === 1 ? hits[0] : undefined
}

const PROTO: Record<number, string> = { 0: 'ANY', 1: 'ICMP', 6: 'TCP', 17: 'UDP', 132: 'SCTP' }
const DIRS = ['ingress', 'egress'] as const

function kernelRow (snap: Snapshot, k: KernelEntry): Record<string, unknown> {
  return {
    direction: DIRS[k.direction],
    peerIdentity: k.remoteIdentity === 0 ? 'any' : k.remoteIdentity,
    peerLabels: k.remoteIdentity === 0 ? [] : snap.identities.get(k.remoteIdentity) ?? [],
    protocol: PROTO[k.protocol] ?? String(k.protocol),
    port: k.port === 0 ? 'any' : k.endPort !== 0 && k.endPort !== k.port ? `${k.port}-${k.endPort}` : String(k.port),
    verdict: k.verdict,
    rule: k.rule === undefined ? undefined : ruleText(k.rule),
    reason: k.reason
  }
}

export function selectedReport (s: ReportSources, sel: string): Record<string, unknown> | null {
  const snap = s.active()
  const ep = findEndpoint(snap, sel)
  if (ep === undefined) return null
  const kernel = snap.kernel.filter((k) => k.endpointId === ep.id).map((k) => kernelRow(snap, k))
  const l7: Record<string, unknown>[] = []
  for (const [kind, tables] of [['http', snap.http], ['dns', snap.dns]] as const) {
    for (const t of tables.values()) {
      if (t.endpointId !== ep.id) continue
      const peers: Array<[number | 'any', typeof t.anyIdentity]> = [...t.byIdentity].map(([id, p]) => [id, p])
      if (t.anyIdentity !== null) peers.push(['any', t.anyIdentity])
      for (const [peer, p] of peers) {
        if (p === null) continue
        const base = { kind, direction: DIRS[t.direction], port: t.port, peerIdentity: peer, peerLabels: peer === 'any' ? [] : snap.identities.get(peer) ?? [] }
        if (p.allowAll) l7.push({ ...base, match: 'all requests (no L7 rules for this peer)', rule: p.allowAllRule === undefined ? undefined : ruleText(p.allowAllRule) })
        for (const r of p.rules) l7.push({ ...base, match: l7Match(r), rule: ruleText(r.rule) })
      }
    }
  }
  return { endpoint: epName(ep), id: ep.id, identity: ep.identity, labels: ep.identityLabels, audit: ep.audit === true, policyVersion: snap.version, kernel, l7 }
}

function l7Match (r: CompiledHttpRule | DnsPolicy['rules'][number]): string {
  if ('pattern' in r) return `dns ${r.pattern}`
  const parts: string[] = []
  if (r.method !== null) parts.push(`method ${r.method.source}`)
  if (r.path !== null) parts.push(`path ${r.path.source}`)
  if (r.host !== null) parts.push(`host ${r.host.source}`)
  for (const h of r.headers) parts.push(`header ${h.name}${h.value === null ? '' : ': ' + h.value}`)
  return parts.length === 0 ? 'any request' : parts.join(', ')
}
