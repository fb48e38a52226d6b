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
import { applyRemoteChanges, type IpChange } from './ipcache-changes.js'
import { formatIPv4, formatPrefix, parseIPv4, type Prefix } from './cidr.js'
import type { IdentityAllocator } from './identity.js'
import { IdentityLabelFilter } from './label-filter.js'
import { EndpointIdentities } from './endpoint-identities.js'
import { L7Tables } from './l7-tables.js'
import { RuleFiles } from './rule-files.js'
import { portsByIdentity, resolveNamedPorts } from './named-ports.js'
import { peerDeps, PodIndex, push, RESERVED_LABELS, resolvePeers, Universe, type Local } from './universe.js'
import type { Selector } from './labels.js'
import type { FilePolicies, PolicyRule, RuleElement } from './model.js'
import type { NameMatcher } from './matchers.js'
import { resolveDirection, type DirectionInput } from './resolve.js'
import { diffEntries, diffSnapshots, entryKey } from './snapshot-diff.js'
import type { CompileInput, Run } from './compile-run.js'
import {
  ANY_IDENTITY, DIR, RESERVED, type ContainerPort, type DnsPolicy, type Endpoint, type FqdnSelector, type HttpPolicy,
  type IpcacheEntry, type KernelEntry, type L7PortTable, type Label, type LearnedName, type RemoteState, type Snapshot, type SnapshotDiff
} from './types.js'

export { entryKey, RESERVED_LABELS }
export type { CompileInput }

interface EpResult { entries: KernelEntry[], http: [number, L7PortTable<HttpPolicy>][], dns: [number, L7PortTable<DnsPolicy>][] }

interface LocalEntry { labels: Label[], local: Local, ip: IpcacheEntry }
/** A prefix that gets a local identity: named by a rule (`rule`), learned from DNS answers (`fqdnKeys`), or both. */
interface LocalPrefix { prefix: Prefix, fqdnKeys: string[], rule: boolean }

/** A rule's CIDR prefixes and FQDN matchers (they make local identities). */
interface RuleLocals { prefixes: Prefix[], fqdns: NameMatcher[], groups: string[] }

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
  private remoteIpInput: RemoteState['ipcache'] | null = null
  /** Named container ports by identity (the union over its endpoints here and on other nodes). */
  private portsOf = new Map<number, ContainerPort[]>()
  private remotePortsInput: RemoteState['namedPorts'] | null = null
  /** Rules, in input order, and the CIDR groups of their files. */
  private readonly rules = new RuleFiles()
  // What each rule selects; what each element resolves to.
  private readonly ruleEps = new Map<PolicyRule, number[]>()
  private readonly epRules = new Map<number, Set<PolicyRule>>()
  private readonly els = new Map<RuleElement, ElState>()
  /** Elements whose peers depend on pod identities / on local identities. */
  private readonly podEls = new Set<RuleElement>()
  private readonly localEls = new Set<RuleElement>()
  // Local identities, the ipcache and FQDN selectors.
  private hostKey = ''
  private learnedInput: readonly LearnedName[] | null = null
  private learnedExpiry = Infinity
  private locals: Local[] = []
  /** FQDN selector key -> its identities, to re-resolve only the elements whose selectors changed. */
  private fqdnIds = new Map<string, string>()
  private fqdnSelectors: readonly FqdnSelector[] = Object.freeze([])
  private fqdnKeysSig = ''
  private nameKeys = new Map<string, string[]>()
  private identities: Map<number, readonly Label[]> = new Map(RESERVED_LABELS)
  /**
   * The ipcache's fixed part by prefix (world, host addresses, endpoints, other nodes' entries),
   * the /32 addresses it takes, and which prefixes are this node's own (they win over remote ones).
   */
  private base: { endpoints: readonly Endpoint[], hostKey: string, remote: RemoteState['ipcache'] | null, taken: Set<number>, fixed: Map<string, IpcacheEntry>, own: Set<string> } | null = null
  /** The local (CIDR, FQDN) ipcache entries of the last compile, in order. */
  private localIps: readonly IpcacheEntry[] = []
  /**
   * What this compile changed in the ipcache when it is known from the remote changes alone
   * (RemoteState.ipcacheChanges); null: compare the lists. Trusted only when the previous compile
   * finished (a compile that threw may have changed the base without a snapshot).
   */
  private ipChanges: IpChange[] | null = null
  private lastCompileDone = false
  private ipNums = new Map<string, { n: number, key: string } | null>()
  private rulePrefixes: [string, Prefix][] = []
  private ruleLocalsBase: Compiler['base'] = null
  private podIdentities: { labels: ReadonlyMap<number, readonly Label[]>, map: Map<number, readonly Label[]> } | null = null
  /** Local identities in use, by prefix and FQDN selector keys (objects reused across runs). */
  private localEntries = new Map<string, LocalEntry>()
  private ipcache: readonly IpcacheEntry[] = Object.freeze([])
  // Output per endpoint.
  private epCache = new Map<number, EpResult>()

  private now = 0

  constructor (private readonly allocator: IdentityAllocator, opts: { labelFilter?: IdentityLabelFilter } = {}) {
    this.eps = new EndpointIdentities(allocator, opts.labelFilter ?? new IdentityLabelFilter())
  }

  /**
   * One run: each step works out what changed in its part of the input and marks the endpoints
   * whose entries it may change (`run.dirty`); only those are compiled again.
   */
  compile (input: CompileInput): { snapshot: Snapshot, diff: SnapshotDiff } {
    this.now = input.now
    this.ipChanges = null
    if (!this.lastCompileDone) this.base = null
    this.lastCompileDone = false
    const first = this.prevSnapshot === null
    const run: Run = { first, dirty: new Set(), allDirty: first, endpointsChanged: false, podsChanged: false, namedPortsChanged: false, groupsChanged: false, filesChanged: false, added: [], removed: [], localsChanged: false, fqdnChanged: null }
    this.eps.update(input, run)
    this.updateNamedPorts(input, run)
    this.rules.update(input.files, run, this.ruleEps)
    this.updateLocalIdentities(input, run)
    const universe = new Universe(this.eps.pods as PodIndex, this.eps.podIds, this.locals, this.rules.groups)
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
      identities: this.identities,
      ipcache: this.ipcache,
      ...tables,
      fqdnSelectors: this.fqdnSelectors
    })
    const diff = diffSnapshots(prev, snapshot, out, this.ipChanges)
    if (prev !== null) this.stats[this.ipChanges !== null ? 'ipcacheDiffsNamed' : 'ipcacheDiffsCompared']++
    this.prevSnapshot = snapshot
    this.lastCompileDone = true
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

  /** Step 3: local identities (CIDR prefixes in rules, learned FQDN IPs) and the ipcache. */
  private updateLocalIdentities (input: CompileInput, run: Run): void {
    const hostKey = input.hostIPs.join(',')
    const learnedChanged = input.learned !== this.learnedInput || input.now >= this.learnedExpiry
    const remoteIp = input.remote?.ipcache ?? null
    if (!run.filesChanged && !learnedChanged && !run.endpointsChanged && !run.podsChanged && hostKey === this.hostKey && remoteIp === this.remoteIpInput && !run.first) return
    const lc = this.computeLocals(input, this.eps.endpoints, run.filesChanged)
    run.localsChanged = lc.changed
    run.fqdnChanged = lc.fqdnChanged
    this.hostKey = hostKey
    this.learnedInput = input.learned
    this.remoteIpInput = remoteIp
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

  /**
   * Local identities, FQDN selectors, identities and the ipcache. Returns whether the set of
   * local identities changed (peers with CIDR/FQDN/world then need re-resolving).
   */
  private computeLocals (input: CompileInput, endpoints: readonly Endpoint[], filesChanged: boolean): { changed: boolean, fqdnChanged: Set<string> | null } {
    // The ipcache's fixed part: world, node addresses, endpoints.
    const hostKey = input.hostIPs.join(',')
    const remote = input.remote?.ipcache ?? null
    const delta = input.remote?.ipcacheChanges
    let remoteChanges: IpChange[] | null = null
    if (this.base !== null && this.base.endpoints === endpoints && this.base.hostKey === hostKey && this.base.remote !== remote &&
        delta !== undefined && delta.from === this.base.remote && this.prevSnapshot !== null) {
      // Only other nodes' entries changed, and the remote state says which: apply those.
      remoteChanges = applyRemoteChanges(this.base, delta.changed)
      this.base = { ...this.base, remote }
    } else if (this.base === null || this.base.endpoints !== endpoints || this.base.hostKey !== hostKey || this.base.remote !== remote) {
      const fixed = new Map<string, IpcacheEntry>()
      fixed.set('0.0.0.0/0', { prefix: '0.0.0.0/0', identity: RESERVED.WORLD, endpointId: 0 })
      const taken = new Set<number>()
      for (const ip of input.hostIPs) {
        const n = parseIPv4(ip)
        if (n === null) continue
        taken.add(n)
        fixed.set(`${ip}/32`, { prefix: `${ip}/32`, identity: RESERVED.HOST, endpointId: 0 })
      }
      for (const e of endpoints) {
        taken.add(parseIPv4(e.ipv4) as number)
        fixed.set(`${e.ipv4}/32`, e.audit === true ? { prefix: `${e.ipv4}/32`, identity: e.identity, endpointId: e.id, audit: true } : { prefix: `${e.ipv4}/32`, identity: e.identity, endpointId: e.id })
      }
      const own = new Set(fixed.keys())
      // Other nodes' pods and addresses: cluster peers, so a CIDR rule does not select them
      // (Cilium's CIDR rules select only non-cluster peers), and the entry object is the remote
      // state's own: an unchanged one is no kernel write.
      for (const e of remote ?? []) {
        if (fixed.has(e.prefix)) continue
        const slash = e.prefix.indexOf('/')
        if (e.prefix.endsWith('/32')) taken.add(parseIPv4(e.prefix.slice(0, slash)) as number)
        fixed.set(e.prefix, e)
      }
      this.base = { endpoints, hostKey, remote, taken, fixed, own }
    }
    const { taken } = this.base
    // The rules' part: CIDR prefixes and FQDN selectors (only when rules or endpoints changed).
    if (filesChanged || this.ruleLocalsBase !== this.base || this.prevSnapshot === null) {
      const fqdnSelectors = new Map<string, FqdnSelector>()
      const rulePrefixes = new Map<string, Prefix>()
      for (const rl of this.rules.files.flatMap(fileLocals)) {
        for (const x of [...rl.prefixes, ...rl.groups.flatMap((g) => this.rules.groups.get(g) ?? [])]) {
          if (x.len === 0 || (x.len === 32 && taken.has(x.addr))) continue
          rulePrefixes.set(formatPrefix(x), x)
        }
        for (const m of rl.fqdns) if (!fqdnSelectors.has(m.key)) fqdnSelectors.set(m.key, { key: m.key, test: m.test })
      }
      this.rulePrefixes = [...rulePrefixes]
      this.ruleLocalsBase = this.base
      const sig = [...fqdnSelectors.keys()].join('\n')
      if (sig !== this.fqdnKeysSig) {
        this.fqdnKeysSig = sig
        this.fqdnSelectors = Object.freeze([...fqdnSelectors.values()])
        this.nameKeys = new Map()
      }
    }
    const prefixes = new Map<string, LocalPrefix>()
    for (const [k, x] of this.rulePrefixes) prefixes.set(k, { prefix: x, fqdnKeys: [], rule: true })
    this.learnedPrefixes(input, taken, prefixes)
    return this.buildLocals(prefixes, remoteChanges)
  }

  /** Learned names' IPs into `prefixes` (/32s with the FQDN selector keys they carry). */
  private learnedPrefixes (input: CompileInput, taken: ReadonlySet<number>, prefixes: Map<string, LocalPrefix>): void {
    const sels = this.fqdnSelectors
    if (this.nameKeys.size > 2 * input.learned.length + 1024) this.nameKeys = new Map() // names long gone
    if (this.ipNums.size > 4 * input.learned.length + 1024) this.ipNums = new Map()
    let expiry = Infinity
    for (const ln of input.learned) {
      if (ln.expiresAt <= input.now) continue
      let keys = this.nameKeys.get(ln.name)
      if (keys === undefined) this.nameKeys.set(ln.name, keys = sels.filter((s) => s.test(ln.name)).map((s) => s.key))
      if (keys.length === 0) continue
      if (ln.expiresAt < expiry) expiry = ln.expiresAt
      for (const ip of ln.ipv4) {
        let p = this.ipNums.get(ip)
        if (p === undefined) {
          const n = parseIPv4(ip)
          this.ipNums.set(ip, p = n === null ? null : { n, key: `${formatIPv4(n)}/32` })
        }
        if (p === null || taken.has(p.n)) continue
        const k = p.key
        let e = prefixes.get(k)
        if (e === undefined) prefixes.set(k, e = { prefix: { addr: p.n, len: 32 }, fqdnKeys: [], rule: false })
        for (const key of keys) if (!e.fqdnKeys.includes(key)) e.fqdnKeys.push(key)
      }
    }
    this.learnedExpiry = expiry
  }

  /** Local identities (stable numbers), identities and the ipcache from the local prefixes. */
  private buildLocals (prefixes: Map<string, LocalPrefix>, remoteChanges: IpChange[] | null): { changed: boolean, fqdnChanged: Set<string> | null } {
    const base = this.base as NonNullable<Compiler['base']>
    const locals: Local[] = []
    const podIdsChanged = this.podIdentities === null || this.podIdentities.labels !== this.eps.podLabels
    if (this.podIdentities === null || this.podIdentities.labels !== this.eps.podLabels) {
      const m = new Map<number, readonly Label[]>(RESERVED_LABELS)
      for (const [id, labels] of this.eps.podLabels) m.set(id, labels)
      this.podIdentities = { labels: this.eps.podLabels, map: m }
    }
    const ipList = [...base.fixed.values()]
    const fixedCount = ipList.length
    const localEntries = new Map<string, LocalEntry>()
    for (const [k, { prefix, fqdnKeys, rule }] of prefixes) {
      const fk = fqdnKeys.length > 1 ? fqdnKeys.sort() : fqdnKeys
      // a rule's prefix that DNS also gave keeps its identity (same labels) but not `learnedOnly`
      const learnedOnly = !rule && fk.length > 0
      const ck = (fk.length === 0 ? k : k + '\n' + fk.join('\n')) + (learnedOnly ? '\nlearned' : '')
      let le = this.localEntries.get(ck)
      if (le === undefined) {
        const labels = [`cidr:${k}`, 'reserved:world', ...fk.map((f) => `fqdn:${f}`)].sort()
        const id = this.allocator.acquireLocalIdentity(labels, this.now)
        const ip: IpcacheEntry = learnedOnly ? { prefix: k, identity: id, endpointId: 0, learnedOnly: true } : { prefix: k, identity: id, endpointId: 0 }
        le = { labels, local: { id, prefix, fqdnKeys: fk }, ip }
      }
      localEntries.set(ck, le)
      locals.push(le.local)
      ipList.push(le.ip)
    }
    // Local identities no prefix or learned name refers to any more: drop this compiler's reference.
    for (const [ck, le] of this.localEntries) if (!localEntries.has(ck)) this.allocator.releaseLocalIdentity(le.labels, this.now)
    // The same identities as last time keep the same Map: the HTTP workers, which get the
    // identities with every snapshot, are then not sent thousands of cluster identities again
    // for a change of other nodes' addresses.
    const sameLocals = localEntries.size === this.localEntries.size && [...localEntries].every(([ck, le]) => this.localEntries.get(ck) === le)
    if (podIdsChanged || !sameLocals) {
      const identities = new Map<number, readonly Label[]>(this.podIdentities.map)
      for (const le of localEntries.values()) identities.set(le.local.id, le.labels)
      this.identities = identities
    }
    this.localEntries = localEntries
    // The remote changes are the whole ipcache change when the local entries are the same
    // objects as last time and none of them shares a prefix with a changed remote entry.
    const localIps = ipList.slice(fixedCount)
    if (remoteChanges !== null && localIps.length === this.localIps.length && localIps.every((e, i) => e === this.localIps[i])) {
      const localPrefixes = new Set(localIps.map((e) => e.prefix))
      if (!remoteChanges.some((c) => localPrefixes.has(c.prefix))) this.ipChanges = remoteChanges
    }
    this.localIps = localIps
    if (!sameIpcache(this.ipcache, ipList)) this.ipcache = Object.freeze(ipList)
    const changed = locals.length !== this.locals.length || locals.some((l, i) => l !== this.locals[i])
    this.locals = locals
    if (!changed) return { changed: false, fqdnChanged: null }
    // Which FQDN selectors' identities changed.
    const fqdnIds = new Map<string, number[]>()
    for (const l of locals) for (const k of l.fqdnKeys) push(fqdnIds, k, l.id)
    const fqdnChanged = new Set<string>()
    const sigs = new Map<string, string>()
    for (const [k, ids] of fqdnIds) {
      const sig = ids.join(',')
      sigs.set(k, sig)
      if (this.fqdnIds.get(k) !== sig) fqdnChanged.add(k)
    }
    for (const k of this.fqdnIds.keys()) if (!sigs.has(k)) fqdnChanged.add(k)
    this.fqdnIds = sigs
    return { changed: true, fqdnChanged }
  }
}

function sameIpcache (a: readonly IpcacheEntry[], b: readonly IpcacheEntry[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i] || x.prefix === b[i].prefix && x.identity === b[i].identity && x.endpointId === b[i].endpointId && x.audit === b[i].audit)
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

/** The CIDR prefixes and FQDN matchers of a file's rules, in order (computed once per file version). */
const localsCache = new WeakMap<FilePolicies, RuleLocals[]>()
function fileLocals (f: FilePolicies): RuleLocals[] {
  let list = localsCache.get(f)
  if (list === undefined) {
    list = []
    for (const r of f.rules) {
      const out: RuleLocals = { prefixes: [], fqdns: [], groups: [] }
      for (const el of r.elements) {
        for (const p of el.peers ?? []) {
          if (p.kind === 'cidr') out.prefixes.push(p.prefix, ...p.except)
          else if (p.kind === 'cidrGroup') { out.groups.push(p.name); out.prefixes.push(...p.except) } else if (p.kind === 'fqdn') out.fqdns.push(p.matcher)
        }
      }
      if (out.prefixes.length > 0 || out.fqdns.length > 0 || out.groups.length > 0) list.push(out)
    }
    localsCache.set(f, list)
  }
  return list
}

export { ANY_IDENTITY }
