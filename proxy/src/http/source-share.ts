/**
 * Each client address's share of a worker's client connections. Without it one pod holding
 * `maxConnections` idle connections (each kept until the headers or idle timeout) would have
 * every other tenant on the node refused at accept. Counted per client address (IPv4-mapped
 * addresses as their IPv4 form), HTTP/1 and HTTP/2 together: the proxy takes one at accept and
 * gives it back once, when the connection's last socket closes (index.ts).
 *
 * Memory is bounded by the connections held: an address has an entry only while it holds at
 * least one connection, and the time of its last refusal log line lives in that entry.
 */

/** At most one refusal log line per address per this interval: a hostile client must not flood the log. */
export const REFUSAL_LOG_INTERVAL_MS = 10_000

interface Held { n: number, loggedAt: number }

export class SourceShare {
  private readonly held = new Map<string, Held>()

  constructor (readonly perSource: number) {}

  /** Take one connection for `address`, or false when it already holds its share. */
  take (address: string): boolean {
    const h = this.held.get(address)
    if (h === undefined) {
      this.held.set(address, { n: 1, loggedAt: 0 })
      return true
    }
    if (h.n >= this.perSource) return false
    h.n++
    return true
  }

  /** Give back one connection taken for `address`. */
  release (address: string): void {
    const h = this.held.get(address)
    if (h === undefined) return
    if (--h.n <= 0) this.held.delete(address)
  }

  /**
   * Whether a refusal of `address` should be logged now (and, if so, not again for an
   * interval). A refused address holds its share, so it has an entry to keep the time in.
   */
  shouldLog (address: string, now: number): boolean {
    const h = this.held.get(address)
    if (h === undefined || now - h.loggedAt < REFUSAL_LOG_INTERVAL_MS) return false
    h.loggedAt = now
    return true
  }

  /** Connections `address` holds now. */
  count (address: string): number {
    return this.held.get(address)?.n ?? 0
  }
}
