/**
 * Which kernel entry decided a flow, and so which rule: the program's first-match order
 * (policy-store/src/types.ts, KernelEntry) replayed over the snapshot's entries of one
 * endpoint and direction. Lets a kernel event name its rule without the kernel carrying one.
 */
import type { KernelEntry, Snapshot } from '../../policy-store/src/types.js'

const index = new WeakMap<Snapshot, Map<number, KernelEntry[]>>()

function entriesOf (snap: Snapshot, endpointId: number, direction: 0 | 1): KernelEntry[] {
  let m = index.get(snap)
  if (m === undefined) {
    m = new Map()
    for (const e of snap.kernel) {
      const k = e.endpointId * 2 + e.direction
      let list = m.get(k)
      if (list === undefined) m.set(k, list = [])
      list.push(e)
    }
    index.set(snap, m)
  }
  return m.get(endpointId * 2 + direction) ?? []
}

export interface KernelDecision {
  /** The entry the program would find; undefined for a default-deny miss. */
  entry?: KernelEntry
  /** Why, when no entry matched. */
  note?: string
}

/** `proto` is the IP protocol number, `port` the destination port (0 for port-less protocols). */
export function kernelDecision (snap: Snapshot, endpointId: number, direction: 0 | 1, remote: number, proto: number, port: number): KernelDecision {
  const list = entriesOf(snap, endpointId, direction)
  const inPort = (e: KernelEntry): boolean => e.port !== 0 && port >= e.port && port <= (e.endPort || e.port)
  const steps: Array<(e: KernelEntry) => boolean> = [
    (e) => e.remoteIdentity === remote && e.protocol === proto && inPort(e),
    (e) => e.remoteIdentity === 0 && e.protocol === proto && inPort(e),
    (e) => e.remoteIdentity === remote && e.protocol === proto && e.port === 0,
    (e) => e.remoteIdentity === 0 && e.protocol === proto && e.port === 0,
    (e) => e.remoteIdentity === remote && e.protocol === 0,
    (e) => e.remoteIdentity === 0 && e.protocol === 0
  ]
  for (const step of steps) {
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
