/**
 * Policies + endpoints + learned names -> one immutable Snapshot and its diff.
 *
 * Incremental: the compiler keeps, between runs, which endpoints each rule selects, what each
 * rule element's peers resolve to, and each endpoint's compiled entries. A run works out what
 * changed in its input (rules added or removed -- files hand back the same rule objects for
 * unchanged documents --, endpoints, the local CIDR/FQDN identities) and re-resolves only the
 * endpoints whose inputs changed: a one-rule edit re-resolves the endpoints that rule selects,
 * new learned FQDN IPs re-resolve the endpoints with toFQDNs/CIDR/world peers. The result is the
 * same as a cold compile of the same input (test/policy-store/incremental.test.ts checks it).
 */
import type { IdentityAllocator } from './identity.js'
import { IdentityLabelFilter } from './label-filter.js'
import { EndpointIdentities } from './endpoint-identities.js'
import { L7Tables } from './l7-tables.js'
import { RuleFiles } from './rule-files.js'
import { LocalIdentities } from './local-identities.js'
import { portsByIdentity, resolveNamedPorts } from './named-ports.js'
import { peerDeps, PodIndex, RESERVED_LABELS, resolvePeers, Universe } from './universe.js'
import type { Selector } from './labels.js'
import type { PolicyRule, RuleElement } from './model.js'
import { resolveDirection, type DirectionInput } from './resolve.js'
import { diffEntries, diffSnapshots, entryKey } from './snapshot-diff.js'
import type { CompileInput, Run } from './compile-run.js'
import {
  ANY_IDENTITY, DIR, RESERVED, type ContainerPort, type DnsPolicy, type HttpPolicy,
  type KernelEntry, type L7PortTable, type Label, type RemoteState, type Snapshot, type SnapshotDiff
} from './types.js'

export { entryKey, RESERVED_LABELS }
export type { CompileInput }

interface EpResult { entries: KernelEntry[], http: [number, L7PortTable<HttpPolicy>][], dns: [number, L7PortTable<DnsPolicy>][] }

/** `fqdnKeys`: set when the element's only local peers are FQDN selectors (then only those matter). */
interface ElState { rule: PolicyRule, ids: number[] | null, sig: string, pods: boolean, locals: boolean, fqdnKeys: string[] | null }

/** Step 6's result: the kernel entry diff and which endpoints were compiled again. */
interface CompiledEndpoints {
  kernelAdded: KernelEntry[]
  kernelRemoved: KernelEntry[]
  /** Endpoints (ids) whose kernel entries changed, removed endpoints included. */
  kernelEndpoints: number[]
  recompiled: { id: number, old: EpResult | undefined }[]
  /** Some endpoint was removed. */
  gone: boolean
}

export class Compiler {
  private version = 0
  /** How each compile's ipcache diff was made: from the changes the cluster store named, or by comparing the lists. */
  readonly stats = { ipcacheDiffsNamed: 0, ipcacheDiffsCompared: 0 }
  private prevSnapshot: Snapshot | null = null
  /** Endpoints and pod identities. */
  private readonly eps: EndpointIdentities
  /** Named container ports by identity (the union over its endpoints here and on other nodes). */
  private portsOf = new Map<number, ContainerPort[]>()
  private remotePortsInput: RemoteState['namedPorts'] | null = null
  /** Rules, in input order, and the CIDR groups of their files. */
  private readonly rules = new RuleFiles()
  /** Local (CIDR, FQDN) identities, the identities and the ipcache. */
  private readonly localIds: LocalIdentities
  // What each rule selects; what each element resolves to.
  private readonly ruleEps = new Map<PolicyRule, number[]>()
  private readonly epRules = new Map<number, Set<PolicyRule>>()
  private readonly els = new Map<RuleElement, ElState>()
  /** Elements whose peers depend on pod identities / on local identities. */
  private readonly podEls = new Set<RuleElement>()
  private readonly localEls = new Set<RuleElement>()
  // Output per endpoint.
  private epCache = new Map<number, EpResult>()

  constructor (allocator: IdentityAllocator, opts: { labelFilter?: IdentityLabelFilter } = {}) {
    this.eps = new EndpointIdentities(allocator, opts.labelFilter ?? new IdentityLabelFilter())
    this.localIds = new LocalIdentities(allocator)
  }

  /**
   * One run: each step works out what changed in its part of the input and marks the endpoints
   * whose entries it may change (`run.dirty`); only those are compiled again.
   */
  compile (input: CompileInput): { snapshot: Snapshot, diff: SnapshotDiff } {
    this.localIds.beginCompile()
    const first = this.prevSnapshot === null
    const run: Run = { first, dirty: new Set(), allDirty: first, endpointsChanged: false, podsChanged: false, namedPortsChanged: false, groupsChanged: false, filesChanged: false, added: [], removed: [], localsChanged: false, fqdnChanged: null }
    this.eps.update(input, run)
    this.updateNamedPorts(input, run)
    this.rules.update(input.files, run, this.ruleEps)
    this.localIds.update(input, run, { endpoints: this.eps.endpoints, podLabels: this.eps.podLabels, files: this.rules.files, groups: this.rules.groups })
    const universe = new Universe(this.eps.pods as PodIndex, this.eps.podIds, this.localIds.locals, this.rules.groups)
    const select = (sel: Selector): number[] => {
      let ids = this.eps.selectorCache.get(sel.canonical)
      if (ids === undefined) this.eps.selectorCache.set(sel.canonical, ids = universe.select(sel))
      return ids
    }
    this.updateRuleSelections(run, select)
    if (run.namedPortsChanged) this.dirtyNamedPortRules(run)
    this.resolveRulePeers(run, universe, select)
    const out = this.compileDirtyEndpoints(run)
    const tables = this.assembleTables(out)
    const prev = this.prevSnapshot
    const snapshot: Snapshot = Object.freeze({
      version: ++this.version,
      createdAt: Date.now(),
      endpoints: this.eps.endpoints,
      identities: this.localIds.identities,
      ipcache: this.localIds.ipcache,
      ...tables,
      fqdnSelectors: this.localIds.fqdnSelectors
    })
    const diff = diffSnapshots(prev, snapshot, out, this.localIds.ipChanges)
    if (prev !== null) this.stats[this.localIds.ipChanges !== null ? 'ipcacheDiffsNamed' : 'ipcacheDiffsCompared']++
    this.prevSnapshot = snapshot
    this.localIds.endCompile()
    return { snapshot, diff }
  }

  /** Label sets that endpoints wait for (they have the init identity, or keep their previous one). */
  pendingLabelSets (): readonly (readonly Label[])[] { return this.eps.pendingLabelSets() }

  /**
   * Step 1b: the named ports each peer identity carries, for egress rules that name a port: the
   * union over this node's endpoints and other nodes' pods of that identity (their ipcache
   * entries' NamedPorts), computed again when either side changed.
   */
  private updateNamedPorts (input: CompileInput, run: Run): void {
    const remote = input.remote?.namedPorts ?? null
    if (!run.namedPortsChanged && remote === this.remotePortsInput && !run.first) return
    if (remote !== this.remotePortsInput) run.namedPortsChanged = true
    this.remotePortsInput = remote
    this.portsOf = portsByIdentity(this.eps.endpoints, remote ?? [])
  }

  /** Step 4: which endpoints each rule selects; endpoints whose set of rules changed are dirty. */
  private updateRuleSelections (run: Run, select: (sel: Selector) => number[]): void {
    const { dirty } = run
    const selectEps = (r: PolicyRule): number[] => {
      const out: number[] = []
      for (const id of select(r.subject)) for (const ep of this.eps.epsByIdentity.get(id) ?? []) out.push(ep)
      return out
    }
    for (const r of run.removed) {
      for (const ep of this.ruleEps.get(r) ?? []) { dirty.add(ep); this.epRules.get(ep)?.delete(r) }
      this.ruleEps.delete(r)
      for (const el of r.elements) { this.els.delete(el); this.podEls.delete(el); this.localEls.delete(el) }
    }
    if (run.endpointsChanged || run.podsChanged) {
      // Every rule's selection may have changed: recompute, and dirty the differences.
      const now = new Map<number, Set<PolicyRule>>()
      for (const [r, old] of this.ruleEps) {
        const eps = selectEps(r)
        if (!sameMembers(old, eps)) { for (const ep of old) dirty.add(ep); for (const ep of eps) dirty.add(ep) }
        this.ruleEps.set(r, eps)
        for (const ep of eps) pushSet(now, ep, r)
      }
      this.epRules.clear()
      for (const [ep, rs] of now) this.epRules.set(ep, rs)
    }
    for (const r of run.added) {
      const eps = selectEps(r)
      this.ruleEps.set(r, eps)
      for (const ep of eps) { dirty.add(ep); pushSet(this.epRules, ep, r) }
    }
  }

  /** Step 4b: named ports resolve per endpoint and peer: the endpoints of rules that use them are dirty. */
  private dirtyNamedPortRules (run: Run): void {
    for (const [r, eps] of this.ruleEps) {
      if (!r.elements.some((el) => el.namedPorts !== null)) continue
      for (const ep of eps) run.dirty.add(ep)
    }
  }

  /**
   * Step 5: the identities each rule element's peers resolve to, for new elements and for those
   * whose side of the universe (pods, local identities) changed; the endpoints their rule
   * selects are dirty when the answer changed.
   */
  private resolveRulePeers (run: Run, universe: Universe, select: (sel: Selector) => number[]): void {
    // A group edit re-resolves every peer that depends on local identities (those with
    // cidrGroupRef among them), also when no local identity came or went.
    const { podsChanged } = run
    const localsChanged = run.localsChanged || run.groupsChanged
    const fqdnChanged = run.groupsChanged ? null : run.fqdnChanged
    const resolve = (el: RuleElement): ElState['ids'] => el.peers === null ? null : resolvePeers(el.peers, universe, select)
    for (const r of run.added) {
      for (const el of r.elements) {
        const d = peerDeps(el)
        const ids = resolve(el)
        this.els.set(el, { rule: r, ids, sig: ids === null ? '*' : ids.join(','), pods: d.pods, locals: d.locals, fqdnKeys: d.fqdnKeys })
        if (d.pods) this.podEls.add(el)
        if (d.locals) this.localEls.add(el)
      }
    }
    if (!podsChanged && !localsChanged) return
    const fresh = new Set(run.added)
    const todo = podsChanged && localsChanged ? [...this.podEls, ...this.localEls] : podsChanged ? this.podEls : this.localEls
    for (const el of todo) {
      const st = this.els.get(el) as ElState
      if (fresh.has(st.rule)) continue
      const byPods = podsChanged && st.pods
      if (!byPods && !(localsChanged && st.locals)) continue
      // Only FQDN peers among the local ones, none of whose selectors changed: nothing to do.
      if (!byPods && st.fqdnKeys !== null && fqdnChanged !== null && !st.fqdnKeys.some((k) => fqdnChanged.has(k))) continue
      const ids = resolve(el)
      const sig = ids === null ? '*' : ids.join(',')
      if (sig === st.sig) continue
      st.ids = ids
      st.sig = sig
      for (const ep of this.ruleEps.get(st.rule) ?? []) run.dirty.add(ep)
    }
  }

  /** Step 6: compile the dirty endpoints again, keep the others' entries, and diff the kernel entries. */
  private compileDirtyEndpoints (run: Run): CompiledEndpoints {
    const out: CompiledEndpoints = { kernelAdded: [], kernelRemoved: [], kernelEndpoints: [], recompiled: [], gone: false }
    const live = new Set<number>()
    for (const e of this.eps.endpoints) {
      live.add(e.id)
      const cached = this.epCache.get(e.id)
      if (cached !== undefined && !run.allDirty && !run.dirty.has(e.id)) continue
      const res = this.compileEndpoint(e.id)
      this.epCache.set(e.id, res)
      out.recompiled.push({ id: e.id, old: cached })
      if (diffEntries(cached?.entries ?? [], res.entries, out.kernelAdded, out.kernelRemoved)) out.kernelEndpoints.push(e.id)
    }
    for (const [id, old] of this.epCache) {
      if (live.has(id)) continue
      for (const x of old.entries) out.kernelRemoved.push(x)
      if (old.entries.length > 0) out.kernelEndpoints.push(id)
      this.epCache.delete(id)
      out.gone = true
    }
    return out
  }

  /** Step 7: the snapshot's kernel list and L7 tables: the previous ones when nothing changed, patched when few did. */
  private assembleTables (out: CompiledEndpoints): Pick<Snapshot, 'kernel' | 'http' | 'dns'> {
    const prev = this.prevSnapshot
    const endpoints = this.eps.endpoints
    const { recompiled, gone } = out
    if (prev !== null && recompiled.length === 0 && !gone && prev.endpoints === endpoints) return { kernel: prev.kernel, http: prev.http, dns: prev.dns }
    const k: KernelEntry[] = []
    for (const e of endpoints) for (const x of (this.epCache.get(e.id) as EpResult).entries) k.push(x)
    const kernel = Object.freeze(k)
    let http: Map<number, L7PortTable<HttpPolicy>>
    let dns: Map<number, L7PortTable<DnsPolicy>>
    if (prev !== null && !gone && prev.endpoints === endpoints && recompiled.length * 8 < endpoints.length) {
      // A few endpoints changed: patch copies of the previous tables (same key order as a
      // rebuild is not needed: consumers look tables up by key).
      http = new L7Tables(prev.http)
      dns = new L7Tables(prev.dns)
      for (const { id, old } of recompiled) {
        for (const [key] of old?.http ?? []) http.delete(key)
        for (const [key] of old?.dns ?? []) dns.delete(key)
        const r = this.epCache.get(id) as EpResult
        for (const [key, t] of r.http) http.set(key, t)
        for (const [key, t] of r.dns) dns.set(key, t)
      }
    } else {
      http = new L7Tables()
      dns = new L7Tables()
      for (const e of endpoints) {
        const r = this.epCache.get(e.id) as EpResult
        for (const [key, t] of r.http) http.set(key, t)
        for (const [key, t] of r.dns) dns.set(key, t)
      }
    }
    return { kernel, http, dns }
  }

  /** Kernel entries and L7 tables of one endpoint from the rules selecting it, in input order. */
  private compileEndpoint (id: number): EpResult {
    const rules = [...(this.epRules.get(id) ?? [])].sort((a, b) => this.rules.position(a) - this.rules.position(b))
    const own = this.eps.epById.get(id)
    const dirs: [DirectionInput, DirectionInput] = [
      { elements: [], selected: false, defaultDeny: false },
      { elements: [], selected: false, defaultDeny: false }
    ]
    // An endpoint with the init identity is default deny both ways whatever selects it
    // (Cilium: computePolicyEnforcementAndRules in pkg/policy/repository.go enforces policy for
    // `reserved:init` always): only rules selecting `reserved:init` allow it anything.
    if (own?.identity === RESERVED.INIT) for (const d of dirs) { d.selected = true; d.defaultDeny = true }
    for (const r of rules) {
      for (const d of [DIR.INGRESS, DIR.EGRESS]) {
        if (r.hasSection[d]) dirs[d].selected = true
        if (r.defaultDeny[d]) dirs[d].defaultDeny = true
      }
      for (const el of r.elements) {
        const st = this.els.get(el) as ElState
        const list = dirs[el.direction].elements as { el: RuleElement, ids: readonly number[] | null }[]
        if (el.namedPorts === null) list.push({ el, ids: st.ids })
        else list.push(...resolveNamedPorts(el, st.ids, el.direction, own?.ports ?? [], this.portsOf))
      }
    }
    const ing = resolveDirection(id, DIR.INGRESS, dirs[0])
    const eg = resolveDirection(id, DIR.EGRESS, dirs[1])
    return { entries: [...ing.entries, ...eg.entries], http: [...ing.http, ...eg.http], dns: [...ing.dns, ...eg.dns] }
  }


}

function sameMembers (a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false
  const s = new Set(a)
  return b.every((x) => s.has(x))
}

function pushSet<K, V> (m: Map<K, Set<V>>, k: K, v: V): void {
  const s = m.get(k)
  if (s === undefined) m.set(k, new Set([v]))
  else s.add(v)
}

export { ANY_IDENTITY }
