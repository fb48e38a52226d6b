/**
 * The tc attachments: every endpoint interface and uplink gets the programs on the hooks it
 * needs, and what is no longer wanted is detached. l7p_attach records, per ifindex, the hooks
 * attached and whether this agent made the clsact qdisc, so a restart or an uninstall undoes
 * only what warden did.
 */
import type { Logger } from 'pino'
import type { RawMap } from 'bpf'
import type { Snapshot } from '../../policy-store/src/types.js'
import { HOOK_EGRESS, HOOK_INGRESS, SIZE, decodeAttach, encodeAttach } from './layout.js'
import { attachHook, detachHook, ifnameOf, removeQdiscIfEmpty } from './loader.js'
import { ifindexOf } from './sys.js'

export class Attachments {
  /** Endpoint (and uplink) interfaces not found yet: not attached, nothing enforced there. */
  pending = new Set<string>()
  private readonly kb = Buffer.alloc(4)

  constructor (
    private readonly map: RawMap,
    private readonly bpffs: string,
    private readonly uplinks: readonly string[],
    private readonly logger: Logger
  ) {}

  private attachRecord (ifindex: number): { hooks: number, madeQdisc: boolean } | undefined {
    this.kb.writeUInt32LE(ifindex, 0)
    const v = this.map.get(this.kb.subarray(0, 4))
    return v === undefined ? undefined : decodeAttach(v)
  }

  private async attach (ifname: string, ifindex: number, hooks: number, heal: boolean): Promise<void> {
    const rec = this.attachRecord(ifindex)
    if (rec !== undefined && rec.hooks === hooks && !heal) return
    let made = rec?.madeQdisc ?? false
    if ((hooks & HOOK_INGRESS) !== 0) made = await attachHook(this.bpffs, ifname, 'ingress') || made
    if ((hooks & HOOK_EGRESS) !== 0) {
      made = await attachHook(this.bpffs, ifname, 'egress') || made
    } else if (rec !== undefined && (rec.hooks & HOOK_EGRESS) !== 0) {
      await detachHook(ifname, 'egress')
    }
    const key = Buffer.alloc(4)
    key.writeUInt32LE(ifindex, 0)
    this.map.set(key, encodeAttach(Buffer.alloc(SIZE.attach), { hooks, madeQdisc: made }))
    this.logger.info({ interface: ifname, ifindex, hooks }, 'datapath attached')
  }

  /** Attach to every endpoint interface and uplink; detach what is no longer wanted. */
  async sync (snap: Snapshot, heal: boolean): Promise<void> {
    const want = new Map<number, { name: string, hooks: number }>()
    const pending = new Set<string>()
    for (const ep of snap.endpoints) {
      const idx = ifindexOf(ep.interface)
      if (idx === undefined) { pending.add(ep.interface); continue }
      want.set(idx, { name: ep.interface, hooks: HOOK_INGRESS | HOOK_EGRESS })
    }
    for (const up of this.uplinks) {
      const idx = ifindexOf(up)
      if (idx === undefined) { pending.add(up); continue }
      const cur = want.get(idx)
      // egress too: to_workload records the proxies' upstream flows leaving here, whose
      // replies come back on this interface addressed to a workload (see L7P_MARK_PROXY)
      want.set(idx, { name: up, hooks: (cur?.hooks ?? 0) | HOOK_INGRESS | HOOK_EGRESS })
    }
    for (const name of pending) {
      if (!this.pending.has(name)) this.logger.warn({ interface: name }, 'interface not found; will attach when it appears')
    }
    this.pending = pending
    for (const [idx, w] of want) await this.attach(w.name, idx, w.hooks, heal)
    for (const [k, v] of [...this.map.entries()]) {
      const idx = k.readUInt32LE(0)
      if (want.has(idx)) continue
      await detachIfindex(idx, decodeAttach(v))
      this.map.delete(k)
      this.logger.info({ ifindex: idx }, 'datapath detached')
    }
  }
}

/** Detach what the record says this agent attached (and the qdisc it made) from one interface. */
export async function detachIfindex (ifindex: number, rec: { hooks: number, madeQdisc: boolean }): Promise<void> {
  const name = ifnameOf(ifindex)
  if (name === undefined) return // the interface is gone, and its filters with it
  if ((rec.hooks & HOOK_INGRESS) !== 0) await detachHook(name, 'ingress')
  if ((rec.hooks & HOOK_EGRESS) !== 0) await detachHook(name, 'egress')
  if (rec.madeQdisc) await removeQdiscIfEmpty(name)
}
