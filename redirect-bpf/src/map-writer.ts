/**
 * Bringing the maps the programs read (l7p_ipcache, l7p_policy, l7p_endpoints) to a snapshot,
 * with the tc attachments in between: a diff from the snapshot the kernel holds writes only the
 * keys it names (the normal path); anything else, and a timer, runs a full sync that reads the
 * maps back and repairs drift (sync.ts).
 */
import type { Logger } from 'pino'
import type { Snapshot, SnapshotDiff } from '../../policy-store/src/types.js'
import type { Attachments } from './attachments.js'
import { admitIpcache, learnedBy, noneLeftOut, RANK_NAMES, type RankName } from './ipcache-room.js'
import { SIZE, EP_AUDIT, encodeEndpoint, encodeIpcacheKey, encodeIpcacheValue } from './layout.js'
import type { Maps } from './maps.js'
import { PolicyIndex } from './policy.js'
import { countRepairs, dumpMap, syncWithDump, writeKeys, type SyncCount } from './sync.js'
import { ifindexOf } from './sys.js'

export class MapWriter {
  /** What the maps are believed to hold (key -> value bytes as latin1), kept after every write. */
  readonly have = { endpoints: new Map<string, string>(), ipcache: new Map<string, string>(), policy: new Map<string, string>() }
  /** The policy and ipcache content of the snapshot in the kernel, which diffs are applied to. */
  private policy = new PolicyIndex()
  private ipcacheWant = new Map<string, string>()
  /**
   * Version of the snapshot the maps hold, when they are known to hold exactly it: a diff from
   * it can be applied as is. Undefined before the first full sync and after a failed apply.
   */
  private inKernel: number | undefined
  /** The snapshot last written (the periodic full sync and attach retries use it). */
  last: Snapshot | undefined
  /** The first apply after open re-attaches every filter (heals what was removed while down). */
  private healed = false
  /** Entries of the last snapshot the ipcache had no room for, per rank (ipcache-room.ts). */
  private ipcacheLeftOut = noneLeftOut()
  ipcacheLeftOutTotal = 0

  constructor (
    private readonly maps: Maps,
    private readonly attachments: Attachments,
    private readonly ipcacheMax: number,
    private readonly logger: Logger
  ) {}

  /** A diff from the snapshot in the kernel is applied as is; anything else is a full sync. */
  async apply (snap: Snapshot, diff?: SnapshotDiff): Promise<void> {
    if (diff !== undefined && this.inKernel !== undefined && diff.from === this.inKernel && diff.to === snap.version) {
      await this.applyDiff(snap, diff)
    } else {
      await this.fullSync(snap, diff === undefined ? 'snapshot' : 'diff-not-from-kernel')
    }
  }

  /**
   * The normal path (Cilium's applyPolicyMapChanges): the diff's entries are counted in or out
   * of the desired content, and only the keys they cover are written.
   */
  private async applyDiff (snap: Snapshot, diff: SnapshotDiff): Promise<void> {
    const t0 = performance.now()
    this.inKernel = undefined // until every write below has been made
    // 1. what the programs read: ipcache, policy, endpoints -- before attaching new interfaces
    const kb = Buffer.alloc(SIZE.ipcacheKey)
    const vb = Buffer.alloc(SIZE.ipcacheValue)
    const ipcKeys = new Set<string>()
    for (const e of diff.ipcacheRemoved) {
      const k = encodeIpcacheKey(kb, e.prefix).toString('latin1')
      const v = encodeIpcacheValue(vb, { identity: e.identity, endpointId: e.endpointId, flags: e.audit === true ? EP_AUDIT : 0 }).toString('latin1')
      if (this.ipcacheWant.get(k) === v) this.ipcacheWant.delete(k)
      ipcKeys.add(k)
    }
    for (const e of diff.ipcacheAdded) {
      const k = encodeIpcacheKey(kb, e.prefix).toString('latin1')
      this.ipcacheWant.set(k, encodeIpcacheValue(vb, { identity: e.identity, endpointId: e.endpointId, flags: e.audit === true ? EP_AUDIT : 0 }).toString('latin1'))
      ipcKeys.add(k)
    }
    const polKeys = new Set<string>()
    for (const e of diff.kernelRemoved) this.policy.remove(e, polKeys)
    for (const e of diff.kernelAdded) this.policy.add(e, polKeys)
    this.policy.checkSize()
    const ipcache = this.writeIpcache(snap, ipcKeys)
    const policy = writeKeys(this.maps.l7p_policy, this.have.policy, (k) => this.policy.value(k), polKeys)
    this.last = snap
    // endpoints are few: any change (or an interface still awaited) redoes them whole
    const endpoints = diff.endpointsAdded.length + diff.endpointsRemoved.length > 0 || this.attachments.pending.size > 0
      ? await this.syncEndpoints(snap, false, false)
      : undefined
    this.inKernel = snap.version
    this.logger.debug({
      version: snap.version, mode: 'diff', ms: Math.round((performance.now() - t0) * 10) / 10, ipcache, policy, endpoints
    }, 'datapath applied')
  }

  /**
   * The safety net (Cilium's syncPolicyMapWithDump): read the maps back, compare them with the
   * whole snapshot, write the differences. Drift is counted and logged: when the snapshot is the
   * one already in force (the periodic sync), every write is a repair (a diff that missed a
   * change, a write lost, another process writing the pins); for a new snapshot, the keys where
   * the maps held something other than what the last apply left.
   */
  async fullSync (snap: Snapshot, why: 'snapshot' | 'diff-not-from-kernel' | 'periodic'): Promise<void> {
    const t0 = performance.now()
    const known = this.inKernel !== undefined
    const resync = known && this.inKernel === snap.version
    const drift = (c: SyncCount): number => resync ? c.written + c.deleted : c.repairs
    this.inKernel = undefined
    const kb = Buffer.alloc(SIZE.ipcacheKey)
    const vb = Buffer.alloc(SIZE.ipcacheValue)
    const ipcWant = new Map<string, string>()
    for (const e of snap.ipcache) {
      ipcWant.set(encodeIpcacheKey(kb, e.prefix).toString('latin1'),
        encodeIpcacheValue(vb, { identity: e.identity, endpointId: e.endpointId, flags: e.audit === true ? EP_AUDIT : 0 }).toString('latin1'))
    }
    const index = new PolicyIndex(snap.kernel)
    index.checkSize()
    this.ipcacheWant = ipcWant
    this.policy = index
    const ipcDump = dumpMap(this.maps.l7p_ipcache)
    const room = admitIpcache(ipcWant, this.ipcacheMax, ipcDump, learnedBy(snap.ipcache))
    this.noteLeftOut(room.leftOut, snap.version)
    const ipcache = syncWithDump(this.maps.l7p_ipcache, ipcDump, room.keep, known ? this.have.ipcache : undefined)
    this.have.ipcache = ipcDump
    const polDump = dumpMap(this.maps.l7p_policy)
    const policy = syncWithDump(this.maps.l7p_policy, polDump, index.toMap(), known ? this.have.policy : undefined)
    this.have.policy = polDump
    this.last = snap
    // tc runs only for interfaces whose attachment changed, except on the first apply
    const endpoints = await this.syncEndpoints(snap, !this.healed, true, known)
    this.healed = true
    this.inKernel = snap.version
    const count = (c: SyncCount): SyncCount => ({ written: c.written, deleted: c.deleted, repairs: drift(c) })
    const maps = { ipcache: count(ipcache), policy: count(policy), endpoints: count(endpoints) }
    const repairs = maps.ipcache.repairs + maps.policy.repairs + maps.endpoints.repairs
    const fields = { version: snap.version, mode: 'full', why, ms: Math.round((performance.now() - t0) * 10) / 10, repairs, ...maps }
    if (repairs > 0) this.logger.warn(fields, 'datapath full sync repaired drift in the kernel maps')
    else this.logger.debug(fields, 'datapath applied')
  }

  /**
   * Write the ipcache keys a diff touched. The map has room for `ipcacheMax` entries: while the
   * snapshot's fit (the normal case) only `keys` are written; when they do not, or did not at the
   * last apply, the entries to hold are chosen again (ipcache-room.ts) and the map brought to
   * them, removals first, so a write never meets a full map and the policy and endpoint maps
   * are written after it whatever the ipcache could not hold.
   */
  private writeIpcache (snap: Snapshot, keys: Iterable<string>): SyncCount {
    const map = this.maps.l7p_ipcache
    const want = this.ipcacheWant
    const have = this.have.ipcache
    if (want.size <= this.ipcacheMax && this.ipcacheLeftOutTotal === 0) {
      return { ...writeKeys(map, have, (k) => want.get(k), keys), repairs: 0 }
    }
    const { keep, leftOut } = admitIpcache(want, this.ipcacheMax, have, learnedBy(snap.ipcache))
    this.noteLeftOut(leftOut, snap.version)
    function * all (): Generator<string> {
      for (const k of have.keys()) if (!keep.has(k)) yield k
      yield * keep.keys()
    }
    return { ...writeKeys(map, have, (k) => keep.get(k), all()), repairs: 0 }
  }

  /** Record (and log, when it changes) what the ipcache had no room for. */
  private noteLeftOut (leftOut: Record<RankName, number>, version: number): void {
    const total = RANK_NAMES.reduce((n, r) => n + leftOut[r], 0)
    const changed = RANK_NAMES.some((r) => leftOut[r] !== this.ipcacheLeftOut[r])
    this.ipcacheLeftOut = leftOut
    this.ipcacheLeftOutTotal = total
    if (!changed) return
    if (total > 0) {
      this.logger.warn({ version, max: this.ipcacheMax, leftOut: total, ...leftOut },
        'datapath: the ipcache is full; the addresses left out are world (FQDN-learned first, then other nodes\' pods, then CIDR prefixes)')
    } else {
      this.logger.info({ version, max: this.ipcacheMax }, 'datapath: every ipcache entry fits again')
    }
  }

  /**
   * l7p_endpoints and the tc attachments for `snap`: entries of new (or changed) endpoints are
   * written before their interfaces are attached, entries of removed ones deleted after theirs
   * are detached. `full`: compare with the map read back (repairs counted when `known`).
   */
  async syncEndpoints (snap: Snapshot, heal: boolean, full: boolean, known = false): Promise<SyncCount> {
    const map = this.maps.l7p_endpoints
    let repairs = 0
    if (full) {
      const dump = dumpMap(map)
      if (known) repairs = countRepairs(dump, this.have.endpoints)
      this.have.endpoints = dump
    }
    const want = new Map<string, string>()
    const ek = Buffer.alloc(4)
    const ev = Buffer.alloc(SIZE.endpoint)
    for (const ep of snap.endpoints) {
      const idx = ifindexOf(ep.interface)
      if (idx === undefined) continue
      ek.writeUInt32LE(idx, 0)
      want.set(ek.toString('latin1'), encodeEndpoint(ev, { identity: ep.identity, ipv4: ep.ipv4, endpointId: ep.id, flags: ep.audit === true ? EP_AUDIT : 0 }).toString('latin1'))
    }
    const have = this.have.endpoints
    const first = writeKeys(map, have, (k) => want.get(k), [...want.keys()])
    await this.attachments.sync(snap, heal)
    const gone = writeKeys(map, have, (k) => want.get(k), [...have.keys()].filter((k) => !want.has(k)))
    return { written: first.written + gone.written, deleted: first.deleted + gone.deleted, repairs }
  }
}
