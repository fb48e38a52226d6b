/**
 * A local copy of some etcd prefixes, kept by watching them, with no gap across sessions.
 *
 * Each prefix has the revision its copy is at. At a session start (connection.ts) the copy
 * either resumes -- a watch from that revision + 1, when etcd kept its data (the session is
 * `continuous`) and is not behind the copy -- or relists: one read of the whole prefix, whose
 * differences with the copy are applied as if watched, then a watch from the read's revision + 1.
 * A watch whose start revision was compacted away relists the same way. Either way a listener
 * sees each key change once, and only changes: a value written again unchanged (a republish)
 * is not one.
 *
 * The copy survives outages untouched: while etcd is away the agent enforces what it has.
 *
 * An etcd that lost its data (restored from an empty or older data directory: the node's marker
 * is gone or older, see connection.ts; or its revision is behind the copy's) comes back without any node's keys until each owner reconnects and
 * republishes. A relist then would delete every other node's records for those seconds and
 * deny their pods cluster-wide. So keys absent after such a loss are held, as they were, until
 * `lostDataHoldMs` passes; a key republished meanwhile is simply current again, and one still
 * absent then is deleted (its owner is gone: what its lease expiring would have done).
 */
import type { Watcher, IKeyValue } from 'etcd3'
import type { Logger } from 'pino'
import type { Session } from './connection.js'

export interface MirrorEntry { value: string, modRevision: number }
export type MirrorChange = { type: 'put', key: string, value: string, prev: string | undefined } | { type: 'delete', key: string, prev: string }

/** `held`: keys absent since etcd lost its data, kept until their owners had time to republish. */
export interface MirrorStats { watchEvents: number, relists: number, resumes: number, dropped: number, oversized: number, held: number }

/**
 * The largest key plus value copied, in bytes. A record of the kinds watched (an identity's
 * labels, an endpoint's IPIdentityPair with its named ports, a node) is well under it; etcd would
 * take a megabyte. Larger records are treated as absent, so the copies' memory is bounded by
 * their key counts times this, never by what a peer writes.
 */
export const MAX_RECORD_BYTES = 16 * 1024

export interface MirrorOptions {
  /** Keys kept at most; a new key beyond is not copied (counted in `dropped`). Default: no bound. */
  maxEntries?: number
  /** The largest key plus value copied (default MAX_RECORD_BYTES). */
  maxRecordBytes?: number
  /** How long keys absent after etcd lost its data are held (default 0: deleted at once). */
  lostDataHoldMs?: number
}

export class Mirror {
  readonly entries = new Map<string, MirrorEntry>()
  /** The etcd revision this copy is complete up to (0: never listed). */
  revision = 0
  private watcher: Watcher | null = null
  private readonly listeners: ((changes: MirrorChange[]) => void)[] = []
  readonly stats: MirrorStats = { watchEvents: 0, relists: 0, resumes: 0, dropped: 0, oversized: 0, held: 0 }
  private readonly maxEntries: number
  private readonly maxRecordBytes: number
  private readonly lostDataHoldMs: number
  /** The cluster ID of the etcd this copy was last listed from (null: never listed). */
  private listedFrom: string | null = null
  /** Keys absent since etcd lost its data, with when they are deleted if still absent. */
  private readonly held = new Map<string, number>()
  private holdTimer: NodeJS.Timeout | null = null

  constructor (readonly prefix: string, private readonly log: Logger, opts: MirrorOptions = {}) {
    this.maxEntries = opts.maxEntries ?? Infinity
    this.maxRecordBytes = opts.maxRecordBytes ?? MAX_RECORD_BYTES
    this.lostDataHoldMs = opts.lostDataHoldMs ?? 0
  }

  /** Too large to copy: counted, logged once per thousand; the key is then treated as absent. */
  private oversized (key: string, bytes: number): boolean {
    if (bytes <= this.maxRecordBytes) return false
    if (this.stats.oversized++ % 1000 === 0) this.log.warn({ prefix: this.prefix, key: key.slice(0, 256), bytes, max: this.maxRecordBytes }, 'kvstore: record too large; treated as absent')
    return true
  }

  private full (key: string): boolean {
    if (this.entries.size < this.maxEntries || this.entries.has(key)) return false
    if (this.stats.dropped++ % 1000 === 0) this.log.warn({ prefix: this.prefix, key, max: this.maxEntries }, 'kvstore: too many keys under the prefix; not copying more')
    return true
  }

  onChange (fn: (changes: MirrorChange[]) => void): void { this.listeners.push(fn) }

  /** Restore a persisted copy (before the first session): it is relisted at the first connect. */
  restore (entries: Iterable<[string, string]>): void {
    const changes: MirrorChange[] = []
    for (const [key, value] of entries) {
      if (!key.startsWith(this.prefix) || this.oversized(key, Buffer.byteLength(key) + Buffer.byteLength(value)) || this.full(key)) continue
      this.entries.set(key, { value, modRevision: 0 })
      changes.push({ type: 'put', key, value, prev: undefined })
    }
    this.emit(changes)
  }

  async onSession (s: Session): Promise<void> {
    this.stop()
    // The connection's marker says so, or etcd is behind the copy, or another etcd cluster:
    // what is missing was lost, not deleted
    const lost = s.lostData || (this.listedFrom !== null && (s.clusterId !== this.listedFrom || s.revision < this.revision))
    this.listedFrom = s.clusterId
    if (lost) {
      this.log.warn({ prefix: this.prefix, revision: s.revision, copyRevision: this.revision, holdMs: this.lostDataHoldMs }, 'kvstore: etcd lost data; keys now absent are kept while their owners republish')
      await this.relist(s, true)
      return
    }
    if (s.continuous && this.revision > 0 && s.revision >= this.revision) {
      this.stats.resumes++
      try {
        await this.watch(s, this.revision + 1)
        this.scheduleHeld() // a hold that ended while etcd was away ends now
        return
      } catch (err) {
        // etcd cancels a watch whose start revision was compacted away (etcd 3.4 gives no reason
        // text, only the compact revision): read the prefix again.
        if (!/compact|canceled/i.test((err as Error).message)) throw err
        this.log.warn({ prefix: this.prefix, revision: this.revision, err: (err as Error).message }, 'kvstore watch cancelled (revision compacted): relisting')
      }
    }
    await this.relist(s)
  }

  /** The session ended: its watch is gone with its client. */
  stop (): void {
    const w = this.watcher
    this.watcher = null
    if (w === null) return
    w.removeAllListeners()
    w.on('error', () => {})
    // Cancelled explicitly: an open watch stream keeps gRPC's channel (and the process) alive
    // even after the client is closed.
    w.cancel().catch(() => {})
  }

  private async relist (s: Session, lost = false): Promise<void> {
    this.stats.relists++
    const list = await s.kv.list(this.prefix)
    const seen = new Set<string>()
    const changes: MirrorChange[] = []
    for (const kv of list.kvs) {
      if (this.oversized(kv.key, Buffer.byteLength(kv.key) + Buffer.byteLength(kv.value))) continue // absent: deleted below if copied before
      seen.add(kv.key)
      this.held.delete(kv.key)
      if (this.full(kv.key)) continue
      const cur = this.entries.get(kv.key)
      if (cur?.value !== kv.value) changes.push({ type: 'put', key: kv.key, value: kv.value, prev: cur?.value })
      this.entries.set(kv.key, { value: kv.value, modRevision: kv.modRevision })
    }
    const now = Date.now()
    for (const [key, cur] of this.entries) {
      if (seen.has(key)) continue
      const until = this.held.get(key) ?? (lost && this.lostDataHoldMs > 0 ? now + this.lostDataHoldMs : undefined)
      if (until !== undefined && until > now) { this.held.set(key, until); continue }
      this.held.delete(key)
      this.entries.delete(key)
      changes.push({ type: 'delete', key, prev: cur.value })
    }
    this.stats.held = this.held.size
    this.scheduleHeld()
    this.revision = list.revision
    if (changes.length > 0) this.log.info({ prefix: this.prefix, changes: changes.length, revision: list.revision }, 'kvstore relisted')
    this.emit(changes)
    await this.watch(s, list.revision + 1)
  }

  private async watch (s: Session, from: number): Promise<void> {
    const w = await s.kv.watch(this.prefix, from)
    this.watcher = w
    const batch: MirrorChange[] = []
    const flush = (): void => { if (batch.length > 0) this.emit(batch.splice(0)) }
    w.on('put', (kv: IKeyValue) => {
      this.stats.watchEvents++
      const key = kv.key.toString()
      const rev = Number(kv.mod_revision)
      if (rev > this.revision) this.revision = rev
      if (this.oversized(key, kv.key.length + kv.value.length)) {
        // as a delete: a record grown too large is no longer what this node enforces
        this.unhold(key)
        const old = this.entries.get(key)
        if (old !== undefined) { this.entries.delete(key); batch.push({ type: 'delete', key, prev: old.value }) }
        return
      }
      const value = kv.value.toString()
      this.unhold(key)
      if (this.full(key)) return
      const cur = this.entries.get(key)
      this.entries.set(key, { value, modRevision: rev })
      if (cur?.value !== value) batch.push({ type: 'put', key, value, prev: cur?.value })
    })
    w.on('delete', (kv: IKeyValue) => {
      this.stats.watchEvents++
      const key = kv.key.toString()
      const rev = Number(kv.mod_revision)
      if (rev > this.revision) this.revision = rev
      this.unhold(key)
      const cur = this.entries.get(key)
      if (cur === undefined) return
      this.entries.delete(key)
      batch.push({ type: 'delete', key, prev: cur.value })
    })
    // One etcd response is one batch: its events are applied together.
    w.on('data', () => setImmediate(flush))
    w.on('disconnected', (err: Error) => { if (this.watcher === w) s.fail(err) })
    w.on('error', (err: Error) => {
      if (this.watcher !== w) return
      if (/compact|canceled/i.test(err.message)) {
        // Cancelled by etcd (its start revision compacted away, the usual reason): a relist
        // repairs whatever the watch would have missed.
        this.log.warn({ prefix: this.prefix, revision: this.revision, err: err.message }, 'kvstore watch cancelled (revision compacted): relisting')
        this.stop()
        this.relist(s).catch((e: Error) => s.fail(e))
        return
      }
      s.fail(err)
    })
  }

  /** Written (or deleted) in etcd again: the key is current, no longer held. */
  private unhold (key: string): void {
    if (this.held.delete(key)) this.stats.held = this.held.size
  }

  /** Stop for good: no held key is deleted after this. */
  close (): void {
    this.stop()
    if (this.holdTimer !== null) clearTimeout(this.holdTimer)
    this.holdTimer = null
  }

  /** Delete the held keys whose time is up, while a session is live (else at the next relist). */
  private scheduleHeld (): void {
    if (this.holdTimer !== null) clearTimeout(this.holdTimer)
    this.holdTimer = null
    if (this.held.size === 0) return
    // (not Math.min(...values): a spread of this many arguments overflows the stack)
    let next = Infinity
    for (const until of this.held.values()) if (until < next) next = until
    // (the delay at most setTimeout's range, about 24 days: a longer lease TTL waits in rounds)
    this.holdTimer = setTimeout(() => {
      this.holdTimer = null
      if (this.watcher === null) return
      const now = Date.now()
      const changes: MirrorChange[] = []
      for (const [key, until] of this.held) {
        if (until > now) continue
        this.held.delete(key)
        const cur = this.entries.get(key)
        if (cur === undefined) continue
        this.entries.delete(key)
        changes.push({ type: 'delete', key, prev: cur.value })
      }
      this.stats.held = this.held.size
      if (changes.length > 0) this.log.warn({ prefix: this.prefix, deleted: changes.length }, 'kvstore: keys not republished since etcd lost data; deleted')
      this.emit(changes)
      this.scheduleHeld()
    }, Math.min(Math.max(0, next - Date.now()), 0x7fffffff))
    this.holdTimer.unref()
  }

  private emit (changes: MirrorChange[]): void {
    if (changes.length === 0) return
    for (const fn of this.listeners) fn(changes)
  }
}
