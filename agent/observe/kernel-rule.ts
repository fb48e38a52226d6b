/**
 * Which kernel entry decided a flow, and so which rule: the program's first-match order
 * (policy-store/src/types.ts, KernelEntry) replayed over the snapshot's entries of one
 * endpoint and direction. Lets a kernel event name its rule without the kernel carrying one.
 */
import type { KernelEntry, Snapshot } from '../../policy-store/src/types.js'

/** Per snapshot: (endpoint, direction) -> remote identity (0 = any) -> its entries. Built once, on first use. */
const index = new WeakMap<Snapshot, Map<number, Map<number, KernelEntry[]>>>()

function entriesOf (snap: Snapshot, endpointId: number, direction: 0 | 1, remote: number): readonly KernelEntry[] {
  let m = index.get(snap)
  if (m === undefined) {
    m = new Map()
    for (const e of snap.kernel) {
      const k = e.endpointId * 2 + e.direction
      let byRemote = m.get(k)
      if (byRemote === undefined) m.set(k, byRemote = new Map<number, KernelEntry[]>())
      let list = byRemote.get(e.remoteIdentity)
      if (list === undefined) byRemote.set(e.remoteIdentity, list = [])
      list.push(e)
    }
    index.set(snap, m)
  }
  return m.get(endpointId * 2 + direction)?.get(remote) ?? []
}

export interface KernelDecision {
  /** The entry the program would find; undefined for a default-deny miss. */
  entry?: KernelEntry
  /** Why, when no entry matched. */
  note?: string
}

/** `proto` is the IP protocol number, `port` the destination port (0 for port-less protocols). */
export function kernelDecision (snap: Snapshot, endpointId: number, direction: 0 | 1, remote: number, proto: number, port: number): KernelDecision {
  // Only the entries for this peer and for any peer are read: a handful, whatever the policy's size.
  const mine = remote === 0 ? [] : entriesOf(snap, endpointId, direction, remote)
  const any = entriesOf(snap, endpointId, direction, 0)
  const inPort = (e: KernelEntry): boolean => e.port !== 0 && port >= e.port && port <= (e.endPort || e.port)
  const steps: Array<[readonly KernelEntry[], (e: KernelEntry) => boolean]> = [
    [mine, (e) => e.protocol === proto && inPort(e)],
    [any, (e) => e.protocol === proto && inPort(e)],
    [mine, (e) => e.protocol === proto && e.port === 0],
    [any, (e) => e.protocol === proto && e.port === 0],
    [mine, (e) => e.protocol === 0],
    [any, (e) => e.protocol === 0]
  ]
  for (const [list, step] of steps) {
    // among overlapping ranges the program's LPM finds the narrowest: prefer the smallest span
    let best: KernelEntry | undefined
    for (const e of list) {
      if (!step(e)) continue
      if (best === undefined || span(e) < span(best)) best = e
    }
    if (best !== undefined) return { entry: best }
  }
  return { note: `default deny: no rule allows identity ${remote} ${direction === 0 ? 'in' : 'out'} on this port` }
}

function span (e: KernelEntry): number { return e.port === 0 ? 65536 : (e.endPort || e.port) - e.port }
