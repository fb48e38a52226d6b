/**
 * The agent's side of l7p_ct, the conntrack map the programs write: deleting expired entries
 * (Cilium's CT GC), answering whether an address has a live connection, counting entries.
 * Every read is one batched dump through buffers reused from one dump to the next.
 */
import type { RawMap } from 'bpf'
import { monotonicNowNs } from './events.js'
import { SIZE, writeIpv4 } from './layout.js'
import { batchBuffers, dumpBatched, type BatchBuffers } from './sync.js'

/** Expired entries deleted per run at most: bounds the bpf() calls one run makes on the agent's thread. */
const CT_GC_MAX_PER_RUN = 16384

export class Conntrack {
  /** Expired conntrack entries deleted since open. */
  collected = 0
  private readonly kb = Buffer.alloc(4)
  /** Addresses at either end of a live CT entry, for this turn of the event loop only. */
  private liveCt: Set<number> | undefined
  /** Reused buffers of the CT dump. */
  private ctBatch: BatchBuffers | undefined

  constructor (private readonly ct: RawMap) {}

  /** Every entry through one batched dump; a kernel without batched lookups on this map type: one walk. */
  private each (fn: (key: Buffer, kOff: number, val: Buffer, vOff: number) => void): void {
    if (!dumpBatched(this.ct, this.ctBatch ??= batchBuffers(this.ct), fn)) {
      for (const [k, v] of this.ct.entries()) fn(k, 0, v, 0)
    }
  }

  /**
   * Delete the conntrack entries that expired (Cilium's CT GC). One batched dump finds them;
   * each is looked up again right before its delete, so an entry the program re-created for the
   * same tuple in between (a new connection reusing the ports) is kept. Returns how many went.
   */
  collect (): number {
    const now = monotonicNowNs()
    const expired: Buffer[] = []
    this.each((key, kOff, val, vOff) => {
      if (val.readBigUInt64LE(vOff) <= now && expired.length < CT_GC_MAX_PER_RUN) expired.push(Buffer.from(key.subarray(kOff, kOff + SIZE.ctKey)))
    })
    let deleted = 0
    for (const k of expired) {
      const v = this.ct.get(k)
      if (v === undefined || v.readBigUInt64LE(0) > now) continue
      this.ct.delete(k)
      deleted++
    }
    this.collected += deleted
    return deleted
  }

  /**
   * Answered from one dump of l7p_ct per turn of the event loop: the DNS proxy's GC asks for
   * every expiring address in one go, and a walk per address (two bpf() calls per entry) on the
   * thread that serves DNS and HTTP grew with connections x zombies. The set of addresses at
   * either end of a live entry is built with batched lookups and dropped once this turn ends, so
   * an answer is never older than the synchronous run that asked.
   */
  hasConnection (remoteIpv4: string): boolean {
    this.kb.fill(0, 0, 4)
    writeIpv4(this.kb, 0, remoteIpv4)
    return this.liveAddresses().has(this.kb.readUInt32BE(0))
  }

  private liveAddresses (): Set<number> {
    if (this.liveCt !== undefined) return this.liveCt
    const live = new Set<number>()
    const now = monotonicNowNs()
    const nowHi = Number(now >> 32n)
    const nowLo = Number(now & 0xffffffffn)
    this.each((key, kOff, val, vOff) => {
      // expires (u64 LE) > now, without a BigInt per entry
      const hi = val.readUInt32LE(vOff + 4)
      if (hi < nowHi || (hi === nowHi && val.readUInt32LE(vOff) <= nowLo)) return
      live.add(key.readUInt32BE(kOff))
      live.add(key.readUInt32BE(kOff + 4))
    })
    this.liveCt = live
    setImmediate(() => { this.liveCt = undefined })
    return live
  }

  /** Entries the map holds now (one batched dump: only when an operator asks). */
  count (): number {
    let n = 0
    this.each(() => { n++ })
    return n
  }
}
