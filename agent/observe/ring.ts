/**
 * The agent's recent events (`warden observe --last N`) and their live subscribers (`--follow`).
 * A fixed-size ring: memory is bounded by `--observe-buffer`, whatever the traffic. A subscriber
 * that does not keep up is dropped by its owner (api/server.ts), never buffered without bound here.
 */
import type { ObservedEvent } from './event.js'

export class EventRing {
  private readonly buf: Array<ObservedEvent | undefined>
  private next = 0
  private count = 0
  private readonly subscribers = new Set<(e: ObservedEvent) => void>()
  /** Events ever added (the ring holds the last `capacity`). */
  total = 0

  constructor (readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw Object.assign(new Error(`event ring capacity must be a whole number >= 1, got ${String(capacity)}`), { code: 'WARDEN_ERR_CONFIG' })
    this.buf = new Array<ObservedEvent | undefined>(capacity)
  }

  push (e: ObservedEvent): void {
    this.buf[this.next] = e
    this.next = (this.next + 1) % this.capacity
    if (this.count < this.capacity) this.count++
    this.total++
    for (const fn of this.subscribers) fn(e)
  }

  /** The last `n` events matching `keep`, oldest first. */
  last (n: number, keep: (e: ObservedEvent) => boolean = () => true): ObservedEvent[] {
    const out: ObservedEvent[] = []
    for (let i = 1; i <= this.count && out.length < n; i++) {
      const e = this.buf[(this.next - i + this.capacity) % this.capacity] as ObservedEvent
      if (keep(e)) out.push(e)
    }
    return out.reverse()
  }

  /** Called with every event from now on; returns the unsubscribe function. */
  subscribe (fn: (e: ObservedEvent) => void): () => void {
    this.subscribers.add(fn)
    return () => { this.subscribers.delete(fn) }
  }

  get size (): number { return this.count }
  get followers (): number { return this.subscribers.size }
}
