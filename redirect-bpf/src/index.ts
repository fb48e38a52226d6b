/**
 * The datapath API the agent (`warden run`) uses: open (load or reuse the pinned programs
 * and maps, install the proxy routing), apply snapshots to the kernel maps without
 * flushing, read what the kernel knows (identities, UDP original destinations, live
 * connections, flow events, counters), and uninstall.
 */
import type { Logger } from 'pino'
import { objGet, createMapRef, RawMap, type MapRef } from 'bpf'
import type { Snapshot, SnapshotDiff } from '../../policy-store/src/types.js'
import {
  CFG_MADE_ROUTE, CFG_MADE_RULE, FEAT_HOST_ROUTING, HOOK_EGRESS, HOOK_INGRESS, SIZE, decodeAttach, decodeConfig, encodeConfig
} from './layout.js'
import {
  DEFAULT_ROUTE_TABLE, attachHook, ensureBpffs, ifnameOf, installRouting,
  loadObject, mapPath, objectPath, objectTag, pinsComplete, programsUseMap, promoteProgs
} from './loader.js'
import { openMaps, type Maps } from './maps.js'
import { MapWriter } from './map-writer.js'
import { libbpf, type RingBuffer } from './libbpf.js'
import { Conntrack } from './conntrack.js'
import { Attachments } from './attachments.js'
import { ipcacheIdentity } from './ipcache-reader.js'
import { decodeFlowEvent, readCounters, type FlowEvent } from './events.js'
import { DatapathError } from './errors.js'
import { DEFAULT_IPCACHE_MAX_ENTRIES, IPCACHE_MAX_ENTRIES, IPCACHE_MIN_ENTRIES } from './limits.js'
import { prepareIpcache, promoteIpcache } from './ipcache-resize.js'
import koffi from 'koffi'

export type { FlowEvent, FlowVerdict } from './events.js'
export { DatapathError, BpfError } from './errors.js'
export { DEFAULT_ROUTE_TABLE, PROXY_SOCKET_MARK } from './loader.js'
export { DEFAULT_IPCACHE_MAX_ENTRIES, IPCACHE_MAX_ENTRIES, IPCACHE_MIN_ENTRIES } from './limits.js'
export { openIpcacheReader } from './ipcache-reader.js'
export { uninstall } from './uninstall.js'

export interface DatapathOptions {
  /** bpffs directory for this instance's pins (default /sys/fs/bpf/warden). */
  bpffs: string
  /** Transparent TCP listener port of the HTTP proxy. */
  proxyPort: number
  /** Transparent UDP (and TCP) port of the DNS proxy. */
  dnsProxyPort: number
  /** Interfaces whose ingress traffic comes from outside the node's workloads. */
  uplinks: string[]
  /** Policy routing table for marked (to-proxy) packets; default 2004. */
  routeTable?: number
  /**
   * max_entries of the kernel ipcache (default DEFAULT_IPCACHE_MAX_ENTRIES, Cilium's). A pinned
   * ipcache of another size is replaced by one of this size holding the same entries, with no
   * moment where the attached programs see none (see prepareIpcache).
   */
  ipcacheMaxEntries?: number
  /**
   * BPF host routing (default on): a packet let through to a local endpoint goes straight
   * into its namespace instead of through the host's IP stack (L7P_FEAT_HOST_ROUTING in l7p.h).
   * Off: the host routes it, its netfilter FORWARD rules see it (Cilium's legacy host routing).
   */
  hostRouting?: boolean
  /**
   * How often the maps are read back whole and compared with the last applied snapshot, drift
   * repaired and counted (default 5 minutes; 0: never). Applies write only what their diff names.
   */
  fullSyncIntervalMs?: number
  /**
   * How often expired conntrack entries are deleted (default 30 s; 0: never). The LRU map keeps
   * an expired entry until it needs the room, and then it evicts the least recently used one,
   * which on a node with churn can be a live connection that was idle: its next packet would be
   * judged as a new flow (a reply as a flow of its own, which the client's ingress may drop).
   */
  ctGcIntervalMs?: number
  logger: Logger
}

export interface Datapath {
  /**
   * Bring the kernel in line with `snap`. With a `diff` from the snapshot the kernel holds (its
   * `from` is that version), only the keys the diff names are written: the normal path, whose
   * cost follows the change. Without one, or when the diff does not start from what the kernel
   * holds (a missed snapshot, a failed apply), a full sync: the maps are read back, compared
   * with the whole snapshot, and the differences written. In both, removals go before upserts,
   * new endpoints' interfaces are attached and removed ones detached. A full sync also runs
   * every `fullSyncIntervalMs` against the last snapshot and logs the drift it repairs.
   * The first apply after open re-attaches every filter (heals what was removed while the
   * agent was down). Applies run one at a time, in call order.
   */
  apply (snap: Snapshot, diff?: SnapshotDiff): Promise<void>
  /** ipcache longest-prefix lookup; world (2) when nothing matches. */
  lookupIdentity (ipv4: string): number
  /**
   * Is there a live CT entry with this address at either end? Answers within one turn of the
   * event loop come from one dump of the CT map.
   */
  hasConnection (remoteIpv4: string): boolean
  /** Delete the expired conntrack entries now (also done every `ctGcIntervalMs`); returns how many went. */
  collectCt (): number
  onFlow (fn: (ev: FlowEvent) => void): void
  /** For `warden status`: interfaces waiting to appear, and each map's fill (entries of max). */
  inspect (): DatapathInspection
  /**
   * Kernel counters per reason (summed over CPUs), names from REASONS; `ct_gc_deleted`, and
   * `ipcache_left_out`: the entries of the snapshot in force the ipcache had no room for.
   */
  counters (): Record<string, number>
  /** Stop polling; leave programs, pins, rule and route in place. */
  close (): Promise<void>
}

export interface DatapathInspection {
  /** Endpoint (and uplink) interfaces not found yet: not attached, nothing enforced there. */
  pending: string[]
  /** Entries each map holds and its max_entries (warden.bpf.c). */
  maps: Record<string, { entries: number, max: number }>
}

/** max_entries of the maps status reports (redirect-bpf/bpf/warden.bpf.c; the ipcache's is configuration). */
const MAP_MAX = { l7p_endpoints: 4096, l7p_policy: 262144, l7p_ct: 65536 } as const

/** Cilium reconciles its policy maps with a full dump on a timer too (syncPolicyMapWithDump). */
const DEFAULT_FULL_SYNC_MS = 5 * 60 * 1000
const DEFAULT_CT_GC_MS = 30 * 1000

class DatapathImpl implements Datapath {
  private readonly listeners: Array<(ev: FlowEvent) => void> = []
  /** Applies and full syncs, one at a time. */
  private queue: Promise<void> = Promise.resolve()
  private fullSyncTimer: NodeJS.Timeout | undefined
  private rb: RingBuffer | undefined
  private poller: { close: () => void } | undefined
  private timer: NodeJS.Timeout | undefined
  private countersFd = -1
  private closed = false
  private readonly ct: Conntrack
  private readonly attachments: Attachments
  /** The maps' content: applies and full syncs. */
  private readonly writer: MapWriter
  private ctGcTimer: NodeJS.Timeout | undefined

  constructor (
    private readonly opts: DatapathOptions,
    private readonly maps: Maps,
    private readonly refs: MapRef[]
  ) {
    this.ct = new Conntrack(maps.l7p_ct)
    this.attachments = new Attachments(maps.l7p_attach, opts.bpffs, opts.uplinks, opts.logger)
    this.writer = new MapWriter(maps, this.attachments, opts.ipcacheMaxEntries ?? DEFAULT_IPCACHE_MAX_ENTRIES, opts.logger)
    const every = opts.fullSyncIntervalMs ?? DEFAULT_FULL_SYNC_MS
    if (every > 0) {
      this.fullSyncTimer = setInterval(() => {
        const snap = this.writer.last
        if (snap === undefined || this.closed) return
        this.serial(async () => { await this.writer.fullSync(snap, 'periodic') })
          .catch((err) => this.opts.logger.error({ err }, 'periodic datapath sync failed'))
      }, every)
      this.fullSyncTimer.unref()
    }
    const gcEvery = opts.ctGcIntervalMs ?? DEFAULT_CT_GC_MS
    if (gcEvery > 0) {
      this.ctGcTimer = setInterval(() => {
        if (this.closed) return
        try {
          const deleted = this.collectCt()
          if (deleted > 0) this.opts.logger.debug({ deleted }, 'conntrack: expired entries deleted')
        } catch (err) {
          this.opts.logger.error({ err }, 'conntrack garbage collection failed')
        }
      }, gcEvery)
      this.ctGcTimer.unref()
    }
  }

  private async serial (fn: () => Promise<void>): Promise<void> {
    const run = this.queue.then(fn)
    this.queue = run.catch(() => {})
    await run
  }

  startEvents (): void {
    const lib = libbpf()
    this.countersFd = lib.objGet(mapPath(this.opts.bpffs, 'l7p_counters'))
    const evFd = lib.objGet(mapPath(this.opts.bpffs, 'l7p_events'))
    this.rb = lib.ringBuffer(evFd, (data) => {
      if (this.listeners.length === 0) return
      const ev = decodeFlowEvent(data)
      for (const fn of this.listeners) {
        try { fn(ev) } catch (err) { this.opts.logger.error({ err }, 'flow listener threw') }
      }
    })
    lib.close(evFd) // the ring buffer holds its own mapping
    const consume = (): void => { if (this.rb !== undefined && !this.closed) this.rb.consume() }
    try {
      // wake up when the kernel has records; no busy polling
      const h = koffi.node.poll(this.rb.epollFd, { readable: true }, consume)
      h.unref()
      this.poller = h
    } catch (err) {
      this.opts.logger.warn({ err }, 'epoll on the ring buffer unavailable; polling every 100 ms')
    }
    this.timer = setInterval(() => {
      consume()
      const snap = this.writer.last
      if (this.attachments.pending.size > 0 && snap !== undefined) {
        this.serial(async () => { await this.writer.syncEndpoints(snap, false, false) })
          .catch((err) => this.opts.logger.error({ err }, 'attach retry failed'))
      }
    }, this.poller === undefined ? 100 : 1000)
    this.timer.unref()
  }

  async apply (snap: Snapshot, diff?: SnapshotDiff): Promise<void> {
    await this.serial(async () => { await this.writer.apply(snap, diff) })
  }

  lookupIdentity (ipv4: string): number {
    return ipcacheIdentity(this.maps.l7p_ipcache, ipv4)
  }

  /** Delete the expired conntrack entries now; returns how many went. */
  collectCt (): number { return this.ct.collect() }

  hasConnection (remoteIpv4: string): boolean { return this.ct.hasConnection(remoteIpv4) }

  onFlow (fn: (ev: FlowEvent) => void): void { this.listeners.push(fn) }

  inspect (): DatapathInspection {
    // endpoints, ipcache, policy: what the last apply wrote (a full sync repairs drift);
    // conntrack: counted by one batched dump (only when an operator asks)
    const ct = this.ct.count()
    return {
      pending: [...this.attachments.pending].sort(),
      maps: {
        l7p_endpoints: { entries: this.writer.have.endpoints.size, max: MAP_MAX.l7p_endpoints },
        l7p_ipcache: { entries: this.writer.have.ipcache.size, max: this.opts.ipcacheMaxEntries ?? DEFAULT_IPCACHE_MAX_ENTRIES },
        l7p_policy: { entries: this.writer.have.policy.size, max: MAP_MAX.l7p_policy },
        l7p_ct: { entries: ct, max: MAP_MAX.l7p_ct }
      }
    }
  }

  counters (): Record<string, number> {
    // the kernel's reasons, and the expired conntrack entries this agent deleted
    // and the ipcache entries of the current snapshot left out for want of room (a gauge)
    return { ...readCounters(this.countersFd), ct_gc_deleted: this.ct.collected, ipcache_left_out: this.writer.ipcacheLeftOutTotal }
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.timer !== undefined) clearInterval(this.timer)
    if (this.fullSyncTimer !== undefined) clearInterval(this.fullSyncTimer)
    if (this.ctGcTimer !== undefined) clearInterval(this.ctGcTimer)
    await this.queue // an apply or sync under way finishes with the maps still open
    this.poller?.close()
    this.rb?.free()
    if (this.countersFd >= 0) libbpf().close(this.countersFd)
    for (const r of this.refs) r.close()
  }
}

function checkPort (name: string, v: number): void {
  if (!Number.isInteger(v) || v < 1 || v > 65535) throw new DatapathError('WARDEN_ERR_CONFIG', `${name} must be 1..65535, got ${v}`)
}

/**
 * Open the datapath: mount bpffs if needed, load the programs or reuse the pinned ones
 * (reloading, with the same maps, when the object on disk is a different build), install
 * the proxy rule and route, start reading events.
 */
export async function openDatapath (opts: DatapathOptions): Promise<Datapath> {
  checkPort('proxyPort', opts.proxyPort)
  checkPort('dnsProxyPort', opts.dnsProxyPort)
  const table = opts.routeTable ?? DEFAULT_ROUTE_TABLE
  const log = opts.logger
  const ipcacheMax = opts.ipcacheMaxEntries ?? DEFAULT_IPCACHE_MAX_ENTRIES
  if (!Number.isInteger(ipcacheMax) || ipcacheMax < IPCACHE_MIN_ENTRIES || ipcacheMax > IPCACHE_MAX_ENTRIES) {
    throw new DatapathError('WARDEN_ERR_CONFIG', `ipcacheMaxEntries must be ${IPCACHE_MIN_ENTRIES}..${IPCACHE_MAX_ENTRIES}, got ${ipcacheMax}`)
  }
  await ensureBpffs(opts.bpffs)
  const tag = objectTag(objectPath())
  let upgrade = false
  const complete = pinsComplete(opts.bpffs)
  const ipcachePin = await prepareIpcache(opts.bpffs, ipcacheMax)
  const resized = ipcachePin !== mapPath(opts.bpffs, 'l7p_ipcache')
  if (!complete) {
    await loadObject(opts.bpffs, 'progs', ipcachePin)
    // filters left from an interrupted start are re-attached by the first apply
    promoteIpcache(opts.bpffs)
    log.info({ bpffs: opts.bpffs, ipcacheMaxEntries: ipcacheMax }, 'datapath loaded and pinned')
  } else {
    const cfgMap = new RawMap(createMapRef(objGet(mapPath(opts.bpffs, 'l7p_config')), { transfer: true }))
    const cur = cfgMap.get(Buffer.alloc(4))
    cfgMap.ref.close()
    // a resized ipcache needs programs that use it, as a new build does; so do programs left
    // bound to another ipcache than the pinned one by a start killed part-way (see below)
    const stale = !resized && !await programsUseMap(opts.bpffs, ipcachePin)
    if (stale) log.warn({ bpffs: opts.bpffs }, 'the pinned programs do not use the pinned ipcache (an interrupted start); reloading them')
    upgrade = cur === undefined || decodeConfig(cur).progTag !== tag || resized || stale
    if (upgrade) await loadObject(opts.bpffs, 'progs_new', ipcachePin)
    log.info({ bpffs: opts.bpffs, upgrade, ipcacheResized: resized, ipcacheMaxEntries: ipcacheMax }, 'datapath reusing pinned maps')
  }
  if (upgrade) {
    // point every attached filter at the new programs (and the new ipcache), then retire the
    // old pins; the old ipcache goes when the last program holding it is released. Programs
    // first, the ipcache pin last: a kill between the two leaves `progs/` on the new map and the
    // old map pinned at its old size, which the next start resizes again; the other order would
    // leave `progs/` on a map no longer pinned, which nobody writes.
    const attach = new RawMap(createMapRef(objGet(mapPath(opts.bpffs, 'l7p_attach')), { transfer: true }))
    try {
      for (const [k, v] of attach.entries()) {
        const rec = decodeAttach(v)
        const name = ifnameOf(k.readUInt32LE(0))
        if (name === undefined) continue
        if ((rec.hooks & HOOK_INGRESS) !== 0) await attachHook(opts.bpffs, name, 'ingress', 'progs_new')
        if ((rec.hooks & HOOK_EGRESS) !== 0) await attachHook(opts.bpffs, name, 'egress', 'progs_new')
      }
    } finally {
      attach.ref.close()
    }
    promoteProgs(opts.bpffs)
    promoteIpcache(opts.bpffs)
  }
  const { maps, refs } = openMaps(opts.bpffs)
  const zero = Buffer.alloc(4)
  const prev = maps.l7p_config.get(zero)
  const prevCfg = prev === undefined ? undefined : decodeConfig(prev)
  let flags = prevCfg !== undefined && prevCfg.routeTable === table ? prevCfg.flags : 0
  const made = await installRouting(table)
  if (made.rule) flags |= CFG_MADE_RULE
  if (made.route) flags |= CFG_MADE_ROUTE
  maps.l7p_config.set(zero, encodeConfig(Buffer.alloc(SIZE.config), {
    proxyPort: opts.proxyPort,
    dnsProxyPort: opts.dnsProxyPort,
    routeTable: table,
    flags,
    features: opts.hostRouting === false ? 0 : FEAT_HOST_ROUTING,
    progTag: tag
  }))
  const dp = new DatapathImpl(opts, maps, refs)
  dp.startEvents()
  return dp
}

