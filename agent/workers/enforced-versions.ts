/**
 * Which policy version each HTTP proxy enforces, and whether one is behind the compiled policy
 * for too long: what `warden status` and the per-worker metrics read.
 *
 * Proxy 0 is the main thread's; 1.. are the worker threads (agent/workers/pool.ts). A worker
 * reports the version it enforces once it has applied a snapshot (or a version-only message),
 * so a worker that failed to apply one, or sits in a long synchronous stretch, shows the version
 * it really enforces, not the one it was sent.
 *
 * "Behind" is measured from the oldest compiled version a proxy does not enforce yet: a proxy
 * is lagging when that version was compiled more than the grace period ago. A steady stream of
 * edits therefore never makes a proxy that keeps up look stale (each version it lacks is
 * young), while a stuck one is reported however often the policy changes.
 *
 * Memory: one entry per proxy, plus the compiled versions some running proxy still lacks, at
 * most HISTORY_MAX of them (see compiled()).
 */

/**
 * How long a proxy may enforce an older version than the one compiled before the node is
 * degraded. A snapshot normally reaches every worker within milliseconds of the kernel having
 * it, but the kernel apply comes first (a full apply of a large policy takes a while), and a
 * worker compiles the new snapshot's matchers on its own event loop, between the requests it is
 * serving: seconds under load with a large policy. Five seconds leaves room for that and is
 * still short enough that `warden status` run right after an edit shows a stuck worker.
 */
export const POLICY_LAG_GRACE_MS = 5000

/** Compiled versions remembered for proxies that lack them (see compiled()). */
const HISTORY_MAX = 1024

export interface ProxyPolicy {
  /** 0: the main thread's proxy; 1..: the worker threads. */
  worker: number
  /** It listens and has reported the version it enforces (false while starting again). */
  running: boolean
  /** The version it enforces; null until it first reports. Kept while it is not running. */
  policyVersion: number | null
  /** How long the oldest compiled version it does not enforce has existed (0: none, or not running). */
  behindSeconds: number
  /** Running and behind for longer than the grace period. */
  lagging: boolean
}

interface State { running: boolean, version: number | null }

export class EnforcedVersions {
  private readonly proxies: State[]
  /** Compiled versions newer than the oldest one a running proxy enforces, ascending, with when they were seen. */
  private readonly pending: Array<{ version: number, at: number }> = []
  private latest = -1

  /**
   * @param count HTTP proxies (the main thread's included)
   * @param now a monotonic clock in milliseconds (tests give a fake one)
   */
  constructor (count: number, private readonly now: () => number = () => performance.now(), readonly graceMs = POLICY_LAG_GRACE_MS) {
    this.proxies = Array.from({ length: count }, () => ({ running: false, version: null }))
  }

  get size (): number { return this.proxies.length }

  /** The newest compiled version. */
  get compiledVersion (): number { return this.latest }

  /** The policy store compiled `version` (an older or repeated one is ignored). */
  compiled (version: number): void {
    if (version <= this.latest) return
    this.latest = version
    if (this.proxies.every((p) => !p.running || (p.version ?? -1) >= version)) return
    this.pending.push({ version, at: this.now() })
    // A proxy stuck while the policy keeps changing: forget the middle, never the oldest entry
    // (the stuck proxy's own) nor the newest. A proxy part-way through the forgotten ones then
    // reads as behind since a later version: under-reported, only once HISTORY_MAX versions
    // went by while one proxy was stuck, which status reports anyway.
    if (this.pending.length > HISTORY_MAX) this.pending.splice(1, 1)
  }

  /** Proxy `worker` runs and enforces `version`. */
  enforced (worker: number, version: number): void {
    const p = this.proxies[worker]
    if (p === undefined) return
    p.running = true
    p.version = version
    // Behind a version every other proxy had already (so none was remembered): it counts from now.
    if (version < this.latest && !this.pending.some((e) => e.version > version)) this.pending.push({ version: this.latest, at: this.now() })
    this.prune()
  }

  /** Proxy `worker` is not running (its thread exited; it is started again). */
  stopped (worker: number): void {
    const p = this.proxies[worker]
    if (p === undefined) return
    p.running = false
    this.prune()
  }

  report (): ProxyPolicy[] {
    const now = this.now()
    return this.proxies.map((p, worker) => {
      const first = p.running && p.version !== null ? this.pending.find((e) => e.version > (p.version as number)) : undefined
      const behindMs = first === undefined ? 0 : Math.max(0, now - first.at)
      return { worker, running: p.running, policyVersion: p.version, behindSeconds: Math.floor(behindMs / 1000), lagging: behindMs > this.graceMs }
    })
  }

  /** Drop the versions every running proxy enforces already. */
  private prune (): void {
    let oldest = Infinity
    for (const p of this.proxies) if (p.running && p.version !== null) oldest = Math.min(oldest, p.version)
    let n = 0
    while (n < this.pending.length && this.pending[n].version <= oldest) n++
    if (n > 0) this.pending.splice(0, n)
  }
}
