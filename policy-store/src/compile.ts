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
import { RuleSelections } from './rule-selections.js'
import { portsByIdentity, resolveNamedPorts } from './named-ports.js'
import { PodIndex, RESERVED_LABELS, Universe } from './universe.js'
import type { Selector } from './labels.js'
import type { RuleElement } from './model.js'
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
  /** What each rule selects; what each element's peers resolve to. */
  private readonly selections = new RuleSelections()
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
    this.rules.update(input.files, run, this.selections.ruleEps)
    this.localIds.update(input, run, { endpoints: this.eps.endpoints, podLabels: this.eps.podLabels, files: this.rules.files, groups: this.rules.groups })
    const universe = new Universe(this.eps.pods as PodIndex, this.eps.podIds, this.localIds.locals, this.rules.groups)
    const select = (sel: Selector): number[] => {
      let ids = this.eps.selectorCache.get(sel.canonical)
      if (ids === undefined) this.eps.selectorCache.set(sel.canonical, ids = universe.select(sel))
      return ids
    }
    this.selections.update(run, select, this.eps.epsByIdentity)
    if (run.namedPortsChanged) this.selections.dirtyNamedPortRules(run)
    this.selections.resolvePeers(run, universe, select)
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
    const rules = [...this.selections.rulesOf(id)].sort((a, b) => this.rules.position(a) - this.rules.position(b))
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
        const ids = this.selections.idsOf(el)
        const list = dirs[el.direction].elements as { el: RuleElement, ids: readonly number[] | null }[]
        if (el.namedPorts === null) list.push({ el, ids })
        else list.push(...resolveNamedPorts(el, ids, el.direction, own?.ports ?? [], this.portsOf))
      }
    }
    const ing = resolveDirection(id, DIR.INGRESS, dirs[0])
    const eg = resolveDirection(id, DIR.EGRESS, dirs[1])
    return { entries: [...ing.entries, ...eg.entries], http: [...ing.http, ...eg.http], dns: [...ing.dns, ...eg.dns] }
  }
}

export { ANY_IDENTITY }
