/**
 * Cluster identities from etcd, as Cilium's kvstore allocator numbers them
 * (pkg/allocator/allocator.go with pkg/kvstore/allocator): one label set gets one number on
 * every node.
 *
 *   - `id/<ID>` holds the labels (the master key, no lease); `value/<labels>/<node>` holds the
 *     ID under each referencing node's lease (the node's reference).
 *   - Allocating a label set: if the copy of `id/` knows it, add this node's reference in a
 *     transaction that checks `id/<ID>` still holds the labels. Otherwise take the label set's
 *     lock (`locks/<labels>`), look for another node's reference, and only then create
 *     `id/<N>` if absent (lowest number not known to be taken) together with the reference.
 *     Two nodes asking at the same moment serialise on the lock: the second finds the first's.
 *   - An ID no node references any more (no `value/<labels>/...` key) is deleted after
 *     `gcGraceMs`, under the same lock and only if `id/<ID>` did not change meanwhile.
 *
 * `prepare` does the network part ahead of a compile; `acquireIdentity` only reads what
 * `prepare` (or the persisted state) put in memory, so a compile never waits on etcd. A label
 * set `prepare` cannot number (etcd away) stays unprepared, and the compiler gives its new
 * endpoints the reserved `init` identity, as Cilium does while its kvstore is unavailable. Endpoint
 * ids and local (CIDR, FQDN) identities stay node-local, in the wrapped local allocator.
 */
import type { Logger } from 'pino'
import { DEFAULT_RELEASE_GRACE_MS, ERR as STORE_ERR, MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY, StoreError, type IdentityAllocator, type Label } from '../../policy-store/src/index.js'
import type { Connection, Session } from './connection.js'
import { ClusterError, ERR } from './errors.js'
import { formatLabelsKey, idKey, lockKey, parseIdKey, parseValueKey, valueKey, valuePrefix, VALUE_PREFIX } from './keys.js'
import { lockPath } from './lock.js'
import type { Mirror, MirrorChange } from './mirror.js'

export interface ClusterAllocatorOptions {
  conn: Connection
  /** The copy of `identities/v1/id/`. */
  ids: Mirror
  /** This node's suffix in reference keys: its IPv4 address, as Cilium's GetNodeSuffix. */
  nodeSuffix: string
  /** Endpoint ids and local identities (node-local). */
  local: IdentityAllocator
  /** How long this node keeps its reference to an identity none of its endpoints uses (default DEFAULT_RELEASE_GRACE_MS). */
  releaseGraceMs?: number
  /** How long an ID nobody references stays in etcd before it is deleted (default DEFAULT_RELEASE_GRACE_MS). */
  gcGraceMs?: number
  /**
   * Least time between two garbage collections (default 60 s): `collect` runs after every
   * policy reload, and a collection lists every reference in etcd.
   */
  gcIntervalMs?: number
  /** How long `prepare` waits for etcd before giving up on a new label set (default 10 s). */
  prepareTimeoutMs?: number
  logger: Logger
}

interface Held { id: number, refs: number, unusedSince: number | null }

/** Allocations one `prepare` runs at once. */
const ALLOCATION_CONCURRENCY = 8

/** A held identity in the persisted state: [labels key, ID, unused since (null: in use)]. */
export type HeldEntry = [labelsKey: string, id: number, unusedSince: number | null]

export interface AllocatorStats { allocations: number, allocationConflicts: number, allocationFailures: number, collected: number, reconciled: number }

export class ClusterIdentityAllocator implements IdentityAllocator {
  /** This node's identities (it has a reference in etcd, or will at the next session). */
  private readonly held = new Map<string, Held>()
  /** labels key -> ID, from the copy of `id/`. */
  private readonly byLabels = new Map<string, number>()
  /** ID -> labels key, from the copy of `id/`. */
  private readonly byId = new Map<number, string>()
  /** IDs seen unreferenced by the garbage collector, since when. */
  private readonly unreferenced = new Map<number, number>()
  private readonly releaseGrace: number
  private readonly gcGrace: number
  private readonly prepareTimeout: number
  private readonly gcInterval: number
  private lastGc = -Infinity
  private readonly log: Logger
  readonly stats: AllocatorStats = { allocations: 0, allocationConflicts: 0, allocationFailures: 0, collected: 0, reconciled: 0 }
  /** Label sets whose last allocation failed (logged once until one succeeds). */
  private readonly failing = new Set<string>()
  /** Allocations in flight per labels key: a second `prepare` of the same set waits for the first. */
  private readonly inflight = new Map<string, Promise<number>>()

  constructor (private readonly opts: ClusterAllocatorOptions) {
    this.releaseGrace = opts.releaseGraceMs ?? DEFAULT_RELEASE_GRACE_MS
    this.gcGrace = opts.gcGraceMs ?? DEFAULT_RELEASE_GRACE_MS
    this.prepareTimeout = opts.prepareTimeoutMs ?? 10000
    this.gcInterval = opts.gcIntervalMs ?? 60_000
    this.log = opts.logger
    for (const [key, e] of opts.ids.entries) this.index({ type: 'put', key, value: e.value, prev: undefined })
    opts.ids.onChange((changes) => { for (const c of changes) this.index(c) })
    opts.conn.addHook({ onSession: async (s) => await this.reconcile(s) })
  }

  private index (c: MirrorChange): void {
    let id: number
    try { id = parseIdKey(c.key) } catch (err) { this.log.warn({ key: c.key, err: (err as Error).message }, 'kvstore: skipping a malformed identity key'); return }
    const old = this.byId.get(id)
    if (old !== undefined && this.byLabels.get(old) === id) this.byLabels.delete(old)
    if (c.type === 'delete') { this.byId.delete(id); return }
    this.byId.set(id, c.value)
    this.byLabels.set(c.value, id)
  }

  /** The cluster identities known (from `id/`): ID -> labels key. */
  known (): ReadonlyMap<number, string> { return this.byId }

  async prepare (labelSets: readonly (readonly Label[])[], now: number): Promise<void> {
    const todo = new Map<string, readonly Label[]>()
    for (const ls of labelSets) {
      const key = formatLabelsKey(ls)
      if (!this.held.has(key)) todo.set(key, ls)
    }
    // A few at a time: a burst of new label sets (a node starting with many new pods) must not
    // become a burst of lock polls that pushes etcd past the call deadlines.
    const keys = [...todo.keys()]
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < keys.length) {
        const key = keys[next++]
        let p = this.inflight.get(key)
        if (p === undefined) {
          p = this.allocate(key).finally(() => this.inflight.delete(key))
          this.inflight.set(key, p)
        }
        let id: number
        try {
          id = await p
        } catch (err) {
          // Not numbered this time: the endpoints that need it get the `init` identity (or keep
          // the one they had) until a later prepare succeeds -- at the next session, the next
          // policy change, or the store's retry.
          // Logged and counted once per label set until it is numbered: the store asks again
          // every few seconds while etcd is away.
          if (!this.failing.has(key)) {
            this.failing.add(key)
            this.stats.allocationFailures++
            const e = err as Error & { code?: string }
            this.log.warn({ labels: key, code: e.code, err: e.message }, 'kvstore: cannot number a label set now; its new endpoints get the init identity until etcd answers')
          }
          continue
        }
        this.failing.delete(key)
        if (!this.held.has(key)) this.held.set(key, { id, refs: 0, unusedSince: now })
      }
    }
    await Promise.all(Array.from({ length: Math.min(ALLOCATION_CONCURRENCY, keys.length) }, worker))
  }

  /** One label set's ID, with this node's reference written. */
  private async allocate (key: string): Promise<number> {
    // Waits only for a connection attempt under way (the agent just started, or etcd is coming
    // back): while etcd is known to be away, a compile is not held up by a wait per label set.
    if (this.opts.conn.live === null && !(await this.opts.conn.waitAttempt(this.prepareTimeout))) {
      throw new ClusterError(ERR.KVSTORE_UNAVAILABLE, `cannot allocate an identity for ${key}: etcd is not connected`, { labels: key })
    }
    return await this.opts.conn.withSession(async (s) => {
      const ref = valueKey(key, this.opts.nodeSuffix)
      // Known already: add our reference.
      const known = this.byLabels.get(key)
      if (known !== undefined && await this.reference(s, key, known)) return known
      const unlock = await lockPath(s, lockKey(key), this.prepareTimeout)
      try {
        // Under the lock: another node's reference gives the ID.
        const refs = await s.kv.list(valuePrefix(key))
        for (const kv of refs.kvs) {
          const id = Number(kv.value)
          if (Number.isInteger(id) && await this.reference(s, key, id)) return id
        }
        const again = this.byLabels.get(key)
        if (again !== undefined && await this.reference(s, key, again)) return again
        // New: a number nobody is known to hold, picked at random as Cilium's selectAvailableID
        // does, so that nodes allocating different label sets at once rarely pick the same one;
        // create-if-absent, else another.
        const taken = new Set<number>(this.byId.keys())
        for (const h of this.held.values()) taken.add(h.id)
        const size = MAX_CLUSTER_IDENTITY - MIN_CLUSTER_IDENTITY + 1
        for (let attempt = 0; attempt < 64 && taken.size < size; attempt++) {
          let n = MIN_CLUSTER_IDENTITY + Math.floor(Math.random() * size)
          while (taken.has(n)) n = n === MAX_CLUSTER_IDENTITY ? MIN_CLUSTER_IDENTITY : n + 1
          if (await s.kv.createIfAbsent(idKey(n), [{ key: idKey(n), value: key }, { key: ref, value: String(n), lease: s.lease }])) {
            this.opts.conn.adopt(ref, String(n))
            this.stats.allocations++
            this.log.info({ identity: n, labels: key }, 'kvstore: identity allocated')
            return n
          }
          this.stats.allocationConflicts++
          taken.add(n) // another node created it meanwhile, for other labels
        }
        if (taken.size >= size) throw new StoreError(STORE_ERR.IDENTITY_EXHAUSTED, `no cluster identity left for ${key} in ${MIN_CLUSTER_IDENTITY}..${MAX_CLUSTER_IDENTITY}`, { labels: key })
        throw new ClusterError(ERR.IDENTITY_CONTENTION, `no free identity found for ${key} in 64 attempts (contention); retried at the next compile`, { labels: key })
      } finally {
        await unlock()
      }
    })
  }

  /** Write this node's reference to `id` if `id/<id>` holds these labels (Cilium's master key protection). */
  private async reference (s: Session, key: string, id: number): Promise<boolean> {
    const ref = valueKey(key, this.opts.nodeSuffix)
    if (!await s.kv.putIfValue(idKey(id), key, [{ key: ref, value: String(id), lease: s.lease }])) return false
    this.opts.conn.adopt(ref, String(id))
    return true
  }

  /**
   * A new session: make sure etcd has every identity this node holds, with its reference (after
   * an etcd restored empty, or a start from the persisted state). An ID another node took for
   * other labels meanwhile is a conflict: logged and counted, the local number stays in force.
   */
  private async reconcile (s: Session): Promise<void> {
    for (const [key, h] of this.held) {
      if (await this.reference(s, key, h.id)) continue
      const ref = valueKey(key, this.opts.nodeSuffix)
      const puts = [{ key: ref, value: String(h.id), lease: s.lease }]
      if (await s.kv.createIfAbsent(idKey(h.id), [{ key: idKey(h.id), value: key }, ...puts])) {
        this.stats.reconciled++
        this.opts.conn.adopt(ref, String(h.id))
        this.log.info({ identity: h.id, labels: key }, 'kvstore: identity republished')
        continue
      }
      this.stats.allocationConflicts++
      this.log.error({ identity: h.id, labels: key, code: ERR.KVSTORE_FORMAT }, 'kvstore: identity held by this node was taken for other labels while etcd was away; keeping the local number')
    }
  }

  isPrepared (labels: readonly Label[]): boolean { return this.held.has(formatLabelsKey(labels)) }

  acquireIdentity (labels: readonly Label[], _now: number): number {
    const key = formatLabelsKey(labels)
    const h = this.held.get(key)
    if (h === undefined) throw new StoreError(STORE_ERR.IDENTITY_NOT_PREPARED, `identity for ${key} was not prepared (etcd unreachable?)`, { labels: key })
    h.refs++
    h.unusedSince = null
    return h.id
  }

  releaseIdentity (labels: readonly Label[], now: number): void {
    const h = this.held.get(formatLabelsKey(labels))
    if (h === undefined || h.refs === 0) throw new StoreError(STORE_ERR.STATE, `identity for ${labels.join(',')} released more often than acquired`, {})
    if (--h.refs === 0) h.unusedSince = now
  }

  acquireEndpointId (key: string, now: number): number { return this.opts.local.acquireEndpointId(key, now) }
  releaseEndpointId (key: string, now: number): void { this.opts.local.releaseEndpointId(key, now) }
  acquireLocalIdentity (labels: readonly Label[], now: number): number { return this.opts.local.acquireLocalIdentity(labels, now) }
  releaseLocalIdentity (labels: readonly Label[], now: number): void { this.opts.local.releaseLocalIdentity(labels, now) }

  /** Drop this node's references unused past their grace, then collect unreferenced IDs. */
  async collect (now: number): Promise<void> {
    for (const [key, h] of this.held) {
      if (h.refs > 0 || h.unusedSince === null || h.unusedSince + this.releaseGrace > now) continue
      this.held.delete(key)
      this.opts.conn.disown(valueKey(key, this.opts.nodeSuffix))
    }
    await this.opts.local.collect(now)
    await this.opts.conn.drain()
    if (this.opts.conn.live !== null && now - this.lastGc >= this.gcInterval) {
      this.lastGc = now
      await this.gc(now).catch((err: Error) => this.log.warn({ err: err.message }, 'kvstore: identity garbage collection failed; retried at the next one'))
    }
  }

  /** Delete the IDs no node has referenced for `gcGraceMs` (Cilium's allocator GC). */
  async gc (now: number): Promise<number> {
    return await this.opts.conn.withSession(async (s) => {
      const refs = await s.kv.list(VALUE_PREFIX)
      const referenced = new Set<string>()
      for (const kv of refs.kvs) {
        try { referenced.add(parseValueKey(kv.key).labelsKey) } catch { /* not ours to judge */ }
      }
      let deleted = 0
      for (const [id, key] of [...this.byId]) {
        if (referenced.has(key)) { this.unreferenced.delete(id); continue }
        const since = this.unreferenced.get(id)
        if (since === undefined) { this.unreferenced.set(id, now); continue }
        if (since + this.gcGrace > now) continue
        const unlock = await lockPath(s, lockKey(key), this.prepareTimeout)
        try {
          const still = await s.kv.list(valuePrefix(key))
          const cur = await s.kv.get(idKey(id))
          if (still.kvs.length === 0 && cur.value === key && await s.kv.deleteIfUnchanged(idKey(id), cur.modRevision)) {
            deleted++
            this.unreferenced.delete(id)
            this.log.info({ identity: id, labels: key }, 'kvstore: unreferenced identity collected')
          }
        } finally {
          await unlock()
        }
      }
      for (const id of this.unreferenced.keys()) if (!this.byId.has(id)) this.unreferenced.delete(id)
      this.stats.collected += deleted
      return deleted
    })
  }

  async flush (): Promise<void> { await this.opts.local.flush() }

  /** This node's identities, for the persisted cluster state. */
  heldEntries (): HeldEntry[] { return [...this.held].map(([k, h]) => [k, h.id, h.refs > 0 ? null : h.unusedSince]) }

  /** Restore held identities (before any acquire): they are republished at the next session. */
  restoreHeld (entries: readonly HeldEntry[], now: number): void {
    for (const [key, id, since] of entries) {
      if (!Number.isInteger(id) || id < MIN_CLUSTER_IDENTITY || id > MAX_CLUSTER_IDENTITY) continue
      this.held.set(key, { id, refs: 0, unusedSince: since ?? now })
    }
  }
}
