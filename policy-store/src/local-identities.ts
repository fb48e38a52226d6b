/**
 * Step 3 of a compile: the local identities (CIDR prefixes the rules name, IPs learned from DNS
 * answers for the rules' FQDN selectors), the identities a snapshot knows, and the ipcache
 * (its fixed part plus one entry per local identity). Only what changed is computed again; when
 * only other nodes' entries changed and the cluster store named them, the ipcache change is
 * known without comparing the lists (`ipChanges`).
 */
import { formatIPv4, parseIPv4, type Prefix } from './cidr.js'
import type { CompileInput, Run } from './compile-run.js'
import type { IdentityAllocator } from './identity.js'
import { buildIpcacheBase, type IpcacheBase } from './ipcache-base.js'
import { applyRemoteChanges, type IpChange } from './ipcache-changes.js'
import type { FilePolicies } from './model.js'
import { ruleLocals } from './rule-locals.js'
import { push, RESERVED_LABELS, type Local } from './universe.js'
import type { Endpoint, FqdnSelector, IpcacheEntry, Label, LearnedName, RemoteState } from './types.js'

/** What step 3 reads from the earlier steps: the endpoints and pod identities, the rules' files and CIDR groups. */
export interface LocalsInput {
  endpoints: readonly Endpoint[]
  podLabels: ReadonlyMap<number, readonly Label[]>
  files: readonly FilePolicies[]
  groups: ReadonlyMap<string, readonly Prefix[]>
}

interface LocalEntry { labels: Label[], local: Local, ip: IpcacheEntry }
/** A prefix that gets a local identity: named by a rule (`rule`), learned from DNS answers (`fqdnKeys`), or both. */
interface LocalPrefix { prefix: Prefix, fqdnKeys: string[], rule: boolean }

/** Local identities, the identities and the ipcache; the public fields are the last run's. */
export class LocalIdentities {
  private hostKey = ''
  private learnedInput: readonly LearnedName[] | null = null
  private learnedExpiry = Infinity
  private remoteIpInput: RemoteState['ipcache'] | null = null
  locals: Local[] = []
  /** FQDN selector key -> its identities, to re-resolve only the elements whose selectors changed. */
  private fqdnIds = new Map<string, string>()
  fqdnSelectors: readonly FqdnSelector[] = Object.freeze([])
  private fqdnKeysSig = ''
  private nameKeys = new Map<string, string[]>()
  identities: Map<number, readonly Label[]> = new Map(RESERVED_LABELS)
  private base: IpcacheBase | null = null
  /** The local (CIDR, FQDN) ipcache entries of the last compile, in order. */
  private localIps: readonly IpcacheEntry[] = []
  /**
   * What this compile changed in the ipcache when it is known from the remote changes alone
   * (RemoteState.ipcacheChanges); null: compare the lists. Trusted only when the previous compile
   * finished (a compile that threw may have changed the base without a snapshot).
   */
  ipChanges: IpChange[] | null = null
  private lastCompileDone = false
  private ipNums = new Map<string, { n: number, key: string } | null>()
  private rulePrefixes: [string, Prefix][] = []
  private ruleLocalsBase: IpcacheBase | null = null
  private podIdentities: { labels: ReadonlyMap<number, readonly Label[]>, map: Map<number, readonly Label[]> } | null = null
  /** Local identities in use, by prefix and FQDN selector keys (objects reused across runs). */
  private localEntries = new Map<string, LocalEntry>()
  ipcache: readonly IpcacheEntry[] = Object.freeze([])

  constructor (private readonly allocator: IdentityAllocator) {}

  /** A compile starts: what the last one left is trusted only if it finished. */
  beginCompile (): void {
    this.ipChanges = null
    if (!this.lastCompileDone) this.base = null
    this.lastCompileDone = false
  }

  /** The compile made its snapshot. */
  endCompile (): void { this.lastCompileDone = true }

  /** Step 3: local identities (CIDR prefixes in rules, learned FQDN IPs) and the ipcache. */
  update (input: CompileInput, run: Run, from: LocalsInput): void {
    const hostKey = input.hostIPs.join(',')
    const learnedChanged = input.learned !== this.learnedInput || input.now >= this.learnedExpiry
    const remoteIp = input.remote?.ipcache ?? null
    if (!run.filesChanged && !learnedChanged && !run.endpointsChanged && !run.podsChanged && hostKey === this.hostKey && remoteIp === this.remoteIpInput && !run.first) return
    const lc = this.computeLocals(input, run, from)
    run.localsChanged = lc.changed
    run.fqdnChanged = lc.fqdnChanged
    this.hostKey = hostKey
    this.learnedInput = input.learned
    this.remoteIpInput = remoteIp
  }

  /**
   * Local identities, FQDN selectors, identities and the ipcache. Returns whether the set of
   * local identities changed (peers with CIDR/FQDN/world then need re-resolving).
   */
  private computeLocals (input: CompileInput, run: Run, from: LocalsInput): { changed: boolean, fqdnChanged: Set<string> | null } {
    const { endpoints } = from
    // The ipcache's fixed part: world, node addresses, endpoints.
    const hostKey = input.hostIPs.join(',')
    const remote = input.remote?.ipcache ?? null
    const delta = input.remote?.ipcacheChanges
    let remoteChanges: IpChange[] | null = null
    if (this.base !== null && this.base.endpoints === endpoints && this.base.hostKey === hostKey && this.base.remote !== remote &&
        delta !== undefined && delta.from === this.base.remote && !run.first) {
      // Only other nodes' entries changed, and the remote state says which: apply those.
      remoteChanges = applyRemoteChanges(this.base, delta.changed)
      this.base = { ...this.base, remote }
    } else if (this.base === null || this.base.endpoints !== endpoints || this.base.hostKey !== hostKey || this.base.remote !== remote) {
      this.base = buildIpcacheBase(input.hostIPs, hostKey, endpoints, remote)
    }
    const { taken } = this.base
    // The rules' part: CIDR prefixes and FQDN selectors (only when rules or endpoints changed).
    if (run.filesChanged || this.ruleLocalsBase !== this.base || run.first) {
      const { prefixes: rulePrefixes, fqdnSelectors } = ruleLocals(from.files, from.groups, taken)
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
    return this.buildLocals(prefixes, remoteChanges, input, from)
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
  private buildLocals (prefixes: Map<string, LocalPrefix>, remoteChanges: IpChange[] | null, input: CompileInput, from: LocalsInput): { changed: boolean, fqdnChanged: Set<string> | null } {
    const base = this.base as IpcacheBase
    const locals: Local[] = []
    const podIdsChanged = this.podIdentities === null || this.podIdentities.labels !== from.podLabels
    if (this.podIdentities === null || this.podIdentities.labels !== from.podLabels) {
      const m = new Map<number, readonly Label[]>(RESERVED_LABELS)
      for (const [id, labels] of from.podLabels) m.set(id, labels)
      this.podIdentities = { labels: from.podLabels, map: m }
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
        const id = this.allocator.acquireLocalIdentity(labels, input.now)
        const ip: IpcacheEntry = learnedOnly ? { prefix: k, identity: id, endpointId: 0, learnedOnly: true } : { prefix: k, identity: id, endpointId: 0 }
        le = { labels, local: { id, prefix, fqdnKeys: fk }, ip }
      }
      localEntries.set(ck, le)
      locals.push(le.local)
      ipList.push(le.ip)
    }
    // Local identities no prefix or learned name refers to any more: drop this compiler's reference.
    for (const [ck, le] of this.localEntries) if (!localEntries.has(ck)) this.allocator.releaseLocalIdentity(le.labels, input.now)
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
