/**
 * Policies + endpoints + learned names -> one immutable Snapshot and its diff. The compiler
 * keeps caches between runs so that a one-rule change recompiles only the endpoints whose
 * inputs changed (their selecting rules, or the identities those rules' peers resolve to).
 */
import { formatIPv4, formatPrefix, parseIPv4, prefixContains, type Prefix } from './cidr.js'
import type { IdentityAllocator } from './identity.js'
import { labelsKey } from './identity.js'
import { identityLabelsOf, LabelSet, matchesSelector, type Selector } from './labels.js'
import type { FilePolicies, Peer, PolicyRule, RuleElement } from './model.js'
import type { RawEndpoint } from './endpoints.js'
import { resolveDirection, type DirectionInput } from './resolve.js'
import {
  ANY_IDENTITY, DIR, LOCAL_IDENTITY_BASE, RESERVED, type DnsPolicy, type Endpoint, type FqdnSelector, type HttpPolicy,
  type IpcacheEntry, type KernelEntry, type L7PortTable, type Label, type LearnedName, type Snapshot, type SnapshotDiff
} from './types.js'

export const RESERVED_LABELS: ReadonlyMap<number, readonly Label[]> = new Map([
  [RESERVED.HOST, ['reserved:host']],
  [RESERVED.WORLD, ['reserved:world']],
  [RESERVED.UNMANAGED, ['reserved:unmanaged']],
  [RESERVED.HEALTH, ['reserved:health']],
  [RESERVED.INIT, ['reserved:init']],
  [RESERVED.REMOTE_NODE, ['reserved:remote-node']],
  [RESERVED.KUBE_APISERVER, ['reserved:kube-apiserver']],
  [RESERVED.INGRESS, ['reserved:ingress']],
  [RESERVED.WORLD_IPV4, ['reserved:world-ipv4']],
  [RESERVED.WORLD_IPV6, ['reserved:world-ipv6']]
])

export interface CompileInput {
  endpoints: readonly RawEndpoint[]
  files: readonly FilePolicies[]
  learned: readonly LearnedName[]
  hostIPs: readonly string[]
  /** For learned-name expiry. */
  now: number
  /** Label sets of peers that are not on this node (trace's `labels:`), compiled as identities. */
  extraLabelSets?: readonly (readonly Label[])[]
}

interface EpResult { fingerprint: string, entries: KernelEntry[], http: [number, L7PortTable<HttpPolicy>][], dns: [number, L7PortTable<DnsPolicy>][] }

interface Local { id: number, prefix: Prefix, fqdnKeys: string[] }

export class Compiler {
  private version = 0
  private prevSnapshot: Snapshot | null = null
  private epCache = new Map<number, EpResult>()
  private readonly localIds = new Map<string, number>()
  private nextLocal = LOCAL_IDENTITY_BASE
  private selectorCache = new Map<string, number[]>()
  private selectorUniverse = ''
  private readonly peerRes = new Map<number, { sig: string, ver: number, ids: number[] | null, podKey: string, localKey: string }>()
  private peerVer = 0

  constructor (private readonly allocator: IdentityAllocator) {}

  get current (): Snapshot | null { return this.prevSnapshot }

  compile (input: CompileInput): { snapshot: Snapshot, diff: SnapshotDiff } {
    const identities = new Map<number, readonly Label[]>(RESERVED_LABELS)
    // Endpoints and their identities.
    const endpoints: Endpoint[] = input.endpoints.map((e) => {
      const identityLabels = identityLabelsOf(e.labels, e.namespace)
      const identity = this.allocator.identityFor(identityLabels)
      identities.set(identity, identityLabels)
      return { id: this.allocator.endpointIdFor(`${e.namespace}/${e.name}`), name: e.name, namespace: e.namespace, labels: { ...e.labels }, identityLabels, identity, ipv4: e.ipv4, interface: e.interface, line: e.line }
    })
    const podIds = new Set(endpoints.map((e) => e.identity))
    for (const ls of input.extraLabelSets ?? []) {
      const id = this.allocator.identityFor(ls)
      identities.set(id, [...ls].sort())
      podIds.add(id)
    }
    const rules: PolicyRule[] = input.files.flatMap((f) => f.rules)

    // Local (CIDR / FQDN) identities and the ipcache.
    const ipcache = new Map<string, IpcacheEntry>()
    ipcache.set('0.0.0.0/0', { prefix: '0.0.0.0/0', identity: RESERVED.WORLD, endpointId: 0 })
    const taken = new Set<number>()
    for (const ip of input.hostIPs) {
      const n = parseIPv4(ip)
      if (n === null) continue
      taken.add(n)
      ipcache.set(`${ip}/32`, { prefix: `${ip}/32`, identity: RESERVED.HOST, endpointId: 0 })
    }
    for (const e of endpoints) {
      taken.add(parseIPv4(e.ipv4) as number)
      ipcache.set(`${e.ipv4}/32`, { prefix: `${e.ipv4}/32`, identity: e.identity, endpointId: e.id })
    }
    const fqdnSelectors = new Map<string, FqdnSelector>()
    const prefixes = new Map<string, { prefix: Prefix, fqdnKeys: Set<string> }>()
    for (const r of rules) {
      for (const el of r.elements) {
        for (const p of el.peers ?? []) {
          if (p.kind === 'cidr') {
            for (const x of [p.prefix, ...p.except]) {
              if (x.len === 0 || (x.len === 32 && taken.has(x.addr))) continue
              prefixes.set(formatPrefix(x), { prefix: x, fqdnKeys: new Set() })
            }
          } else if (p.kind === 'fqdn' && !fqdnSelectors.has(p.matcher.key)) {
            fqdnSelectors.set(p.matcher.key, { key: p.matcher.key, test: p.matcher.test })
          }
        }
      }
    }
    for (const ln of input.learned) {
      if (ln.expiresAt <= input.now) continue
      const keys = [...fqdnSelectors.values()].filter((s) => s.test(ln.name)).map((s) => s.key)
      if (keys.length === 0) continue
      for (const ip of ln.ipv4) {
        const n = parseIPv4(ip)
        if (n === null || taken.has(n)) continue
        const k = `${formatIPv4(n)}/32`
        let e = prefixes.get(k)
        if (e === undefined) prefixes.set(k, e = { prefix: { addr: n, len: 32 }, fqdnKeys: new Set() })
        for (const key of keys) e.fqdnKeys.add(key)
      }
    }
    const locals: Local[] = []
    for (const [k, { prefix, fqdnKeys }] of prefixes) {
      const fk = [...fqdnKeys].sort()
      const labels = [`cidr:${k}`, 'reserved:world', ...fk.map((f) => `fqdn:${f}`)].sort()
      const lk = labelsKey(labels)
      let id = this.localIds.get(lk)
      if (id === undefined) this.localIds.set(lk, id = this.nextLocal++)
      identities.set(id, labels)
      locals.push({ id, prefix, fqdnKeys: fk })
      ipcache.set(k, { prefix: k, identity: id, endpointId: 0 })
    }

    // Selection.
    const universe = new Universe(identities, podIds, locals)
    const universeKey = [...podIds].sort((a, b) => a - b).join(',')
    if (universeKey !== this.selectorUniverse) {
      this.selectorCache = new Map()
      this.selectorUniverse = universeKey
    }
    const selectCached = (sel: Selector): number[] => {
      let ids = this.selectorCache.get(sel.canonical)
      if (ids === undefined) this.selectorCache.set(sel.canonical, ids = universe.select(sel))
      return ids
    }
    // Peers resolve against pod identities (endpoint selectors, `cluster`) and/or local
    // identities (CIDR, FQDN, `world`); re-resolve an element only when its side changed.
    const localKey = locals.map((l) => `${l.id}`).join(',')
    const seenEls = new Set<number>()
    const resolveEl = (el: RuleElement): { ids: number[] | null, ver: number } => {
      seenEls.add(el.uid)
      const prev = this.peerRes.get(el.uid)
      const deps = peerDeps(el)
      const pk = deps.pods ? universeKey : ''
      const lk = deps.locals ? localKey : ''
      if (prev !== undefined && prev.podKey === pk && prev.localKey === lk) return prev
      const ids = el.peers === null ? null : resolvePeers(el.peers, universe, selectCached)
      const sig = ids === null ? '*' : ids.join(',')
      if (prev !== undefined && prev.sig === sig) {
        prev.podKey = pk
        prev.localKey = lk
        return prev
      }
      const res = { sig, ver: ++this.peerVer, ids, podKey: pk, localKey: lk }
      this.peerRes.set(el.uid, res)
      return res
    }

    // Rules selecting each endpoint.
    const epsByIdentity = new Map<number, Endpoint[]>()
    for (const e of endpoints) {
      const l = epsByIdentity.get(e.identity)
      if (l === undefined) epsByIdentity.set(e.identity, [e])
      else l.push(e)
    }
    const rulesByEp = new Map<number, PolicyRule[]>()
    for (const r of rules) {
      for (const id of selectCached(r.subject)) {
        for (const e of epsByIdentity.get(id) ?? []) {
          const l = rulesByEp.get(e.id)
          if (l === undefined) rulesByEp.set(e.id, [r])
          else l.push(r)
        }
      }
    }

    // Per endpoint: reuse the cached result when its inputs did not change.
    const newCache = new Map<number, EpResult>()
    const diffAdded: KernelEntry[] = []
    const diffRemoved: KernelEntry[] = []
    for (const e of endpoints) {
      const epRules = rulesByEp.get(e.id) ?? []
      const dirs: [DirectionInput, DirectionInput] = [
        { elements: [], selected: false, defaultDeny: false },
        { elements: [], selected: false, defaultDeny: false }
      ]
      const fp: (string | number)[] = [e.id, e.identity]
      for (const r of epRules) {
        fp.push('r', r.uid)
        for (const d of [DIR.INGRESS, DIR.EGRESS]) {
          if (r.hasSection[d]) dirs[d].selected = true
          if (r.defaultDeny[d]) dirs[d].defaultDeny = true
        }
        for (const el of r.elements) {
          const { ids, ver } = resolveEl(el)
          fp.push(ver)
          ;(dirs[el.direction].elements as { el: RuleElement, ids: number[] | null }[]).push({ el, ids })
        }
      }
      const fingerprint = fp.join(' ')
      const cached = this.epCache.get(e.id)
      if (cached !== undefined && cached.fingerprint === fingerprint) {
        newCache.set(e.id, cached)
        continue
      }
      const ing = resolveDirection(e.id, DIR.INGRESS, dirs[0])
      const eg = resolveDirection(e.id, DIR.EGRESS, dirs[1])
      const res: EpResult = { fingerprint, entries: [...ing.entries, ...eg.entries], http: [...ing.http, ...eg.http], dns: [...ing.dns, ...eg.dns] }
      newCache.set(e.id, res)
      diffEntries(cached?.entries ?? [], res.entries, diffAdded, diffRemoved)
    }
    for (const [id, old] of this.epCache) if (!newCache.has(id)) diffRemoved.push(...old.entries)
    this.epCache = newCache
    for (const uid of this.peerRes.keys()) if (!seenEls.has(uid)) this.peerRes.delete(uid)

    const kernel: KernelEntry[] = []
    const http = new Map<number, L7PortTable<HttpPolicy>>()
    const dns = new Map<number, L7PortTable<DnsPolicy>>()
    for (const e of endpoints) {
      const r = newCache.get(e.id) as EpResult
      for (const x of r.entries) kernel.push(x)
      for (const [k, t] of r.http) http.set(k, t)
      for (const [k, t] of r.dns) dns.set(k, t)
    }
    const snapshot: Snapshot = Object.freeze({
      version: ++this.version,
      createdAt: Date.now(),
      endpoints: Object.freeze(endpoints),
      identities,
      ipcache: Object.freeze([...ipcache.values()]),
      kernel: Object.freeze(kernel),
      http,
      dns,
      fqdnSelectors: Object.freeze([...fqdnSelectors.values()])
    })
    const diff = diffSnapshots(this.prevSnapshot, snapshot, diffAdded, diffRemoved)
    this.prevSnapshot = snapshot
    return { snapshot, diff }
  }
}

/** The identities a selector can pick from, with an index for matchLabels lookups. */
class Universe {
  private readonly sets = new Map<number, LabelSet>()
  private readonly byKV = new Map<string, number[]>()
  private readonly byK = new Map<string, number[]>()
  private readonly all: number[] = []

  constructor (identities: ReadonlyMap<number, readonly Label[]>, readonly podIds: ReadonlySet<number>, readonly locals: readonly Local[]) {
    for (const id of [...RESERVED_LABELS.keys(), ...podIds]) {
      const ls = new LabelSet(identities.get(id) ?? [])
      this.sets.set(id, ls)
      this.all.push(id)
      for (const l of ls.labels) {
        const c = l.indexOf(':')
        const kv = l.slice(c + 1)
        const e = kv.indexOf('=')
        push(this.byKV, kv, id)
        push(this.byK, e === -1 ? kv : kv.slice(0, e), id)
      }
    }
  }

  /** Endpoint selectors pick among pod identities and reserved identities (never CIDR/FQDN). */
  select (sel: Selector): number[] {
    let candidates = this.all
    const inReq = sel.reqs.find((r) => r.op === 'In')
    if (inReq !== undefined) {
      candidates = [...new Set(inReq.values.flatMap((v) => this.byKV.get(`${inReq.key}=${v}`) ?? (v === '' ? this.byKV.get(inReq.key) ?? [] : [])))]
    } else {
      const ex = sel.reqs.find((r) => r.op === 'Exists')
      if (ex !== undefined) candidates = this.byK.get(ex.key) ?? []
    }
    return candidates.filter((id) => matchesSelector(sel, this.sets.get(id) as LabelSet)).sort((a, b) => a - b)
  }

  entity (e: string): number[] {
    const R = RESERVED
    switch (e) {
      case 'world': case 'world-ipv4': return [R.WORLD, R.WORLD_IPV4, ...this.locals.map((l) => l.id)]
      case 'world-ipv6': return [R.WORLD_IPV6]
      case 'cluster': return [R.HOST, R.REMOTE_NODE, R.INIT, R.INGRESS, R.HEALTH, R.UNMANAGED, R.KUBE_APISERVER, ...this.podIds]
      case 'host': return [R.HOST]
      case 'remote-node': return [R.REMOTE_NODE]
      case 'kube-apiserver': return [R.KUBE_APISERVER]
      case 'ingress': return [R.INGRESS]
      case 'init': return [R.INIT]
      case 'health': return [R.HEALTH]
      case 'unmanaged': return [R.UNMANAGED]
      default: return []
    }
  }

  cidr (prefix: Prefix, except: readonly Prefix[]): number[] {
    const out = this.locals.filter((l) => prefixContains(prefix, l.prefix) && !except.some((x) => prefixContains(x, l.prefix))).map((l) => l.id)
    if (prefix.len === 0) out.push(RESERVED.WORLD, RESERVED.WORLD_IPV4)
    return out
  }

  fqdn (key: string): number[] {
    return this.locals.filter((l) => l.fqdnKeys.includes(key)).map((l) => l.id)
  }
}

function push (m: Map<string, number[]>, k: string, v: number): void {
  const l = m.get(k)
  if (l === undefined) m.set(k, [v])
  else l.push(v)
}

const depsCache = new WeakMap<RuleElement, { pods: boolean, locals: boolean }>()
function peerDeps (el: RuleElement): { pods: boolean, locals: boolean } {
  let d = depsCache.get(el)
  if (d === undefined) {
    d = { pods: false, locals: false }
    for (const p of el.peers ?? []) {
      if (p.kind === 'endpoints' || (p.kind === 'entity' && p.entity === 'cluster')) d.pods = true
      if (p.kind === 'cidr' || p.kind === 'fqdn' || (p.kind === 'entity' && p.entity.startsWith('world'))) d.locals = true
    }
    depsCache.set(el, d)
  }
  return d
}

function resolvePeers (peers: readonly Peer[], u: Universe, select: (s: Selector) => number[]): number[] {
  const out = new Set<number>()
  for (const p of peers) {
    let ids: number[]
    switch (p.kind) {
      case 'endpoints': ids = select(p.selector); break
      case 'entity': ids = u.entity(p.entity); break
      case 'cidr': ids = u.cidr(p.prefix, p.except); break
      case 'fqdn': ids = u.fqdn(p.matcher.key); break
    }
    for (const id of ids) out.add(id)
  }
  return [...out].sort((a, b) => a - b)
}

export function entryKey (e: KernelEntry): string {
  return `${e.endpointId}|${e.direction}|${e.remoteIdentity}|${e.protocol}|${e.port}|${e.endPort}`
}

function diffEntries (before: readonly KernelEntry[], after: readonly KernelEntry[], added: KernelEntry[], removed: KernelEntry[]): void {
  const old = new Map(before.map((e) => [entryKey(e), e]))
  for (const e of after) {
    const k = entryKey(e)
    const o = old.get(k)
    if (o === undefined) added.push(e)
    else {
      old.delete(k)
      if (o.verdict !== e.verdict) { removed.push(o); added.push(e) }
    }
  }
  for (const o of old.values()) removed.push(o)
}

function diffSnapshots (prev: Snapshot | null, next: Snapshot, kernelAdded: KernelEntry[], kernelRemoved: KernelEntry[]): SnapshotDiff {
  const ipKey = (e: IpcacheEntry): string => `${e.prefix}|${e.identity}|${e.endpointId}`
  const oldIp = new Set((prev?.ipcache ?? []).map(ipKey))
  const newIp = new Set(next.ipcache.map(ipKey))
  const epKey = (e: Endpoint): string => `${e.id}|${e.identity}|${e.ipv4}|${e.interface}`
  const oldEp = new Set((prev?.endpoints ?? []).map(epKey))
  const newEp = new Set(next.endpoints.map(epKey))
  return {
    from: prev?.version ?? 0,
    to: next.version,
    kernelAdded,
    kernelRemoved,
    ipcacheAdded: next.ipcache.filter((e) => !oldIp.has(ipKey(e))),
    ipcacheRemoved: (prev?.ipcache ?? []).filter((e) => !newIp.has(ipKey(e))),
    endpointsAdded: next.endpoints.filter((e) => !oldEp.has(epKey(e))),
    endpointsRemoved: (prev?.endpoints ?? []).filter((e) => !newEp.has(epKey(e)))
  }
}

export { ANY_IDENTITY }
