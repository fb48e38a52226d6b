/**
 * Numbers for label sets (identities), endpoints and node-local (CIDR, FQDN) label sets.
 *
 * Every number is reference-counted by its holders (the compiler holds the ones its current
 * snapshot uses). A number nobody holds stays reserved for its key for a grace period -- the
 * same label set coming back within it gets the same number --, then it is released and the
 * lowest released number is handed out first. So pod churn (new pod names and
 * `pod-template-hash` values on every rollout) cannot exhaust the 16-bit spaces, while a
 * number is never reused while the kernel may still hold it.
 *
 * `IdentityAllocator` is the seam for a cluster backend (etcd, as Cilium's kvstore allocator):
 * cluster identities may need a network round trip, so they are allocated ahead of a compile
 * by `prepare` and released remotely by `collect`; endpoint ids and local identities are
 * node-local, as in Cilium, and synchronous.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ERR, StoreError } from './errors.js'
import { LOCAL_IDENTITY_BASE, MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY, type Label } from './types.js'

/** Largest endpoint id: it must fit the 16-bit field of the kernel map keys. */
export const MAX_ENDPOINT_ID = 65535
/** Node-local identities carry Cilium's local scope bit (1 << 24) over a 24-bit number. */
export const MAX_LOCAL_IDENTITY = LOCAL_IDENTITY_BASE + 0xffffff

/**
 * How long an unused number stays reserved: 6 h 30 min. The longest-lived kernel record that
 * carries an identity or endpoint id is an idle established TCP flow's conntrack entry, 6 h
 * (CT_LIFETIME_TCP in the datapath, Cilium's default `bpf-ct-timeout-regular-tcp`), and nothing
 * flushes the entries of a deleted endpoint; the 30 minutes on top are Cilium's identity
 * garbage collection delay (operator `identity-heartbeat-timeout`, 30 min:
 * https://docs.cilium.io/en/stable/cmdref/cilium-operator/). A node would need a new pod every
 * 0.36 s for 6.5 h to fill the endpoint id space; kubelet's default cap is 110 pods.
 */
export const DEFAULT_RELEASE_GRACE_MS = (6 * 60 + 30) * 60 * 1000

export interface IdentityAllocator {
  /**
   * Make sure the label sets have cluster identities before a compile asks for them. A
   * network backend allocates here; the local ones resolve at once.
   */
  prepare (labelSets: readonly (readonly Label[])[], now: number): Promise<void>
  /**
   * Whether `acquireIdentity` can number this label set now, without a `prepare` (a network
   * backend cut off from its store cannot number a set it never had). The compiler gives an
   * endpoint whose set cannot be numbered the reserved `init` identity instead
   * (endpoint-identities.ts).
   */
  isPrepared (labels: readonly Label[]): boolean
  /**
   * Take a reference on the identity of a label set (order-insensitive). Throws
   * WARDEN_ERR_IDENTITY_EXHAUSTED, or WARDEN_ERR_IDENTITY_NOT_PREPARED from a backend that
   * cannot allocate without `prepare`.
   */
  acquireIdentity (labels: readonly Label[], now: number): number
  /** Drop a reference; at zero the number's grace period starts at `now`. */
  releaseIdentity (labels: readonly Label[], now: number): void
  /** Endpoint id (1..65535) of an endpoint key (`namespace/name`); reference-counted likewise. */
  acquireEndpointId (key: string, now: number): number
  releaseEndpointId (key: string, now: number): void
  /** Node-local identity (CIDR and FQDN label sets), from LOCAL_IDENTITY_BASE. */
  acquireLocalIdentity (labels: readonly Label[], now: number): number
  releaseLocalIdentity (labels: readonly Label[], now: number): void
  /** Release the numbers unused for longer than the grace period. */
  collect (now: number): Promise<void>
  /** Persist changes (no-op in memory). */
  flush (): Promise<void>
}

export function labelsKey (labels: readonly Label[]): string {
  return [...labels].sort().join('\n')
}

/** A number's key, value, holders, and since when nobody holds it (null: held). */
export type PoolEntry = [key: string, n: number, unusedSince: number | null]

interface Slot { n: number, refs: number, unusedSince: number | null }

/** Numbers in [min, max] for string keys: reference-counted, released after a grace period, lowest free first. */
export class NumberPool {
  private readonly byKey = new Map<string, Slot>()
  /** Released numbers below `next` (a binary min-heap). */
  private readonly free: number[] = []
  private next: number
  /** Keys in the order they became unused; an entry is stale when the slot changed since. */
  private unused: { key: string, since: number }[] = []
  private unusedHead = 0
  dirty = false

  constructor (readonly name: string, readonly min: number, readonly max: number, readonly graceMs: number) {
    this.next = min
  }

  get size (): number { return this.byKey.size }

  /** The number of a key still reserved for it (held or in its grace period). */
  peek (key: string): number | undefined { return this.byKey.get(key)?.n }

  acquire (key: string, now: number): number {
    const slot = this.byKey.get(key)
    if (slot !== undefined) {
      slot.refs++
      if (slot.unusedSince !== null) { slot.unusedSince = null; this.dirty = true }
      return slot.n
    }
    // Release what is due first, so that the lowest free number is really the lowest.
    this.collect(now)
    const n = this.take()
    if (n === undefined) {
      throw new StoreError(ERR.IDENTITY_EXHAUSTED, `no ${this.name} left in ${this.min}..${this.max}: ${this.held()} in use, ${this.byKey.size - this.held()} in their release grace period`, { pool: this.name, key })
    }
    this.byKey.set(key, { n, refs: 1, unusedSince: null })
    this.dirty = true
    return n
  }

  release (key: string, now: number): void {
    const slot = this.byKey.get(key)
    if (slot === undefined || slot.refs === 0) throw new StoreError(ERR.STATE, `${this.name} for ${JSON.stringify(key)} released more often than acquired`, { pool: this.name, key })
    if (--slot.refs > 0) return
    slot.unusedSince = now
    this.unused.push({ key, since: now })
    this.dirty = true
  }

  /** Release the numbers unused since `now - graceMs` or earlier. Returns how many. */
  collect (now: number): number {
    let released = 0
    while (this.unusedHead < this.unused.length) {
      const { key, since } = this.unused[this.unusedHead]
      if (since + this.graceMs > now) break
      this.unusedHead++
      const slot = this.byKey.get(key)
      if (slot === undefined || slot.refs > 0 || slot.unusedSince !== since) continue // taken again since
      this.byKey.delete(key)
      heapPush(this.free, slot.n)
      released++
    }
    if (this.unusedHead > 1024 && this.unusedHead * 2 > this.unused.length) {
      this.unused = this.unused.slice(this.unusedHead)
      this.unusedHead = 0
    }
    if (released > 0) this.dirty = true
    return released
  }

  /** Everything reserved, for the state file. */
  entries (): PoolEntry[] {
    return [...this.byKey].map(([k, s]) => [k, s.n, s.unusedSince])
  }

  /**
   * Restore reserved numbers (before any acquire). Held ones become unused since `now`: their
   * holders acquire them again on the first compile.
   */
  restore (entries: readonly PoolEntry[], now: number): void {
    const taken = new Set<number>()
    const unused: { key: string, since: number }[] = []
    for (const [key, n, since] of entries) {
      if (this.byKey.has(key) || taken.has(n) || n < this.min || n > this.max) {
        throw new StoreError(ERR.STATE, `${this.name} ${n} for ${JSON.stringify(key)} is out of range or given twice`, { pool: this.name, key, n })
      }
      const s = since ?? now
      this.byKey.set(key, { n, refs: 0, unusedSince: s })
      unused.push({ key, since: s })
      taken.add(n)
      if (n >= this.next) this.next = n + 1
    }
    for (let n = this.min; n < this.next; n++) if (!taken.has(n)) heapPush(this.free, n)
    unused.sort((a, b) => a.since - b.since)
    this.unused = unused
    this.unusedHead = 0
  }

  private held (): number {
    let n = 0
    for (const s of this.byKey.values()) if (s.refs > 0) n++
    return n
  }

  private take (): number | undefined {
    if (this.free.length > 0) return heapPop(this.free)
    if (this.next <= this.max) return this.next++
    return undefined
  }
}

function heapPush (h: number[], v: number): void {
  let i = h.push(v) - 1
  while (i > 0) {
    const p = (i - 1) >> 1
    if (h[p] <= v) break
    h[i] = h[p]
    i = p
  }
  h[i] = v
}

function heapPop (h: number[]): number {
  const top = h[0]
  const last = h.pop() as number
  if (h.length > 0) {
    let i = 0
    for (;;) {
      const l = 2 * i + 1
      if (l >= h.length) break
      const c = l + 1 < h.length && h[l + 1] < h[l] ? l + 1 : l
      if (h[c] >= last) break
      h[i] = h[c]
      i = c
    }
    h[i] = last
  }
  return top
}

export interface AllocatorOptions {
  /** How long an unused number stays reserved (default DEFAULT_RELEASE_GRACE_MS). */
  releaseGraceMs?: number
}

/** Everything in this process: the pools die with it. */
export class MemoryIdentityAllocator implements IdentityAllocator {
  protected readonly identities: NumberPool
  protected readonly endpoints: NumberPool
  protected readonly locals: NumberPool

  constructor (opts: AllocatorOptions = {}) {
    const grace = opts.releaseGraceMs ?? DEFAULT_RELEASE_GRACE_MS
    if (!Number.isFinite(grace) || grace < 0) throw new StoreError(ERR.STATE, `release grace period must be 0 or more milliseconds, got ${grace}`, { releaseGraceMs: grace })
    this.identities = new NumberPool('identity', MIN_CLUSTER_IDENTITY, MAX_CLUSTER_IDENTITY, grace)
    this.endpoints = new NumberPool('endpoint id', 1, MAX_ENDPOINT_ID, grace)
    this.locals = new NumberPool('local identity', LOCAL_IDENTITY_BASE, MAX_LOCAL_IDENTITY, grace)
  }

  async prepare (_labelSets: readonly (readonly Label[])[], _now: number): Promise<void> {}
  isPrepared (_labels: readonly Label[]): boolean { return true }
  acquireIdentity (labels: readonly Label[], now: number): number { return this.identities.acquire(labelsKey(labels), now) }
  releaseIdentity (labels: readonly Label[], now: number): void { this.identities.release(labelsKey(labels), now) }
  acquireEndpointId (key: string, now: number): number { return this.endpoints.acquire(key, now) }
  releaseEndpointId (key: string, now: number): void { this.endpoints.release(key, now) }
  acquireLocalIdentity (labels: readonly Label[], now: number): number { return this.locals.acquire(labelsKey(labels), now) }
  releaseLocalIdentity (labels: readonly Label[], now: number): void { this.locals.release(labelsKey(labels), now) }

  // Numbering here is synchronous; the promises are the allocator interface's, which the
  // cluster allocator needs for etcd.
  collect (now: number): Promise<void> {
    this.identities.collect(now)
    this.endpoints.collect(now)
    this.locals.collect(now)
    return Promise.resolve()
  }

  /** Reserved numbers per pool (held or in grace), for tests and metrics. */
  get sizes (): { identities: number, endpoints: number, localIdentities: number } {
    return { identities: this.identities.size, endpoints: this.endpoints.size, localIdentities: this.locals.size }
  }

  flush (): Promise<void> {
    this.identities.dirty = this.endpoints.dirty = this.locals.dirty = false
    return Promise.resolve()
  }
}

/**
 * `<stateDir>/identities.json`, version 2: every reserved number with the time it became
 * unused (null: in use when written), so a restart neither forgets nor restarts grace periods,
 * and released numbers leave the file:
 *
 *   {"version":2,"identities":[["k8s:app=web\nk8s:io.kubernetes.pod.namespace=shop",256,null],...],
 *    "endpoints":[["shop/web-7d9f-x2x",1,1733390000000],...],"localIdentities":[...]}
 *
 * Version 1 (`{"version":1,"identities":{key:n},"endpoints":{key:n}}`, no release times) is
 * read as all numbers unused since the start: the ones still in use are taken again by the
 * first compile, the others are released one grace period later. It is rewritten as version 2.
 */
interface StateV1 { version: 1, identities: Record<string, number>, endpoints: Record<string, number> }
interface StateV2 { version: 2, identities: PoolEntry[], endpoints: PoolEntry[], localIdentities: PoolEntry[] }

function isEntries (v: unknown): v is PoolEntry[] {
  return Array.isArray(v) && v.every((e) => Array.isArray(e) && e.length === 3 && typeof e[0] === 'string' &&
    Number.isInteger(e[1]) && (e[2] === null || Number.isFinite(e[2])))
}

function isNumberRecord (v: unknown): v is Record<string, number> {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && Object.values(v).every((n) => Number.isInteger(n))
}

/** Persists to `<stateDir>/identities.json` (written to a temp file, then renamed). */
export class FileIdentityAllocator extends MemoryIdentityAllocator {
  private constructor (private readonly path: string, opts: AllocatorOptions) { super(opts) }

  /** `now`: the time restored numbers count as unused from (default: the wall clock). */
  static async open (stateDir: string, opts: AllocatorOptions & { now?: number } = {}): Promise<FileIdentityAllocator> {
    const a = new FileIdentityAllocator(join(stateDir, 'identities.json'), opts)
    const now = opts.now ?? Date.now()
    try {
      await mkdir(stateDir, { recursive: true })
    } catch (err) {
      throw new StoreError(ERR.STATE, `cannot create state dir ${stateDir}: ${(err as Error).message}`, { stateDir })
    }
    let text: string | null = null
    try {
      text = await readFile(a.path, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new StoreError(ERR.STATE, `cannot read ${a.path}: ${(err as Error).message}`, { path: a.path })
    }
    if (text === null) return a
    // Refuse rather than renumber: renumbering would silently change every kernel key.
    const corrupt = (why: string): StoreError => new StoreError(ERR.STATE, `corrupt identity state ${a.path}: ${why}; move it away to start afresh`, { path: a.path })
    let state: unknown
    try { state = JSON.parse(text) } catch (err) { throw corrupt((err as Error).message) }
    const s = state as Partial<StateV1> | Partial<StateV2> | null
    try {
      if (s?.version === 2 && isEntries(s.identities) && isEntries(s.endpoints) && isEntries(s.localIdentities)) {
        a.identities.restore(s.identities, now)
        a.endpoints.restore(s.endpoints, now)
        a.locals.restore(s.localIdentities, now)
      } else if (s?.version === 1 && isNumberRecord(s.identities) && isNumberRecord(s.endpoints)) {
        a.identities.restore(Object.entries(s.identities).map(([k, n]) => [k, n, now]), now)
        a.endpoints.restore(Object.entries(s.endpoints).map(([k, n]) => [k, n, now]), now)
        a.identities.dirty = true // rewrite as version 2 at the first flush
      } else {
        throw corrupt('unexpected shape')
      }
    } catch (err) {
      if (err instanceof StoreError && err.message.startsWith('corrupt')) throw err
      throw corrupt((err as Error).message)
    }
    return a
  }

  /** Writes in order, one at a time (they share the temp file). */
  private writing: Promise<void> = Promise.resolve()

  override async flush (): Promise<void> {
    const next = this.writing.then(async () => await this.write())
    this.writing = next.catch(() => {})
    await next
  }

  private async write (): Promise<void> {
    if (!this.identities.dirty && !this.endpoints.dirty && !this.locals.dirty) return
    const state: StateV2 = { version: 2, identities: this.identities.entries(), endpoints: this.endpoints.entries(), localIdentities: this.locals.entries() }
    // One entry per line: readable, and diffable between two copies.
    const text = '{"version":2,\n' + (['identities', 'endpoints', 'localIdentities'] as const)
      .map((k) => `${JSON.stringify(k)}:[${state[k].map((e) => '\n ' + JSON.stringify(e)).join(',')}\n]`).join(',\n') + '}\n'
    // Clear before writing: a change made while the write is under way marks it dirty again.
    await super.flush()
    const tmp = `${this.path}.${process.pid}.tmp`
    try {
      await writeFile(tmp, text)
      await rename(tmp, this.path)
    } catch (err) {
      this.identities.dirty = true
      throw new StoreError(ERR.STATE, `cannot write ${this.path}: ${(err as Error).message}`, { path: this.path })
    }
  }
}

/**
 * One holder's references: `hold(keys)` takes a reference on the keys it did not hold and
 * drops the ones no longer given. All or nothing: when an acquire throws, the references taken
 * by that call are dropped again and the previous holdings stay.
 */
export class Holdings {
  private held = new Map<string, number>()

  constructor (private readonly acquire: (key: string, now: number) => number, private readonly release: (key: string, now: number) => void) {}

  hold (keys: Iterable<string>, now: number): ReadonlyMap<string, number> {
    const next = new Map<string, number>()
    const taken: string[] = []
    try {
      for (const k of keys) {
        if (next.has(k)) continue
        let n = this.held.get(k)
        if (n === undefined) { n = this.acquire(k, now); taken.push(k) }
        next.set(k, n)
      }
    } catch (err) {
      for (const k of taken) this.release(k, now)
      throw err
    }
    for (const k of this.held.keys()) if (!next.has(k)) this.release(k, now)
    this.held = next
    return next
  }
}
