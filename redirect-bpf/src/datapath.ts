/**
 * The open datapath (`Datapath`), composed of the parts that each own one concern: the map
 * writer (map-writer.ts), the tc attachments (attachments.ts) and conntrack (conntrack.ts); it
 * adds the apply queue, the timers, flow events and counters.
 */
import type { MapRef } from 'bpf'
import koffi from 'koffi'
import type { Snapshot, SnapshotDiff } from '../../policy-store/src/types.js'
import { Attachments } from './attachments.js'
import { Conntrack } from './conntrack.js'
import type { Datapath, DatapathInspection, DatapathOptions } from './datapath-api.js'
import { decodeFlowEvent, readCounters, type FlowEvent } from './events.js'
import { ipcacheIdentity } from './ipcache-reader.js'
import { libbpf, type RingBuffer } from './libbpf.js'
import { DEFAULT_IPCACHE_MAX_ENTRIES } from './limits.js'
import { mapPath } from './loader.js'
import { MapWriter } from './map-writer.js'
import type { Maps } from './maps.js'

/** max_entries of the maps status reports (redirect-bpf/bpf/warden.bpf.c; the ipcache's is configuration). */
const MAP_MAX = { l7p_endpoints: 4096, l7p_policy: 262144, l7p_ct: 65536 } as const

/** Cilium reconciles its policy maps with a full dump on a timer too (syncPolicyMapWithDump). */
const DEFAULT_FULL_SYNC_MS = 5 * 60 * 1000
const DEFAULT_CT_GC_MS = 30 * 1000

/**
 * An open datapath: applies and full syncs run one at a time through one queue; timers run the
 * periodic full sync, conntrack GC, and attach retries; flow events come from the ring buffer.
 */
export class DatapathImpl implements Datapath {
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
