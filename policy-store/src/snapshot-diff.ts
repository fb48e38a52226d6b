/**
 * What a compile changed, as the datapath applies it: the kernel entries of the endpoints
 * compiled again, and the ipcache and endpoint lists of two snapshots compared.
 */
import { ipcacheDiff, type IpChange } from './ipcache-changes.js'
import type { Endpoint, KernelEntry, Snapshot, SnapshotDiff } from './types.js'

/** The kernel part of a diff: what the endpoints compiled again changed. */
export type KernelDiff = Pick<SnapshotDiff, 'kernelAdded' | 'kernelRemoved' | 'kernelEndpoints'>

export function entryKey (e: KernelEntry): string {
  return `${e.endpointId}|${e.direction}|${e.remoteIdentity}|${e.protocol}|${e.port}|${e.endPort}`
}

/** Appends the differences to `added` and `removed`; true when there are any. */
export function diffEntries (before: readonly KernelEntry[], after: readonly KernelEntry[], added: KernelEntry[], removed: KernelEntry[]): boolean {
  const counts = added.length + removed.length
  const old = new Map(before.map((e) => [entryKey(e), e]))
  for (const e of after) {
    const k = entryKey(e)
    const o = old.get(k)
    if (o === undefined) added.push(e)
    else {
      old.delete(k)
      if (o.verdict !== e.verdict) added.push(e) // an update of the key: in `added` only
    }
  }
  for (const o of old.values()) removed.push(o)
  return added.length + removed.length !== counts
}

export function diffSnapshots (prev: Snapshot | null, next: Snapshot, out: KernelDiff, ipChanges: IpChange[] | null): SnapshotDiff {
  const diff: SnapshotDiff = { from: prev?.version ?? 0, to: next.version, kernelAdded: out.kernelAdded, kernelRemoved: out.kernelRemoved, kernelEndpoints: out.kernelEndpoints, ipcacheAdded: [], ipcacheRemoved: [], endpointsAdded: [], endpointsRemoved: [] }
  if (ipChanges !== null && prev !== null) {
    // Known from the remote changes: no walk over the whole list.
    const { added, removed } = ipcacheDiff(ipChanges)
    diff.ipcacheAdded = added
    diff.ipcacheRemoved = removed
  } else if (prev?.ipcache !== next.ipcache) {
    // Entries are reused across snapshots: compare objects first, then contents of the rest.
    const before = prev?.ipcache ?? []
    const oldObj = new Set(before)
    const newObj = new Set(next.ipcache)
    const added = next.ipcache.filter((e) => !oldObj.has(e))
    const removed = before.filter((e) => !newObj.has(e))
    // By prefix (the map's key): a prefix whose value changed is an update, in `added` only.
    const removedByPrefix = new Map(removed.map((e) => [e.prefix, e]))
    const addedPrefixes = new Set(added.map((e) => e.prefix))
    diff.ipcacheAdded = added.filter((e) => {
      const o = removedByPrefix.get(e.prefix)
      return o === undefined || o.identity !== e.identity || o.endpointId !== e.endpointId || o.audit !== e.audit
    })
    diff.ipcacheRemoved = removed.filter((e) => !addedPrefixes.has(e.prefix))
  }
  if (prev?.endpoints !== next.endpoints) {
    const epKey = (e: Endpoint): string => `${e.id}|${e.identity}|${e.ipv4}|${e.interface}|${e.audit ? 1 : 0}`
    const oldEp = new Set((prev?.endpoints ?? []).map(epKey))
    const newEp = new Set(next.endpoints.map(epKey))
    diff.endpointsAdded = next.endpoints.filter((e) => !oldEp.has(epKey(e)))
    diff.endpointsRemoved = (prev?.endpoints ?? []).filter((e) => !newEp.has(epKey(e)))
  }
  return diff
}
