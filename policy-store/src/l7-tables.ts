/**
 * The snapshot's L7 tables: one table per port segment of an (endpoint, direction), looked up
 * by `l7Key(endpointId, direction, port)` for any port inside the segment. An HTTP rule on
 * `4096-8191` is ONE table, not 4,096: a single port is a Map hit, a port inside a range a binary
 * search over the range tables' first keys. Segments of one (endpoint, direction) never overlap
 * (resolve.ts cuts them at every range boundary), and l7Key orders ports of one (endpoint,
 * direction) contiguously, so one sorted array serves every endpoint.
 *
 * It is a Map (keyed by the first port's l7Key) so that iteration, size and structured cloning
 * of the entries stay what consumers already use; only `get` and `has` also answer for the
 * other ports of a range.
 */
import type { L7PortTable } from './types.js'

export class L7Tables<P> extends Map<number, L7PortTable<P>> {
  /** First and last key of every range table, sorted by first key; rebuilt after a change. */
  private starts: number[] | null = null
  private ends: number[] = []
  private ranged: L7PortTable<P>[] = []

  override set (key: number, table: L7PortTable<P>): this {
    super.set(key, table)
    this.starts = null
    return this
  }

  override delete (key: number): boolean {
    this.starts = null
    return super.delete(key)
  }

  override clear (): void {
    this.starts = null
    super.clear()
  }

  override get (key: number): L7PortTable<P> | undefined {
    const exact = super.get(key)
    if (exact !== undefined) return exact
    if (this.starts === null) this.index()
    const s = this.starts as number[]
    // The last range starting at or below key.
    let lo = 0
    let hi = s.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (s[mid] <= key) lo = mid + 1
      else hi = mid
    }
    return lo > 0 && key <= this.ends[lo - 1] ? this.ranged[lo - 1] : undefined
  }

  override has (key: number): boolean {
    return this.get(key) !== undefined
  }

  private index (): void {
    const list: [number, L7PortTable<P>][] = []
    for (const [k, t] of super.entries()) if (t.endPort > t.port) list.push([k, t])
    list.sort((a, b) => a[0] - b[0])
    this.starts = list.map(([k]) => k)
    this.ends = list.map(([k, t]) => k + t.endPort - t.port)
    this.ranged = list.map(([, t]) => t)
  }
}
