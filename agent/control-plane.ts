/**
 * The agent's control plane: snapshots go from the policy store to the kernel one at a time, in
 * order, and the proxies enforce a snapshot only once the kernel has it, so a proxy never allows
 * what the kernel does not yet redirect, and vice versa.
 *
 * It drives the datapath through `KernelPort` and reads the store through `SnapshotSource`, so
 * the ordering, the retries and the waiters are tested with fakes, without root.
 *
 * Rules it keeps:
 * - It subscribes to the store before the first apply: an edit compiled while the first snapshot
 *   is being applied is queued behind it, never lost.
 * - A diff is applied only onto the version it was computed from. After a failed apply the
 *   kernel's content is unknown, so the next apply is a full one.
 * - A failed apply is retried at once as a full apply; if that fails too, the proxies keep the
 *   previous snapshot and a full apply of the store's latest snapshot is retried with backoff
 *   until one succeeds or a newer snapshot arrives.
 * - Waiters (the DNS proxy holding an answer until the kernel knows its addresses) are released
 *   once their version is in force, or once an apply of it failed: a held answer has a bounded
 *   hold anyway, and releasing them keeps the list from growing while applies fail.
 */
import type { LearnedName, Snapshot, SnapshotDiff } from '../policy-store/src/index.js'

/** What the control plane needs of the policy store. */
export interface SnapshotSource {
  current (): Snapshot
  onSnapshot (fn: (snap: Snapshot, diff: SnapshotDiff) => void): () => void
  /** Recompiles synchronously with the DNS proxy's learned names; emits the new snapshot. */
  setLearnedNames (names: readonly LearnedName[]): Snapshot
}

/** What the control plane needs of the datapath (redirect-bpf's Datapath has it). */
export interface KernelPort {
  /** Bring the kernel in line with `snap`; with `diff`, only the changes since `diff.from`. */
  apply (snap: Snapshot, diff?: SnapshotDiff): Promise<void>
  /** ipcache longest-prefix lookup. */
  lookupIdentity (ipv4: string): number
}

interface Log {
  info (obj: object, msg: string): void
  error (obj: object, msg: string): void
}

export interface ControlPlaneOptions {
  store: SnapshotSource
  datapath: KernelPort
  logger: Log
  /** First delay before retrying a failed full apply; doubles up to `retryMaxMs`. */
  retryMs?: number
  retryMaxMs?: number
}

/** Identities cached per address at most; the cache empties when it is full. */
const IDENTITY_CACHE_MAX = 65536

export class ControlPlane {
  private readonly store: SnapshotSource
  private readonly datapath: KernelPort
  private readonly log: Log
  private readonly retryMs: number
  private readonly retryMaxMs: number
  private activeSnap: Snapshot
  /** The version the kernel holds, or -1 when an apply failed part-way (content unknown). */
  private kernelVersion = -1
  private chain: Promise<void> = Promise.resolve()
  private readonly waiters: Array<{ version: number, resolve: () => void }> = []
  private readonly activeListeners: Array<(snap: Snapshot) => void> = []
  /**
   * Identities by address, as the kernel's ipcache has them. That map is written only from
   * snapshots (here), so an answer holds until the next one: a DNS query or an HTTP connection
   * then costs no bpf() call.
   */
  private readonly identities = new Map<string, number>()
  private unsubscribe: (() => void) | null = null
  private retryTimer: NodeJS.Timeout | null = null
  private retryDelay: number
  private closed = false

  private constructor (opts: ControlPlaneOptions) {
    this.store = opts.store
    this.datapath = opts.datapath
    this.log = opts.logger
    this.retryMs = opts.retryMs ?? 1000
    this.retryMaxMs = opts.retryMaxMs ?? 30_000
    this.retryDelay = this.retryMs
    this.activeSnap = opts.store.current()
  }

  /**
   * Subscribe, then put the store's current snapshot in the kernel. Rejects (and unsubscribes)
   * when that first apply fails: an agent that cannot enforce must not start.
   */
  static async start (opts: ControlPlaneOptions): Promise<ControlPlane> {
    const cp = new ControlPlane(opts)
    cp.unsubscribe = cp.store.onSnapshot((snap, diff) => { cp.enforce(snap, diff) })
    const first = cp.store.current()
    const applied = cp.datapath.apply(first).then(() => {
      cp.kernelVersion = first.version
      cp.setActive(first)
      cp.log.info({ policyVersion: first.version, endpoints: first.endpoints.length, kernelEntries: first.kernel.length }, 'snapshot in the kernel')
    })
    // snapshots emitted from now on queue behind the first apply
    cp.chain = applied.catch(() => {})
    try {
      await applied
    } catch (err) {
      await cp.close()
      throw err
    }
    return cp
  }

  /** The snapshot the kernel and the proxies enforce. */
  active (): Snapshot { return this.activeSnap }

  /** Called with each snapshot once the kernel has it. */
  onActive (fn: (snap: Snapshot) => void): void { this.activeListeners.push(fn) }

  lookupIdentity (ip: string): number {
    let id = this.identities.get(ip)
    if (id === undefined) {
      if (this.identities.size >= IDENTITY_CACHE_MAX) this.identities.clear()
      id = this.datapath.lookupIdentity(ip)
      this.identities.set(ip, id)
    }
    return id
  }

  /** Hand the learned names to the store; resolves once the kernel has the snapshot they made. */
  async learn (names: readonly LearnedName[]): Promise<void> {
    const snap = this.store.setLearnedNames(names)
    await this.whenEnforced(snap.version)
  }

  /** Resolves once `version` is in force, or an apply of it failed (see the module comment). */
  async whenEnforced (version: number): Promise<void> {
    if (version <= this.activeSnap.version || this.closed) return
    await new Promise<void>((resolve) => this.waiters.push({ version, resolve }))
  }

  /** Stop taking snapshots; the apply under way finishes. Releases every waiter. */
  async close (): Promise<void> {
    this.closed = true
    this.unsubscribe?.()
    this.unsubscribe = null
    if (this.retryTimer !== null) clearTimeout(this.retryTimer)
    this.retryTimer = null
    await this.chain
    for (const w of this.waiters.splice(0)) w.resolve()
  }

  private enforce (snap: Snapshot, diff: SnapshotDiff | undefined): void {
    if (this.closed) return
    this.chain = this.chain.then(async () => { await this.applyOne(snap, diff) })
  }

  private async applyOne (snap: Snapshot, diff: SnapshotDiff | undefined): Promise<void> {
    if (this.closed) return
    if (snap.version <= this.kernelVersion) { this.release(snap.version); return }
    if (this.retryTimer !== null) { clearTimeout(this.retryTimer); this.retryTimer = null }
    const started = process.hrtime.bigint()
    const incremental = diff !== undefined && diff.from === this.kernelVersion ? diff : undefined
    try {
      await this.datapath.apply(snap, incremental)
      this.applied(snap, incremental, started)
    } catch (err) {
      this.kernelVersion = -1
      this.identities.clear() // the ipcache may be part-way between the two
      this.log.error({ err, policyVersion: snap.version, incremental: incremental !== undefined }, 'applying the snapshot to the kernel failed; retrying as a full apply')
      try {
        await this.datapath.apply(snap)
        this.applied(snap, undefined, started)
      } catch (err2) {
        this.log.error({ err: err2, policyVersion: snap.version, retryInMs: this.retryDelay }, 'full apply failed; the proxies keep the previous snapshot')
        this.scheduleRetry()
      }
    }
    this.release(snap.version)
  }

  private applied (snap: Snapshot, diff: SnapshotDiff | undefined, started: bigint): void {
    this.kernelVersion = snap.version
    this.retryDelay = this.retryMs
    this.setActive(snap)
    this.log.info({
      policyVersion: snap.version,
      incremental: diff !== undefined,
      kernelAdded: diff?.kernelAdded.length,
      kernelRemoved: diff?.kernelRemoved.length,
      ipcacheAdded: diff?.ipcacheAdded.length,
      ipcacheRemoved: diff?.ipcacheRemoved.length,
      applyMs: Number(process.hrtime.bigint() - started) / 1e6
    }, 'snapshot in the kernel')
  }

  private scheduleRetry (): void {
    if (this.closed) return
    const delay = this.retryDelay
    this.retryDelay = Math.min(this.retryDelay * 2, this.retryMaxMs)
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null
      // the latest snapshot, in full: the kernel's content is unknown
      this.enforce(this.store.current(), undefined)
    }, delay)
    this.retryTimer.unref()
  }

  private setActive (snap: Snapshot): void {
    this.activeSnap = snap
    this.identities.clear()
    for (const fn of this.activeListeners) fn(snap)
  }

  private release (version: number): void {
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      if (this.waiters[i].version <= version) this.waiters.splice(i, 1)[0].resolve()
    }
  }
}
