/**
 * The identities a rule's peers can resolve to, for the compiler (compile.ts): reserved and pod
 * identities (indexed for selector lookups), local CIDR/FQDN identities and CIDR groups; and
 * which of those an element's peers depend on, so that a run re-resolves only what changed.
 */
import { prefixContains, type Prefix } from './cidr.js'
import { LabelSet, matchesSelector, type Selector } from './labels.js'
import type { Peer, RuleElement } from './model.js'
import { RESERVED, type Label } from './types.js'

/** A local (CIDR or learned-FQDN) identity: its number, prefix and the FQDN selectors it carries. */
export interface Local { id: number, prefix: Prefix, fqdnKeys: string[] }

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

/** Reserved and pod identities with an index for matchLabels lookups (rebuilt when pods change). */
export class PodIndex {
  readonly sets = new Map<number, LabelSet>()
  readonly byKV = new Map<string, number[]>()
  readonly byK = new Map<string, number[]>()
  readonly all: number[] = []

  constructor (podLabels: ReadonlyMap<number, readonly Label[]>, podIds: ReadonlySet<number>) {
    for (const id of [...RESERVED_LABELS.keys(), ...podIds]) {
      const ls = new LabelSet(RESERVED_LABELS.get(id) ?? podLabels.get(id) ?? [])
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
}

/** The identities peers can resolve to: reserved, pods (indexed) and local (CIDR/FQDN) ones. */
export class Universe {
  private byFqdn: Map<string, number[]> | null = null
  constructor (private readonly pods: PodIndex, readonly podIds: ReadonlySet<number>, readonly locals: readonly Local[],
    private readonly groups: ReadonlyMap<string, readonly Prefix[]>) {}

  /** A group nobody defines selects nothing (fail closed), as in Cilium. */
  cidrGroup (name: string, except: readonly Prefix[]): number[] {
    const out = new Set<number>()
    for (const prefix of this.groups.get(name) ?? []) for (const id of this.cidr(prefix, except)) out.add(id)
    return [...out]
  }

  /** Endpoint selectors pick among pod identities and reserved identities (never CIDR/FQDN). */
  select (sel: Selector): number[] {
    const p = this.pods
    let candidates = p.all
    const inReq = sel.reqs.find((r) => r.op === 'In')
    if (inReq !== undefined) {
      candidates = [...new Set(inReq.values.flatMap((v) => p.byKV.get(`${inReq.key}=${v}`) ?? (v === '' ? p.byKV.get(inReq.key) ?? [] : [])))]
    } else {
      const ex = sel.reqs.find((r) => r.op === 'Exists')
      if (ex !== undefined) candidates = p.byK.get(ex.key) ?? []
    }
    return candidates.filter((id) => matchesSelector(sel, p.sets.get(id) as LabelSet)).sort((a, b) => a - b)
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
    if (this.byFqdn === null) {
      this.byFqdn = new Map()
      for (const l of this.locals) for (const k of l.fqdnKeys) push(this.byFqdn, k, l.id)
    }
    return this.byFqdn.get(key) ?? []
  }
}

export function push<K> (m: Map<K, number[]>, k: K, v: number): void {
  const l = m.get(k)
  if (l === undefined) m.set(k, [v])
  else l.push(v)
}

interface Deps { pods: boolean, locals: boolean, fqdnKeys: string[] | null }
const depsCache = new WeakMap<RuleElement, Deps>()
export function peerDeps (el: RuleElement): Deps {
  let d = depsCache.get(el)
  if (d === undefined) {
    d = { pods: false, locals: false, fqdnKeys: [] }
    for (const p of el.peers ?? []) {
      if (p.kind === 'endpoints' || (p.kind === 'entity' && p.entity === 'cluster')) d.pods = true
      if (p.kind === 'cidr' || p.kind === 'cidrGroup' || p.kind === 'fqdn' || (p.kind === 'entity' && p.entity.startsWith('world'))) d.locals = true
      if (p.kind === 'fqdn') d.fqdnKeys?.push(p.matcher.key)
      else if (p.kind === 'cidr' || p.kind === 'cidrGroup' || (p.kind === 'entity' && p.entity.startsWith('world'))) d.fqdnKeys = null
    }
    if (!d.locals) d.fqdnKeys = null
    depsCache.set(el, d)
  }
  return d
}

export function resolvePeers (peers: readonly Peer[], u: Universe, select: (s: Selector) => number[]): number[] {
  const out = new Set<number>()
  for (const p of peers) {
    let ids: number[]
    switch (p.kind) {
      case 'endpoints': ids = select(p.selector); break
      case 'entity': ids = u.entity(p.entity); break
      case 'cidr': ids = u.cidr(p.prefix, p.except); break
      case 'cidrGroup': ids = u.cidrGroup(p.name, p.except); break
      case 'fqdn': ids = u.fqdn(p.matcher.key); break
    }
    for (const id of ids) out.add(id)
  }
  return [...out].sort((a, b) => a - b)
}

