/**
 * The FQDN cache: per endpoint, per name, the IPv4 addresses learned from DNS answers and
 * when each stops being allowed (Cilium's per-endpoint DNSCache + DNSZombieMappings;
 * docs/dns-proxy.md).
 *
 * - An IP lives for max(TTL, minTtl), capped by maxTtl when set; a newer answer extends it.
 * - At most maxIpsPerName per (endpoint, name): beyond, the one expiring first goes (the oldest).
 * - At most maxNamesPerEndpoint names with live IPs per endpoint: a workload allowed
 *   `matchPattern: "*"` that resolves random names must not grow the cache without bound. A new
 *   name over the cap evicts the names whose IPs expire first (a batch at a time, so the cost
 *   per new name stays constant); their IPs with live connections become zombies.
 * - An IP that expires (or is evicted) while connection tracking still has a connection to it
 *   becomes a zombie: still allowed, re-checked on every GC tick, removed once unused.
 * - The node-wide learned set (what the kernel allows) is the union over endpoints: toFQDNs
 *   selectors are node-global in Cilium.
 *
 * Pure data structure: the clock and the connection check are arguments, nothing here logs.
 */
import { isIPv4 } from 'node:net'
import type { LearnedName } from '../../../policy-store/src/types.js'

export interface CacheOptions {
  minTtlSec: number
  maxTtlSec?: number
  maxIpsPerName: number
  /** Names with live IPs kept per endpoint at most. */
  maxNamesPerEndpoint: number
  /** Zombies kept per endpoint at most (Cilium: --tofqdns-max-deferred-connection-deletes). */
  maxZombiesPerEndpoint: number
  /** What `learned()` reports as the expiry of a zombie: now + this (the next re-check). */
  zombieGraceMs: number
}

interface IpState {
  expiresAt: number
  addedAt: number
  zombie: boolean
}

/** One change, for the caller's log line and counters. */
export interface IpEvent {
  endpoint: string
  name: string
  ip: string
  /** Absolute expiry that applied. */
  expiresAt: number
}

export interface AddResult {
  /** IPs that no endpoint had for this name before (the kernel does not allow them yet). */
  fresh: IpEvent[]
  evicted: IpEvent[]
  zombified: IpEvent[]
}

function newAddResult (): AddResult { return { fresh: [], evicted: [], zombified: [] } }
/** Frozen, so a caller that pushed into it would throw rather than corrupt every later result. */
const NONE: IpEvent[] = []
Object.freeze(NONE)
const NO_CHANGE: AddResult = Object.freeze({ fresh: NONE, evicted: NONE, zombified: NONE })

export interface GcResult {
  expired: IpEvent[]
  zombified: IpEvent[]
}

/** On-disk form (stateDir/dns-cache.json), versioned. */
export interface PersistedCache {
  version: 1
  savedAt: number
  entries: { endpoint: string, name: string, ips: { ip: string, expiresAt: number, addedAt: number, zombie: boolean }[] }[]
}

export class FqdnCache {
  private readonly opts: CacheOptions
  /** endpoint key (`namespace/name`) -> name -> ip -> state */
  private readonly eps = new Map<string, Map<string, Map<string, IpState>>>()
  /**
   * Counts what `add` changed beyond an expiry (an IP new to its endpoint and name, a zombie
   * revived): the caller persists such changes soon and mere refreshes late (state.ts).
   */
  changes = 0
  /** Names evicted by the per-endpoint cap, for the counter. */
  namesEvicted = 0

  constructor (opts: CacheOptions) {
    this.opts = opts
  }

  /** How long (ms) an answer with this TTL keeps its IPs. */
  lifetimeMs (ttlSec: number): number {
    let s = Math.max(ttlSec, this.opts.minTtlSec)
    if (this.opts.maxTtlSec !== undefined) s = Math.min(s, this.opts.maxTtlSec)
    return s * 1000
  }

  /** Does any endpoint hold this (name, ip), zombie or not? */
  private nodeHas (name: string, ip: string): boolean {
    for (const names of this.eps.values()) {
      const ips = names.get(name)
      if (ips !== undefined && ips.has(ip)) return true
    }
    return false
  }

  /**
   * Learn `ips` for `name` at endpoint `endpoint`, each with its own TTL (seconds). Most answers
   * only refresh known IPs: those get the shared, frozen NO_CHANGE instead of a new result.
   */
  add (endpoint: string, name: string, ips: readonly { ip: string, ttl: number }[], now: number,
    hasConnection: (ip: string) => boolean): AddResult {
    let res: AddResult | null = null
    let names = this.eps.get(endpoint)
    if (names === undefined) { names = new Map(); this.eps.set(endpoint, names) }
    let map = names.get(name)
    if (map === undefined) {
      if (names.size >= this.opts.maxNamesPerEndpoint) res = this.evictNames(endpoint, names, hasConnection, res)
      map = new Map()
      names.set(name, map)
    }
    for (const { ip, ttl } of ips) {
      const expiresAt = now + this.lifetimeMs(ttl)
      const st = map.get(ip)
      if (st !== undefined) {
        if (expiresAt > st.expiresAt || st.zombie) st.expiresAt = Math.max(st.expiresAt, expiresAt)
        if (st.zombie) this.changes++
        st.zombie = false
        continue
      }
      if (!this.nodeHas(name, ip)) (res ??= newAddResult()).fresh.push({ endpoint, name, ip, expiresAt })
      map.set(ip, { expiresAt, addedAt: now, zombie: false })
      this.changes++
    }
    return this.enforceCap(endpoint, name, map, hasConnection, res) ?? NO_CHANGE
  }

  private enforceCap (endpoint: string, name: string, map: Map<string, IpState>,
    hasConnection: (ip: string) => boolean, res0: AddResult | null): AddResult | null {
    // Live IPs are at most all IPs: nothing to count (and no iterator to make) below the cap.
    if (map.size <= this.opts.maxIpsPerName) return res0
    let live = 0
    for (const st of map.values()) if (!st.zombie) live++
    if (live <= this.opts.maxIpsPerName) return res0
    const res = res0 ?? newAddResult()
    const order = [...map].filter(([, st]) => !st.zombie)
      .sort((a, b) => a[1].expiresAt - b[1].expiresAt || a[1].addedAt - b[1].addedAt)
    for (let i = 0; i < live - this.opts.maxIpsPerName; i++) {
      const [ip, st] = order[i]
      const ev = { endpoint, name, ip, expiresAt: st.expiresAt }
      if (hasConnection(ip)) { st.zombie = true; res.zombified.push(ev) } else { map.delete(ip); res.evicted.push(ev) }
      this.changes++
    }
    this.capZombies(endpoint, res.evicted)
    return res
  }

  /**
   * Make room for a new name: when the endpoint's names with live IPs are at the cap, evict
   * those whose IPs expire first, an eighth of the cap at once (at least one). Zombie-only names
   * do not count: zombies have their own cap.
   */
  private evictNames (endpoint: string, names: Map<string, Map<string, IpState>>,
    hasConnection: (ip: string) => boolean, res0: AddResult | null): AddResult | null {
    const live: Array<[string, number]> = []
    for (const [name, ips] of names) {
      let last = 0
      for (const st of ips.values()) if (!st.zombie && st.expiresAt > last) last = st.expiresAt
      if (last > 0) live.push([name, last])
    }
    const cap = this.opts.maxNamesPerEndpoint
    if (live.length < cap) return res0
    const res = res0 ?? newAddResult()
    live.sort((a, b) => a[1] - b[1])
    const n = live.length - cap + Math.max(1, cap >> 3)
    for (let i = 0; i < n && i < live.length; i++) {
      const name = live[i][0]
      const ips = names.get(name) as Map<string, IpState>
      for (const [ip, st] of ips) {
        if (st.zombie) continue
        const ev = { endpoint, name, ip, expiresAt: st.expiresAt }
        if (hasConnection(ip)) { st.zombie = true; res.zombified.push(ev) } else { ips.delete(ip); res.evicted.push(ev) }
      }
      if (ips.size === 0) names.delete(name)
      this.changes++
      this.namesEvicted++
    }
    this.capZombies(endpoint, res.evicted)
    return res
  }

  /** Keep at most maxZombiesPerEndpoint zombies; the ones that expired first go. */
  private capZombies (endpoint: string, removed: IpEvent[]): void {
    const names = this.eps.get(endpoint)
    if (names === undefined) return
    const zs: [string, string, IpState][] = []
    for (const [name, ips] of names) for (const [ip, st] of ips) if (st.zombie) zs.push([name, ip, st])
    if (zs.length <= this.opts.maxZombiesPerEndpoint) return
    zs.sort((a, b) => a[2].expiresAt - b[2].expiresAt)
    for (let i = 0; i < zs.length - this.opts.maxZombiesPerEndpoint; i++) {
      const [name, ip, st] = zs[i]
      names.get(name)?.delete(ip)
      removed.push({ endpoint, name, ip, expiresAt: st.expiresAt })
    }
  }

  /**
   * Expire what is due at `now`: an IP past its expiry with a live connection becomes a
   * zombie, otherwise it goes; a zombie without connections goes.
   */
  gc (now: number, hasConnection: (ip: string) => boolean): GcResult {
    const res: GcResult = { expired: [], zombified: [] }
    for (const [endpoint, names] of this.eps) {
      for (const [name, ips] of names) {
        for (const [ip, st] of ips) {
          if (!st.zombie && st.expiresAt > now) continue
          const ev = { endpoint, name, ip, expiresAt: st.expiresAt }
          if (hasConnection(ip)) {
            if (!st.zombie) { st.zombie = true; res.zombified.push(ev) }
          } else {
            ips.delete(ip)
            res.expired.push(ev)
          }
        }
        if (ips.size === 0) names.delete(name)
      }
      if (res.zombified.length > 0) this.capZombies(endpoint, res.expired)
      if (names.size === 0) this.eps.delete(endpoint)
    }
    return res
  }

  /**
   * The node-wide learned set: one entry per name, IPs of every endpoint, `expiresAt` the
   * latest expiry among them (a zombie counts as now + zombieGraceMs: it is allowed at least
   * until the next re-check). Sorted by name, IPs sorted, so equal sets compare equal.
   *
   * `leaseMs`: what is pushed to the policy store is a lease, at least now + leaseMs. The cache
   * decides when an IP expires (its gc pushes the set without it); the store's own expiry only
   * catches a proxy that stopped pushing. Without the lease, an IP refreshed by answers since the
   * last push would carry its first expiry into the store, and the next recompile (any policy or
   * endpoint change) would drop it from the kernel while the workload still uses it.
   */
  learned (now: number, leaseMs = 0): LearnedName[] {
    const byName = new Map<string, { ips: Set<string>, expiresAt: number }>()
    for (const names of this.eps.values()) {
      for (const [name, ips] of names) {
        let e = byName.get(name)
        if (e === undefined) { e = { ips: new Set(), expiresAt: 0 }; byName.set(name, e) }
        for (const [ip, st] of ips) {
          e.ips.add(ip)
          e.expiresAt = Math.max(e.expiresAt, st.zombie ? now + this.opts.zombieGraceMs : st.expiresAt, now + leaseMs)
        }
      }
    }
    return [...byName].filter(([, e]) => e.ips.size > 0).sort((a, b) => a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)
      .map(([name, e]) => ({ name, ipv4: [...e.ips].sort(), expiresAt: e.expiresAt }))
  }

  /** Counts for metrics. */
  counts (): { names: number, ips: number, zombies: number } {
    let names = 0; let ips = 0; let zombies = 0
    for (const n of this.eps.values()) {
      names += n.size
      for (const m of n.values()) for (const st of m.values()) { if (st.zombie) zombies++; else ips++ }
    }
    return { names, ips, zombies }
  }

  toPersisted (now: number): PersistedCache {
    const entries: PersistedCache['entries'] = []
    for (const [endpoint, names] of this.eps) {
      for (const [name, ips] of names) {
        entries.push({ endpoint, name, ips: [...ips].map(([ip, st]) => ({ ip, ...st })) })
      }
    }
    return { version: 1, savedAt: now, entries }
  }

  /**
   * Restore a persisted cache (entries that are not well-formed are skipped and counted).
   * Expiry is applied by the caller's next gc(), so expired IPs with live connections survive
   * the restart as zombies.
   */
  restore (data: unknown): { restored: number, skipped: number } {
    let restored = 0; let skipped = 0
    const d = data as Partial<PersistedCache> | null
    if (d === null || typeof d !== 'object' || d.version !== 1 || !Array.isArray(d.entries)) return { restored, skipped: 1 }
    for (const e of d.entries) {
      if (e === null || typeof e !== 'object' || typeof e.endpoint !== 'string' || typeof e.name !== 'string' ||
        !e.name.endsWith('.') || !Array.isArray(e.ips)) { skipped++; continue }
      let names = this.eps.get(e.endpoint)
      if (names === undefined) { names = new Map(); this.eps.set(e.endpoint, names) }
      let map = names.get(e.name)
      if (map === undefined) { map = new Map(); names.set(e.name, map) }
      for (const s of e.ips) {
        if (s === null || typeof s !== 'object' || typeof s.ip !== 'string' || !isIPv4(s.ip) ||
          !Number.isFinite(s.expiresAt) || !Number.isFinite(s.addedAt)) { skipped++; continue }
        map.set(s.ip, { expiresAt: s.expiresAt, addedAt: s.addedAt, zombie: s.zombie === true })
        restored++
      }
      if (map.size === 0) names.delete(e.name)
      if (names.size === 0) this.eps.delete(e.endpoint)
    }
    return { restored, skipped }
  }
}
