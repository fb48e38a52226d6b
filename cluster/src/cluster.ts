/**
 * The cluster store: what one agent shares with the others through etcd, in Cilium's kvstore
 * layout (keys.ts).
 *
 *   publishes, under its lease   its node record, its endpoints' ipcache entries, its identity
 *                                references (allocator.ts)
 *   watches                      `identities/v1/id/`, `ip/v1/default/`, `nodes/v1/<cluster>/`
 *   hands the policy store       a RemoteState: every cluster identity with its labels, other
 *                                nodes' pods' addresses with their identities and named ports,
 *                                other nodes' addresses as `remote-node`
 *
 * The copies are persisted in the state directory (`cluster.json`), so an agent that starts
 * while etcd is unreachable enforces the cluster it saw last, and keeps its identity numbers.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY, RESERVED, type ContainerPort, type Endpoint, type IdentityAllocator, type IpcacheEntry, type Label, type RemoteState } from '../../policy-store/src/index.js'
import { ClusterIdentityAllocator, type HeldEntry } from './allocator.js'
import { Connection, type ConnectionHealth, type ConnectionOptions } from './connection.js'
import { ClusterError, ERR } from './errors.js'
import {
  formatIpcacheValue, formatNodeValue, ID_PREFIX, IPCACHE_PREFIX, ipcacheKey, nodeKey, nodesPrefix, parseIdKey,
  markerKey, parseIpcacheValue, parseLabelsKey, parseNodeValue
} from './keys.js'
import { Mirror, type MirrorChange } from './mirror.js'
import { RemoteIpcache } from './remote-ipcache.js'

/**
 * Kernel ipcache entries kept for this node itself: its endpoints (at most 4,096, the endpoint
 * map's size), its own addresses, and the CIDR and FQDN identities its policies and DNS answers
 * create. The rest of the map is the other nodes'.
 */
export const IPCACHE_LOCAL_RESERVE = 16384

/**
 * Other nodes' entries (pods and node addresses) kept at most with a kernel ipcache of
 * `ipcacheMaxEntries`. Entries beyond are not enforced by identity (they stay `world`), warned
 * about and counted: memory and map use are bounded here, by configuration, not by what the
 * other nodes publish.
 */
export function remoteEntriesCap (ipcacheMaxEntries: number): number {
  return Math.max(0, ipcacheMaxEntries - IPCACHE_LOCAL_RESERVE)
}

/** The cap with the datapath's default ipcache (Cilium's 512,000 entries). */
export const DEFAULT_MAX_REMOTE_ENTRIES = remoteEntriesCap(512000)

/** Entries of `cluster.json` serialised between two yields to the event loop. */
const PERSIST_SLICE = 5000

/** Cilium's `--kvstore-lease-ttl` default (pkg/defaults: KVstoreLeaseTTL, 15 minutes). */
export const DEFAULT_LEASE_TTL_SECONDS = 15 * 60

export interface ClusterOptions {
  /** etcd client URLs (`http(s)://host:port`, see etcd-config.ts). */
  urls: string[]
  /** TLS files and etcd credentials (etcd-config.ts); the URLs are https with `tls`. */
  tls?: ConnectionOptions['tls']
  auth?: ConnectionOptions['auth']
  configFile?: string
  nodeName: string
  /** This node's IPv4 address: node record, HostIP of its ipcache entries, reference suffix. */
  nodeIP: string
  podCidr?: string
  clusterName: string
  leaseTtlSeconds?: number
  /** `cluster.json` goes here. */
  stateDir: string
  /** Endpoint ids and local identities (the node-local allocator). */
  local: IdentityAllocator
  releaseGraceMs?: number
  gcGraceMs?: number
  probeMs?: number
  timeoutMs?: number
  backoffMinMs?: number
  backoffMaxMs?: number
  prepareTimeoutMs?: number
  /** Other nodes' ipcache entries (pods and node addresses) kept at most (default DEFAULT_MAX_REMOTE_ENTRIES). */
  maxRemoteEntries?: number
  logger: Logger
}

export interface ClusterStatus extends ConnectionHealth {
  node: string
  cluster: string
  kvstore: string[]
  identities: number
  remoteEndpoints: number
  remoteNodes: number
  remoteEntriesDropped: number
  outages: number
}

/**
 * `<stateDir>/cluster.json`, version 1: the watched copies and this node's identities, one
 * entry per line:
 *   {"version":1,"node":"node-a","held":[["k8s:app=web;...",256,null]],"ids":[[key,value]],"ips":[...],"nodes":[...]}
 */
/** `marker`: the revision this node last wrote its marker at (connection.ts), so a restart still tells an etcd that lost data. */
interface StateV1 { version: 1, node: string, marker?: number | null, held: HeldEntry[], ids: [string, string][], ips: [string, string][], nodes: [string, string][] }

export class ClusterStore {
  readonly conn: Connection
  readonly allocator: ClusterIdentityAllocator
  private readonly ids: Mirror
  private readonly ips: Mirror
  private readonly nodes: Mirror
  private readonly log: Logger
  private readonly statePath: string
  /** The remote ipcache entries by etcd key (objects reused while unchanged). */
  private readonly remoteIps = new Map<string, IpcacheEntry>()
  private readonly remoteNodes = new Map<string, IpcacheEntry[]>()
  /** Kernel ipcache entries those make: one per pod key, one per node address. */
  private remoteEntries = 0
  /** Those entries by prefix, the winner of each. */
  private readonly byPrefix = new RemoteIpcache()
  /** What each remote entry contributes to its identity's named ports, and their count per identity. */
  private readonly portsByKey = new Map<string, { identity: number, ports: readonly ContainerPort[] }>()
  private readonly portCounts = new Map<number, Map<string, { port: ContainerPort, n: number }>>()
  /** Identities whose named ports changed since the last RemoteState. */
  private readonly portsDirty = new Set<number>()
  private remote: RemoteState = { identities: new Map(), ipcache: this.byPrefix.current, namedPorts: new Map() }
  private idsDirty = true
  private ipDirty = true
  private emitScheduled = false
  private readonly listeners: ((r: RemoteState) => void)[] = []
  private published = new Map<string, string>()
  private persistTimer: NodeJS.Timeout | null = null
  private lastPersistMs = 0
  private persisting: Promise<void> = Promise.resolve()
  private closed = false
  readonly stats = { remoteEndpoints: 0, remoteNodes: 0, malformedKeys: 0, remoteEntriesDropped: 0 }
  private readonly maxRemote: number
  /** Keys of records the cap refused, wholly or in part (readmit). */
  private readonly refused = new Set<string>()

  private constructor (readonly opts: ClusterOptions) {
    this.log = opts.logger
    this.statePath = join(opts.stateDir, 'cluster.json')
    this.maxRemote = opts.maxRemoteEntries ?? DEFAULT_MAX_REMOTE_ENTRIES
    this.conn = new Connection({
      urls: opts.urls,
      markerKey: markerKey(opts.clusterName, opts.nodeName),
      tls: opts.tls,
      auth: opts.auth,
      configFile: opts.configFile,
      leaseTtlSeconds: opts.leaseTtlSeconds ?? DEFAULT_LEASE_TTL_SECONDS,
      probeMs: opts.probeMs,
      timeoutMs: opts.timeoutMs,
      backoffMinMs: opts.backoffMinMs,
      backoffMaxMs: opts.backoffMaxMs,
      logger: opts.logger
    })
    // Bounded copies: every cluster identity (256..65535), the remote entries plus this node's
    // own endpoints (at most 4,096, the endpoint map's size), and as many nodes.
    // After etcd lost its data, what is absent is held as long as a dead node's keys would have
    // lived (its lease TTL), and at least until every live agent had time to republish.
    const lostDataHoldMs = Math.max((opts.leaseTtlSeconds ?? DEFAULT_LEASE_TTL_SECONDS) * 1000, this.conn.republishWindowMs)
    this.ids = new Mirror(ID_PREFIX, opts.logger, { maxEntries: MAX_CLUSTER_IDENTITY - MIN_CLUSTER_IDENTITY + 1, lostDataHoldMs })
    this.ips = new Mirror(IPCACHE_PREFIX, opts.logger, { maxEntries: this.maxRemote + 4096, lostDataHoldMs })
    this.nodes = new Mirror(nodesPrefix(opts.clusterName), opts.logger, { maxEntries: this.maxRemote, lostDataHoldMs })
    // The copies first: the allocator's session hook reads the identities.
    for (const m of [this.ids, this.ips, this.nodes]) {
      this.conn.addHook({ onSession: async (s) => await m.onSession(s), onDown: () => m.stop() })
    }
    this.allocator = new ClusterIdentityAllocator({
      conn: this.conn, ids: this.ids, nodeSuffix: opts.nodeIP, local: opts.local, logger: opts.logger,
      releaseGraceMs: opts.releaseGraceMs, gcGraceMs: opts.gcGraceMs, prepareTimeoutMs: opts.prepareTimeoutMs
    })
    // After each session start the store recompiles: identities that could not be prepared while
    // etcd was away are allocated now.
    // (and the marker the session wrote is persisted)
    this.conn.addHook({ onSession: () => { this.idsDirty = true; this.scheduleEmit(); this.persistSoon(); return Promise.resolve() } })
    this.ids.onChange(() => { this.idsDirty = true; this.scheduleEmit() })
    this.ips.onChange((c) => { this.applyIps(c); this.scheduleEmit() })
    this.nodes.onChange((c) => { this.applyNodes(c); this.scheduleEmit() })
    this.conn.own(nodeKey(opts.clusterName, opts.nodeName), formatNodeValue({ name: opts.nodeName, cluster: opts.clusterName, ipv4: [opts.nodeIP], podCidr: opts.podCidr ?? null }))
  }

  /** Read the persisted state (if any) and start connecting; never waits for etcd. */
  static async open (opts: ClusterOptions): Promise<ClusterStore> {
    const c = new ClusterStore(opts)
    await c.restore()
    c.rebuild()
    c.conn.start()
    return c
  }

  /** The current remote state (for the store's first compile). */
  current (): RemoteState { return this.remote }

  onRemote (fn: (r: RemoteState) => void): void { this.listeners.push(fn) }

  /** Publish this node's endpoints (from each snapshot the kernel has): one key write per change. */
  publishEndpoints (endpoints: readonly Endpoint[]): void {
    const next = new Map<string, string>()
    for (const e of endpoints) {
      // An endpoint with the init identity is published with it, as Cilium publishes the identity
      // an endpoint has: the other nodes then apply their rules for `init` to it, not `world`.
      next.set(ipcacheKey(e.ipv4), formatIpcacheValue({
        ip: e.ipv4, hostIP: this.opts.nodeIP, identity: e.identity, namespace: e.namespace, pod: e.name,
        cluster: this.opts.clusterName, node: this.opts.nodeName, endpointId: e.id, ports: e.ports
      }))
    }
    for (const [k, v] of next) if (this.published.get(k) !== v) this.conn.own(k, v)
    for (const k of this.published.keys()) if (!next.has(k)) this.conn.disown(k)
    this.published = next
  }

  /**
   * How many of `want` kernel entries key `key` may hold, `held` being what it holds now: the cap
   * counts kernel ipcache entries (a pod key is one, a node record one per address), not etcd
   * keys, so no set of records takes the map past its share. What does not fit is counted, and
   * logged once per thousand.
   */
  private room (key: string, want: number, held: number): number {
    const free = Math.max(0, this.maxRemote - this.remoteEntries + held)
    if (want <= free) return want
    this.refused.add(key)
    const before = this.stats.remoteEntriesDropped
    this.stats.remoteEntriesDropped += want - free
    if (before === 0 || Math.floor(before / 1000) !== Math.floor(this.stats.remoteEntriesDropped / 1000)) {
      this.log.warn({ key, max: this.maxRemote, dropped: this.stats.remoteEntriesDropped }, 'kvstore: too many remote ipcache entries; the addresses beyond are not enforced by identity')
    }
    return free
  }

  /**
   * Records refused (wholly or in part) at the cap are taken in again, from the watched copies,
   * once other entries left room: they wait for no change of their own.
   */
  private readmit (): void {
    if (this.refused.size === 0 || this.remoteEntries >= this.maxRemote) return
    for (const key of [...this.refused]) {
      if (this.remoteEntries >= this.maxRemote) break
      this.refused.delete(key)
      const isIp = key.startsWith(IPCACHE_PREFIX)
      const e = (isIp ? this.ips : this.nodes).entries.get(key)
      if (e === undefined) continue
      const change: MirrorChange[] = [{ type: 'put', key, value: e.value, prev: undefined }]
      if (isIp) this.applyIps(change)
      else this.applyNodes(change)
    }
  }

  private applyIps (changes: MirrorChange[]): void {
    for (const c of changes) {
      this.ipDirty = true
      if (c.type === 'delete') { this.refused.delete(c.key); this.setIp(c.key, undefined); this.setPorts(c.key, 0, []); continue }
      try {
        const r = parseIpcacheValue(c.key, c.value)
        // This node's own entries are its endpoints: the store knows them first-hand.
        if (r.hostIP === this.opts.nodeIP) { this.setIp(c.key, undefined); this.setPorts(c.key, 0, []); continue }
        const prefix = `${r.ip}/${r.prefixLen}`
        const old = this.remoteIps.get(c.key)
        if (old === undefined && this.room(c.key, 1, 0) === 0) continue
        if (old === undefined || old.prefix !== prefix || old.identity !== r.identity) this.setIp(c.key, { prefix, identity: r.identity, endpointId: 0 })
        this.setPorts(c.key, r.identity, r.ports)
      } catch (err) {
        this.setIp(c.key, undefined)
        this.setPorts(c.key, 0, [])
        this.stats.malformedKeys++
        this.log.warn({ key: c.key, code: (err as ClusterError).code, err: (err as Error).message }, 'kvstore: skipping a malformed ipcache entry')
      }
    }
  }

  private applyNodes (changes: MirrorChange[]): void {
    for (const c of changes) {
      this.ipDirty = true
      if (c.type === 'delete') { this.refused.delete(c.key); this.setNode(c.key, undefined); continue }
      try {
        const n = parseNodeValue(c.key, c.value)
        if (n.name === this.opts.nodeName) { this.setNode(c.key, undefined); continue }
        const old = this.remoteNodes.get(c.key)
        const held = old?.length ?? 0
        const addrs = n.ipv4.slice(0, 16) // a node's addresses, a bounded few
        const ips = addrs.slice(0, addrs.length > held ? this.room(c.key, addrs.length, held) : addrs.length)
        if (old === undefined && ips.length === 0) continue
        const sig = ips.join(',')
        if (old === undefined || old.map((e) => e.prefix.slice(0, -3)).join(',') !== sig) {
          this.setNode(c.key, ips.map((ip) => ({ prefix: `${ip}/32`, identity: RESERVED.REMOTE_NODE, endpointId: 0 })))
        }
      } catch (err) {
        this.setNode(c.key, undefined)
        this.stats.malformedKeys++
        this.log.warn({ key: c.key, code: (err as ClusterError).code, err: (err as Error).message }, 'kvstore: skipping a malformed node record')
      }
    }
  }

  private setIp (key: string, e: IpcacheEntry | undefined): void {
    const old = this.remoteIps.get(key)
    this.remoteEntries += (e === undefined ? 0 : 1) - (old === undefined ? 0 : 1)
    this.byPrefix.replace(key, false, old === undefined ? [] : [old], e === undefined ? [] : [e])
    if (e === undefined) this.remoteIps.delete(key)
    else this.remoteIps.set(key, e)
  }

  /**
   * Record the named ports remote entry `key` gives `identity` (none: []): counted per identity,
   * so one entry's change touches only its identity's union (each name, protocol and port once).
   */
  private setPorts (key: string, identity: number, ports: readonly ContainerPort[]): void {
    const old = this.portsByKey.get(key)
    if (old === undefined && ports.length === 0) return
    if (old !== undefined && old.identity === identity && portsText(old.ports) === portsText(ports)) return
    if (old !== undefined) for (const p of old.ports) this.countPort(old.identity, p, -1)
    for (const p of ports) this.countPort(identity, p, 1)
    if (ports.length === 0) this.portsByKey.delete(key)
    else this.portsByKey.set(key, { identity, ports })
  }

  private countPort (identity: number, port: ContainerPort, d: 1 | -1): void {
    let m = this.portCounts.get(identity)
    if (m === undefined) this.portCounts.set(identity, m = new Map<string, { port: ContainerPort, n: number }>())
    const k = `${port.name}/${port.protocol}/${port.port}`
    const c = m.get(k)
    if (c === undefined) {
      if (d < 0) return // never counted
      m.set(k, { port, n: 1 })
      this.portsDirty.add(identity)
    } else if ((c.n += d) <= 0) {
      m.delete(k)
      this.portsDirty.add(identity)
    }
    if (m.size === 0) this.portCounts.delete(identity)
  }

  private setNode (key: string, es: IpcacheEntry[] | undefined): void {
    const old = this.remoteNodes.get(key) ?? []
    this.remoteEntries += (es?.length ?? 0) - old.length
    this.byPrefix.replace(key, true, old, es ?? [])
    if (es === undefined) this.remoteNodes.delete(key)
    else this.remoteNodes.set(key, es)
  }

  private scheduleEmit (): void {
    if (this.emitScheduled || this.closed) return
    this.emitScheduled = true
    setImmediate(() => {
      this.emitScheduled = false
      if (this.closed) return
      this.readmit()
      this.rebuild()
      for (const fn of this.listeners) fn(this.remote)
      this.persistSoon()
    })
  }

  /**
   * A new RemoteState; its parts are the previous objects where nothing changed. The ipcache
   * comes with the prefixes that changed (RemoteIpcache): the compiler applies those instead of
   * comparing every entry.
   */
  private rebuild (): void {
    let identities = this.remote.identities
    if (this.idsDirty) {
      const m = new Map<number, readonly Label[]>()
      for (const [key, e] of this.ids.entries) {
        try { m.set(parseIdKey(key), parseLabelsKey(e.value)) } catch { this.stats.malformedKeys++ }
      }
      identities = m
      this.idsDirty = false
    }
    let ipcache = this.remote.ipcache
    let ipcacheChanges = this.remote.ipcacheChanges
    let namedPorts = this.remote.namedPorts
    if (this.ipDirty) {
      const next = this.byPrefix.flush()
      if (next !== undefined) ({ ipcache, changes: ipcacheChanges } = next)
      if (this.portsDirty.size > 0) {
        // copy-on-write: the identities whose ports changed, the others' lists as they were
        const np = new Map(namedPorts ?? [])
        for (const id of this.portsDirty) {
          const m = this.portCounts.get(id)
          if (m === undefined) np.delete(id)
          else np.set(id, [...m.values()].map((c) => c.port))
        }
        this.portsDirty.clear()
        namedPorts = np
      }
      this.ipDirty = false
      this.stats.remoteEndpoints = this.remoteIps.size
      this.stats.remoteNodes = this.remoteNodes.size
    }
    this.remote = ipcacheChanges === undefined ? { identities, ipcache, namedPorts } : { identities, ipcache, ipcacheChanges, namedPorts }
  }

  /** What `warden status` shows of the cluster store. */
  status (): ClusterStatus {
    return {
      node: this.opts.nodeName,
      cluster: this.opts.clusterName,
      kvstore: this.opts.urls,
      ...this.conn.health(),
      identities: this.allocator.known().size,
      remoteEndpoints: this.stats.remoteEndpoints,
      remoteNodes: this.stats.remoteNodes,
      remoteEntriesDropped: this.stats.remoteEntriesDropped,
      outages: this.conn.stats.outages
    }
  }

  metrics (): Record<string, number> {
    const m = [this.ids, this.ips, this.nodes]
    return {
      connected: this.conn.stats.connected,
      outages: this.conn.stats.outages,
      sessions: this.conn.stats.sessions,
      republishedKeys: this.conn.stats.republishedKeys,
      keyWrites: this.conn.stats.keyWrites,
      authFailures: this.conn.stats.authFailures,
      tlsFailures: this.conn.stats.tlsFailures,
      watchEvents: m.reduce((n, x) => n + x.stats.watchEvents, 0),
      relists: m.reduce((n, x) => n + x.stats.relists, 0),
      resumes: m.reduce((n, x) => n + x.stats.resumes, 0),
      identityAllocations: this.allocator.stats.allocations,
      identityAllocationConflicts: this.allocator.stats.allocationConflicts,
      identityAllocationFailures: this.allocator.stats.allocationFailures,
      identitiesCollected: this.allocator.stats.collected,
      clusterIdentities: this.allocator.known().size,
      remoteEndpoints: this.stats.remoteEndpoints,
      remoteNodes: this.stats.remoteNodes,
      malformedKeys: this.stats.malformedKeys,
      keysNotCopied: m.reduce((n, x) => n + x.stats.dropped, 0),
      recordsTooLarge: m.reduce((n, x) => n + x.stats.oversized, 0),
      keysHeld: m.reduce((n, x) => n + x.stats.held, 0),
      remoteEntriesDropped: this.stats.remoteEntriesDropped
    }
  }

  /**
   * Write `cluster.json` a while after a change: 1 s, or 20 times what the last write took when
   * that is longer. The file is the whole copy, so its cost grows with the cluster: with a fixed
   * second, a steady trickle of changes in a large cluster would spend much of a core rewriting
   * it. It is the fallback for a start without etcd; a few seconds older is fine.
   */
  private persistSoon (): void {
    if (this.persistTimer !== null || this.closed) return
    this.persistTimer = setTimeout(() => {
      this.persistTimer = null
      this.persist().catch((err: Error) => this.log.error({ err: err.message }, 'cannot persist the cluster state'))
    }, Math.max(1000, 20 * this.lastPersistMs))
    this.persistTimer.unref()
  }

  /** Write `cluster.json` now (after a write under way: one at a time, they share the temporary file). */
  async persist (): Promise<void> {
    const run = this.persisting.then(async () => await this.writeState())
    this.persisting = run.catch(() => {})
    await run
  }

  private async writeState (): Promise<void> {
    const t0 = performance.now()
    const state: StateV1 = {
      version: 1,
      node: this.opts.nodeName,
      marker: this.conn.marker,
      held: this.allocator.heldEntries(),
      ids: [...this.ids.entries].map(([k, e]) => [k, e.value]),
      ips: [...this.ips.entries].map(([k, e]) => [k, e.value]),
      nodes: [...this.nodes.entries].map(([k, e]) => [k, e.value])
    }
    // Serialised in slices, yielding between them: the copies are taken above (one consistent
    // state), and a large cluster's entries at once would hold the event loop (watches,
    // proxies) for as long as the whole file takes.
    const parts: string[] = ['{"version":1,"node":' + JSON.stringify(state.node) + ',"marker":' + JSON.stringify(state.marker ?? null)]
    for (const k of ['held', 'ids', 'ips', 'nodes'] as const) {
      const list = state[k] as unknown[]
      const lines: string[] = []
      for (let i = 0; i < list.length; i++) {
        lines.push('\n ' + JSON.stringify(list[i]))
        if (i % PERSIST_SLICE === PERSIST_SLICE - 1) await new Promise((resolve) => setImmediate(resolve))
      }
      parts.push(`${JSON.stringify(k)}:[${lines.join(',')}\n]`)
    }
    const text = parts.join(',\n') + '}\n'
    await mkdir(this.opts.stateDir, { recursive: true })
    const tmp = `${this.statePath}.${process.pid}.tmp`
    await writeFile(tmp, text)
    await rename(tmp, this.statePath)
    this.lastPersistMs = performance.now() - t0
  }

  private async restore (): Promise<void> {
    let text: string
    try {
      text = await readFile(this.statePath, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
      throw new ClusterError(ERR.STATE, `cannot read ${this.statePath}: ${(err as Error).message}`, { path: this.statePath })
    }
    let s: Partial<StateV1> | null
    // Checked field by field below before any of it is used.
    try { s = JSON.parse(text) as Partial<StateV1> | null } catch (err) { throw new ClusterError(ERR.STATE, `corrupt cluster state ${this.statePath}: ${(err as Error).message}; move it away to start afresh`, { path: this.statePath }) }
    const pairs = (v: unknown): v is [string, string][] => Array.isArray(v) && v.every((e) => Array.isArray(e) && e.length === 2 && typeof e[0] === 'string' && typeof e[1] === 'string')
    const held = (v: unknown): v is HeldEntry[] => Array.isArray(v) && v.every((e) => Array.isArray(e) && e.length === 3 && typeof e[0] === 'string' && Number.isInteger(e[1]) && (e[2] === null || Number.isFinite(e[2])))
    if (s?.version !== 1 || !held(s.held) || !pairs(s.ids) || !pairs(s.ips) || !pairs(s.nodes)) {
      throw new ClusterError(ERR.STATE, `corrupt cluster state ${this.statePath}: unexpected shape; move it away to start afresh`, { path: this.statePath })
    }
    // A state written by another node name is not this node's (its held identities are not ours).
    if (s.node === this.opts.nodeName) {
      this.allocator.restoreHeld(s.held, Date.now())
      if (Number.isSafeInteger(s.marker) && (s.marker as number) > 0) this.conn.restoreMarker(s.marker as number)
    }
    this.ids.restore(s.ids)
    this.ips.restore(s.ips)
    this.nodes.restore(s.nodes)
    this.log.info({ path: this.statePath, identities: s.ids.length, ipcache: s.ips.length, nodes: s.nodes.length }, 'cluster state restored from the state directory')
  }

  /** Stop. The keys stay until the lease expires (a restart within the TTL keeps them), unless `leave`. */
  async close (opts: { leave?: boolean } = {}): Promise<void> {
    this.closed = true
    if (this.persistTimer !== null) clearTimeout(this.persistTimer)
    await this.persist().catch((err: Error) => this.log.error({ err: err.message }, 'cannot persist the cluster state'))
    for (const m of [this.ids, this.ips, this.nodes]) m.close()
    await this.conn.close({ revoke: opts.leave === true })
  }
}

function portsText (ports: readonly ContainerPort[]): string {
  return ports.map((p) => `${p.name}=${p.protocol}/${p.port}`).join(',')
}
