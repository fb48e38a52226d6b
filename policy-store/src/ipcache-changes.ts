/**
 * The ipcache part of a compile when only other nodes' entries changed and the cluster store
 * named them (RemoteState.ipcacheChanges): applied to the compiler's fixed part, and turned into
 * the snapshot diff, without a walk over every entry.
 */
import { parseIPv4 } from './cidr.js'
import type { IpcacheChanges, IpcacheEntry } from './types.js'

/** One ipcache prefix set (`entry`) or removed (null); `old` is what it held before. */
export interface IpChange { prefix: string, old: IpcacheEntry | undefined, entry: IpcacheEntry | null }

/**
 * Apply other nodes' changed prefixes to the ipcache's fixed part: this node's own prefixes
 * (world, host addresses, endpoints) win and are left alone. Returns what changed.
 */
export function applyRemoteChanges (base: { fixed: Map<string, IpcacheEntry>, taken: Set<number>, own: ReadonlySet<string> }, changed: IpcacheChanges['changed']): IpChange[] {
  const out: IpChange[] = []
  for (const c of changed) {
    if (base.own.has(c.prefix)) continue
    const old = base.fixed.get(c.prefix)
    if (old === (c.entry ?? undefined)) continue
    const addr = c.prefix.endsWith('/32') ? parseIPv4(c.prefix.slice(0, -3)) : null
    if (c.entry === null) {
      base.fixed.delete(c.prefix)
      if (addr !== null) base.taken.delete(addr)
    } else {
      base.fixed.set(c.prefix, c.entry)
      if (addr !== null) base.taken.add(addr)
    }
    out.push({ prefix: c.prefix, old, entry: c.entry })
  }
  return out
}

function sameEntry (a: IpcacheEntry, b: IpcacheEntry): boolean {
  return a.identity === b.identity && a.endpointId === b.endpointId && a.audit === b.audit
}

/** The writes and deletes `changes` make, in the shape of a SnapshotDiff's ipcache part. */
export function ipcacheDiff (changes: readonly IpChange[]): { added: IpcacheEntry[], removed: IpcacheEntry[] } {
  // A prefix changed twice (remote states merged while a compile waited): its first `old`
  // against its last entry.
  const net = new Map<string, { old: IpcacheEntry | undefined, entry: IpcacheEntry | null }>()
  for (const c of changes) {
    const n = net.get(c.prefix)
    if (n === undefined) net.set(c.prefix, { old: c.old, entry: c.entry })
    else n.entry = c.entry
  }
  const added: IpcacheEntry[] = []
  const removed: IpcacheEntry[] = []
  for (const c of net.values()) {
    if (c.entry === null) { if (c.old !== undefined) removed.push(c.old) } else if (c.old === undefined || !sameEntry(c.old, c.entry)) added.push(c.entry)
  }
  return { added, removed }
}
