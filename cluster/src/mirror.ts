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
 */
import type { Watcher, IKeyValue } from 'etcd3'
import type { Logger } from 'pino'
import type { Session } from './connection.js'

export interface MirrorEntry { value: string, modRevision: number }
export type MirrorChange = { type: 'put', key: string, value: string, prev: string | undefined } | { type: 'delete', key: string, prev: string }

export interface MirrorStats { watchEvents: number, relists: number, resumes: number, dropped: number, oversized: number }

/**
 * The largest key plus value copied, in bytes. A record of the kinds watched (an identity's
 * labels, an endpoint's IPIdentityPair with its named ports, a node) is well under it; etcd would
 * take a megabyte. Larger records are treated as absent, so the copies' memory is bounded by
 * their key counts times this, never by what a peer writes.
 */
export const MAX_RECORD_BYTES = 16 * 1024

export class Mirror {
  readonly entries = new Map<string, MirrorEntry>()
  /** The etcd revision this copy is complete up to (0: never listed). */
  revision = 0
  private watcher: Watcher | null = null
  private readonly listeners: ((changes: MirrorChange[]) => void)[] = []
  readonly stats: MirrorStats = { watchEvents: 0, relists: 0, resumes: 0, dropped: 0, oversized: 0 }

  /** `maxEntries`: keys kept at most; a new key beyond is not copied (counted in `dropped`). */
  constructor (readonly prefix: string, private readonly log: Logger, private readonly maxEntries = Infinity, private readonly maxRecordBytes = MAX_RECORD_BYTES) {}

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
    if (s.continuous && this.revision > 0 && s.revision >= this.revision) {
      this.stats.resumes++
      try {
        await this.watch(s, this.revision + 1)
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

  private async relist (s: Session): Promise<void> {
    this.stats.relists++
    const list = await s.kv.list(this.prefix)
    const seen = new Set<string>()
    const changes: MirrorChange[] = []
    for (const kv of list.kvs) {
      if (this.oversized(kv.key, Buffer.byteLength(kv.key) + Buffer.byteLength(kv.value))) continue // absent: deleted below if copied before
      seen.add(kv.key)
      if (this.full(kv.key)) continue
      const cur = this.entries.get(kv.key)
      if (cur?.value !== kv.value) changes.push({ type: 'put', key: kv.key, value: kv.value, prev: cur?.value })
      this.entries.set(kv.key, { value: kv.value, modRevision: kv.modRevision })
    }
    for (const [key, cur] of this.entries) {
      if (seen.has(key)) continue
      this.entries.delete(key)
      changes.push({ type: 'delete', key, prev: cur.value })
    }
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
        const old = this.entries.get(key)
        if (old !== undefined) { this.entries.delete(key); batch.push({ type: 'delete', key, prev: old.value }) }
        return
      }
      const value = kv.value.toString()
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

  private emit (changes: MirrorChange[]): void {
    if (changes.length === 0) return
    for (const fn of this.listeners) fn(changes)
  }
}
