/**
 * The policy store: sources -> validated files -> compiled snapshots, watched. Fails closed
 * at startup (any error rejects `openStore`); at runtime a bad file is reported once per
 * version and its last good version stays in force, so a snapshot is never half-applied.
 */
import { pino, type Logger } from 'pino'
import { FileEndpointSource, type EndpointSource, type RawEndpoint } from './endpoints.js'
import { ERR, formatPolicyError, PolicyLoadError, type PolicyError } from './errors.js'
import { Compiler } from './compile.js'
import { FileIdentityAllocator, MemoryIdentityAllocator, type IdentityAllocator } from './identity.js'
import { IdentityLabelFilter } from './label-filter.js'
import { identityLabelsOf } from './labels.js'
import type { FilePolicies } from './model.js'
import { DirectoryPolicySource, type PolicyResource, type PolicySource } from './policy-source.js'
import { RESERVED, type Label, type LearnedName, type IpcacheChanges, type RemoteState, type Snapshot, type SnapshotDiff } from './types.js'

export interface StoreOptions {
  /** Policy directory. */
  policies: string
  /** Endpoints file; absent = no endpoints (e.g. `warden check` without --endpoints). */
  endpoints?: string
  /** Identity persistence; absent = in memory. */
  stateDir?: string
  /** Node addresses: /32 ipcache entries with the reserved host identity. */
  hostIPs?: string[]
  watch?: boolean
  logger?: Logger
  /** Other backends (defaults: the directory and file above). */
  policySource?: PolicySource
  endpointSource?: EndpointSource
  allocator?: IdentityAllocator
  /** Extra label sets compiled as identities (used by `warden trace` for `labels:` peers). */
  extraLabelSets?: readonly (readonly Label[])[]
  /**
   * Identity label patterns (Cilium's `--labels` syntax, see label-filter.ts), added to
   * Cilium's default list, or replacing it with `identityLabelsReplace`.
   */
  identityLabels?: readonly string[]
  identityLabelsReplace?: boolean
  /** How long an unused identity or endpoint id stays reserved (default DEFAULT_RELEASE_GRACE_MS). */
  releaseGraceMs?: number
  /** Node-wide policy audit mode: every endpoint audits (Endpoint.audit). */
  auditAll?: boolean
  /** Milliseconds since the epoch (default Date.now); tests drive it. */
  clock?: () => number
  /** Other nodes' state at start (cluster mode; later ones through `setRemote`). */
  remote?: RemoteState
}

export interface PolicyStore {
  current (): Snapshot
  onSnapshot (fn: (snap: Snapshot, diff: SnapshotDiff) => void): () => void
  onRejected (fn: (errors: PolicyError[]) => void): () => void
  /** The DNS proxy's learned names (the whole current set). Recompiles synchronously. */
  setLearnedNames (names: readonly LearnedName[]): Snapshot
  /** What the last load found: the files in force and every current rejection (for `warden status`). */
  inventory (): StoreInventory
  /** How the compiles' ipcache diffs were made: from the changes the cluster store named, or by comparing. */
  readonly compileStats: Readonly<{ ipcacheDiffsNamed: number, ipcacheDiffsCompared: number }>
  /**
   * Other nodes' state (cluster mode). Recompiles soon (debounced with file changes), after
   * preparing identities again: also the way to retry a compile that failed for want of an
   * identity while the cluster store was unreachable.
   */
  setRemote (remote: RemoteState): void
  close (): Promise<void>
}

export interface StoreInventory {
  /** Files whose policies are in force (a rejected file keeps its last good version here). */
  files: readonly string[]
  /** Every error of the last load: rejected files, and the endpoints file's. */
  rejected: readonly PolicyError[]
}

/** Summary counts (for `warden check` and logs). */
export interface LoadSummary { files: number, policies: number, rules: number, cidrGroups: number, endpoints: number, identities: number, skippedDocuments: number }

/** Settle time after the last file event before reloading; and the cap on waiting. */
const DEBOUNCE_MS = 20
const MAX_WAIT_MS = 60
/** How often label sets that could not be numbered are asked for again. */
const PENDING_RETRY_MS = 5000

class Store implements PolicyStore {
  private readonly compiler: Compiler
  private readonly lastGood = new Map<string, FilePolicies>()
  private readonly reported = new Map<string, string>()
  private lastErrors: readonly PolicyError[] = []
  private endpoints: RawEndpoint[] = []
  private endpointsSig = ''
  private learned: readonly LearnedName[] = []
  private remote: RemoteState | undefined
  private remoteDirty = false
  /** The remote state the last compile was given. */
  private compiledRemote: RemoteState | undefined
  /** The chained remote changes this store built (setRemote), appended to while a compile waits. */
  private chained: Array<IpcacheChanges['changed'][number]> | null = null
  /** A label set endpoints waited for got its number (retryPendingSoon). */
  private pendingReady = false
  /** name -> its IPs, of the names in effect at the last setLearnedNames. */
  private learnedSet = new Map<string, string>()
  private snapshot: Snapshot | null = null
  private readonly snapListeners = new Set<(s: Snapshot, d: SnapshotDiff) => void>()
  private readonly rejListeners = new Set<(e: PolicyError[]) => void>()
  private readonly stops: (() => void)[] = []
  private timer: NodeJS.Timeout | null = null
  private firstEventAt = 0
  private running: Promise<void> | null = null
  private again = false
  private closed = false
  readonly log: Logger

  private readonly labelFilter: IdentityLabelFilter
  private readonly clock: () => number
  private persistTimer: NodeJS.Timeout | null = null
  private retryTimer: NodeJS.Timeout | null = null

  constructor (readonly opts: StoreOptions, readonly policySource: PolicySource, readonly endpointSource: EndpointSource | null, readonly allocator: IdentityAllocator) {
    this.labelFilter = new IdentityLabelFilter(opts.identityLabels ?? [], { replace: opts.identityLabelsReplace })
    this.compiler = new Compiler(allocator, { labelFilter: this.labelFilter })
    this.log = opts.logger ?? pino({ level: 'silent' })
    this.clock = opts.clock ?? Date.now
    this.remote = opts.remote
  }

  /** Allocate the cluster identities the next compile needs (a network backend's round trip). */
  async prepare (): Promise<void> {
    const sets = this.endpoints.map((e) => this.labelFilter.filter(identityLabelsOf(e.labels, e.namespace)))
    await this.allocator.prepare([...sets, ...(this.opts.extraLabelSets ?? [])], this.clock())
  }

  /** Release what is past its grace period, then persist. */
  async persist (): Promise<void> {
    await this.allocator.collect(this.clock())
    await this.allocator.flush()
  }

  /** Persist within a second (learned names change numbers without a reload). */
  private persistSoon (): void {
    if (this.persistTimer !== null || this.closed) return
    this.persistTimer = setTimeout(() => {
      this.persistTimer = null
      this.persist().catch((err) => this.log.error({ err }, 'cannot persist identities'))
    }, 1000)
    this.persistTimer.unref()
  }

  /** The compiler's counters (how ipcache diffs were made). */
  get compileStats (): Readonly<Compiler['stats']> { return this.compiler.stats }

  current (): Snapshot {
    if (this.snapshot === null) throw new Error('store not loaded')
    return this.snapshot
  }

  onSnapshot (fn: (s: Snapshot, d: SnapshotDiff) => void): () => void {
    this.snapListeners.add(fn)
    return () => { this.snapListeners.delete(fn) }
  }

  onRejected (fn: (e: PolicyError[]) => void): () => void {
    this.rejListeners.add(fn)
    return () => { this.rejListeners.delete(fn) }
  }

  /** Load everything; returns all current errors (including files kept at their last good). */
  async load (): Promise<{ errors: PolicyError[], changed: boolean }> {
    const errors: PolicyError[] = []
    const fresh: PolicyError[] = []
    let changed = false
    const { resources, listingErrors } = await this.policySource.load()
    const present = new Set<string>()
    const sourceBroken = listingErrors.length > 0
    // the listing's own errors are reported like a resource's, under the source's name
    const listing: PolicyResource[] = sourceBroken ? [{ key: this.policySource.description, policies: null, errors: listingErrors }] : []
    for (const r of [...listing, ...resources]) {
      present.add(r.key)
      if (r.policies === null) {
        errors.push(...r.errors)
        const sig = r.errors.map(formatPolicyError).join('\n')
        if (this.reported.get(r.key) !== sig) { this.reported.set(r.key, sig); fresh.push(...r.errors) }
        continue
      }
      this.reported.delete(r.key)
      if (this.lastGood.get(r.key) !== r.policies) { this.lastGood.set(r.key, r.policies); changed = true }
    }
    if (!sourceBroken) {
      for (const k of [...this.lastGood.keys()]) if (!present.has(k)) { this.lastGood.delete(k); changed = true }
      for (const k of [...this.reported.keys()]) if (!present.has(k) && k !== '<endpoints>') this.reported.delete(k)
    }
    if (this.endpointSource !== null) {
      const { endpoints, errors: epErrors } = await this.endpointSource.load()
      if (endpoints === null) {
        errors.push(...epErrors)
        const sig = epErrors.map(formatPolicyError).join('\n')
        if (this.reported.get('<endpoints>') !== sig) { this.reported.set('<endpoints>', sig); fresh.push(...epErrors) }
      } else {
        this.reported.delete('<endpoints>')
        if (endpoints !== this.endpoints) { // the source hands back the same array when unchanged
          const sig = JSON.stringify(endpoints.map((e) => [e.name, e.namespace, e.labels, e.ipv4, e.interface, e.ports ?? [], e.line]))
          if (sig !== this.endpointsSig) { this.endpoints = endpoints; this.endpointsSig = sig; changed = true }
        }
      }
    }
    if (fresh.length > 0 && this.snapshot !== null) {
      for (const e of fresh) this.log.warn({ code: e.code, file: e.file, line: e.line, col: e.col, path: e.path }, `policy rejected, last good version stays: ${formatPolicyError(e)}`)
      for (const fn of this.rejListeners) fn(fresh)
    }
    this.lastErrors = errors
    return { errors, changed: changed || this.snapshot === null }
  }

  inventory (): StoreInventory {
    return { files: [...this.lastGood.keys()].sort(), rejected: this.lastErrors }
  }

  compileNow (): { snapshot: Snapshot, diff: SnapshotDiff } {
    const prev = this.snapshot
    this.compiledRemote = this.remote
    const res = this.compiler.compile({
      endpoints: this.endpoints,
      files: [...this.lastGood.values()],
      learned: this.learned,
      remote: this.remote,
      hostIPs: this.opts.hostIPs ?? [],
      now: this.clock(),
      extraLabelSets: this.opts.extraLabelSets,
      auditAll: this.opts.auditAll
    })
    this.snapshot = res.snapshot
    if (res.snapshot.endpoints !== prev?.endpoints) this.reportPending(prev, res.snapshot)
    this.retryPendingSoon()
    return res
  }

  /** One line per endpoint that starts or stops waiting for its identity (Cilium's init identity). */
  private reportPending (prev: Snapshot | null, next: Snapshot): void {
    const before = new Map((prev?.endpoints ?? []).map((e) => [`${e.namespace}/${e.name}`, e]))
    for (const e of next.endpoints) {
      const name = `${e.namespace}/${e.name}`
      const old = before.get(name)
      const waits = e.pendingIdentityLabels !== undefined
      const waited = old?.pendingIdentityLabels !== undefined
      if (waits && (!waited || old?.identity !== e.identity)) {
        this.log.warn({ endpoint: name, identity: e.identity, labels: e.pendingIdentityLabels, code: ERR.IDENTITY_NOT_PREPARED },
          e.identity === RESERVED.INIT
            ? 'endpoint has the init identity: its labels cannot be numbered yet (kvstore unreachable?); only rules selecting reserved:init apply to it'
            : 'endpoint keeps its previous identity: its new labels cannot be numbered yet (kvstore unreachable?)')
      } else if (!waits && waited && old !== undefined) {
        this.log.info({ endpoint: name, identity: e.identity, previousIdentity: old.identity }, 'endpoint got the identity of its labels')
      }
    }
  }

  /**
   * While endpoints wait for numbers, ask the allocator again every few seconds; recompile only
   * once one came (the cluster store also asks at each reconnect: setRemote).
   */
  private retryPendingSoon (): void {
    if (this.retryTimer !== null || this.closed || this.compiler.pendingLabelSets().length === 0) return
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null
      const sets = this.compiler.pendingLabelSets()
      this.allocator.prepare(sets, this.clock()).then(() => {
        if (this.closed) return
        if (sets.some((ls) => this.allocator.isPrepared(ls))) { this.pendingReady = true; this.schedule() } else this.retryPendingSoon()
      }, (err: Error) => { this.log.warn({ err: err.message }, 'identity retry failed'); this.retryPendingSoon() })
    }, PENDING_RETRY_MS)
    this.retryTimer.unref()
  }

  private emit (snapshot: Snapshot, diff: SnapshotDiff): void {
    this.log.info({ policyVersion: snapshot.version, kernelAdded: diff.kernelAdded.length, kernelRemoved: diff.kernelRemoved.length }, 'policy snapshot')
    for (const fn of this.snapListeners) {
      try { fn(snapshot, diff) } catch (err) { this.log.error({ err }, 'snapshot listener failed') }
    }
  }

  setLearnedNames (names: readonly LearnedName[]): Snapshot {
    const now = this.clock()
    // Same effective set (names not expired, with the same IPs): nothing to do. One pass, no sort
    // of the whole set: this runs on every DNS answer that brings new IPs.
    const effective = new Map<string, string>()
    for (const n of names) {
      if (n.expiresAt <= now) continue
      const ips = n.ipv4.length === 1 ? n.ipv4[0] : [...n.ipv4].sort().join(',')
      const prev = effective.get(n.name)
      effective.set(n.name, prev === undefined ? ips : [...prev.split(';'), ips].sort().join(';')) // a name given twice
    }
    // Keep the latest expiries even when nothing recompiles: the next compile (a policy edit, an
    // endpoint change) judges expiry by them, and must not drop an IP whose lease was renewed.
    this.learned = names.slice()
    if (this.snapshot !== null && effective.size === this.learnedSet.size) {
      let same = true
      for (const [name, ips] of effective) if (this.learnedSet.get(name) !== ips) { same = false; break }
      if (same) return this.snapshot
    }
    this.learnedSet = effective
    const { snapshot, diff } = this.compileNow()
    this.emit(snapshot, diff)
    this.persistSoon()
    return snapshot
  }

  setRemote (remote: RemoteState): void {
    // Remote states that arrive while a compile waits (debounce, identity preparation) are
    // compiled as one: their named changes are chained, so the compiler can still apply them
    // instead of comparing every entry.
    // The chain is bounded by the ipcache's size: past it, comparing every entry is cheaper, so
    // the changes are dropped and the compiler does that.
    const pending = this.remote
    const c = remote.ipcacheChanges
    if (pending !== undefined && pending !== this.compiledRemote && pending.ipcacheChanges !== undefined && c !== undefined && c.from === pending.ipcache) {
      const before = pending.ipcacheChanges.changed
      if (before.length + c.changed.length > Math.max(remote.ipcache.length, MIN_CHAIN)) {
        const { ipcacheChanges: _dropped, ...whole } = remote
        remote = whole
        this.chained = null
      } else {
        // appended in place once the store owns the array: no copy per remote state
        const changed = before === this.chained ? this.chained : [...before]
        for (const x of c.changed) changed.push(x)
        this.chained = changed
        remote = { ...remote, ipcacheChanges: { from: pending.ipcacheChanges.from, changed } }
      }
    }
    this.remote = remote
    this.remoteDirty = true
    if (this.snapshot !== null) this.schedule()
  }

  summary (): LoadSummary {
    const files = [...this.lastGood.values()]
    const snap = this.current()
    return {
      files: files.length,
      policies: files.reduce((n, f) => n + f.policies, 0),
      rules: files.reduce((n, f) => n + f.rules.reduce((m, r) => m + r.itemCount, 0), 0),
      cidrGroups: files.reduce((n, f) => n + (f.cidrGroups?.length ?? 0), 0),
      endpoints: snap.endpoints.length,
      identities: new Set(snap.endpoints.map((e) => e.identity)).size,
      skippedDocuments: files.reduce((n, f) => n + f.skipped, 0)
    }
  }

  startWatching (): void {
    const kick = (): void => this.schedule()
    this.stops.push(this.policySource.watch(kick))
    if (this.endpointSource !== null) this.stops.push(this.endpointSource.watch(kick))
  }

  private schedule (): void {
    if (this.closed) return
    const now = Date.now()
    if (this.timer === null) this.firstEventAt = now
    else clearTimeout(this.timer)
    const wait = Math.max(0, Math.min(DEBOUNCE_MS, this.firstEventAt + MAX_WAIT_MS - now))
    this.timer = setTimeout(() => { this.timer = null; void this.reload() }, wait)
  }

  private async reload (): Promise<void> {
    if (this.running !== null) { this.again = true; return }
    this.running = (async () => {
      do {
        this.again = false
        try {
          const { changed } = await this.load()
          if (this.closed) return
          if (changed || this.remoteDirty || this.pendingReady) {
            this.remoteDirty = false
            this.pendingReady = false
            await this.prepare()
            const { snapshot, diff } = this.compileNow()
            // Every compiled snapshot is emitted: the next diff is relative to it.
            this.emit(snapshot, diff)
          }
        } catch (err) {
          this.log.error({ err }, 'policy reload failed; keeping the current snapshot')
        }
        try {
          await this.persist()
        } catch (err) {
          this.log.error({ err }, 'cannot persist identities')
        }
      } while (this.again && !this.closed)
    })()
    try { await this.running } finally { this.running = null }
  }

  async close (): Promise<void> {
    this.closed = true
    if (this.timer !== null) clearTimeout(this.timer)
    if (this.persistTimer !== null) clearTimeout(this.persistTimer)
    if (this.retryTimer !== null) clearTimeout(this.retryTimer)
    for (const s of this.stops) s()
    if (this.running !== null) await this.running
    await this.persist()
  }
}

async function makeStore (opts: StoreOptions): Promise<Store> {
  const grace = { releaseGraceMs: opts.releaseGraceMs }
  const allocator = opts.allocator ?? (opts.stateDir !== undefined
    ? await FileIdentityAllocator.open(opts.stateDir, { ...grace, now: (opts.clock ?? Date.now)() })
    : new MemoryIdentityAllocator(grace))
  const endpointSource = opts.endpointSource ?? (opts.endpoints !== undefined ? new FileEndpointSource(opts.endpoints) : null)
  return new Store(opts, opts.policySource ?? new DirectoryPolicySource(opts.policies), endpointSource, allocator)
}

/** One-shot: load and compile what is valid; return every error too. */
export async function loadSnapshot (opts: StoreOptions): Promise<{ snapshot: Snapshot, errors: PolicyError[], summary: LoadSummary }> {
  const store = await makeStore(opts)
  const { errors } = await store.load()
  await store.prepare()
  const { snapshot } = store.compileNow()
  await store.persist()
  return { snapshot, errors, summary: store.summary() }
}

/** Load, compile and (unless `watch: false`) watch. Rejects with PolicyLoadError on any error. */
/** Chained remote changes kept at least, however small the ipcache. */
const MIN_CHAIN = 4096

export async function openStore (opts: StoreOptions): Promise<PolicyStore> {
  const store = await makeStore(opts)
  const { errors } = await store.load()
  if (errors.length > 0) throw new PolicyLoadError(errors)
  await store.prepare()
  const { snapshot } = store.compileNow()
  await store.persist()
  store.log.info({ policyVersion: snapshot.version, ...store.summary() }, 'policy store loaded')
  if (opts.watch !== false) store.startWatching()
  return store
}
