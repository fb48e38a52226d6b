/**
 * The pino destination of an HTTP proxy worker: lines are encoded into a batch buffer, and the
 * batch is handed to the main thread (transferred, not copied), which appends it to its own
 * destination (BatchedDestination.writeBytes). One writer on stdout: a pipe keeps a write whole
 * only up to 4 KiB, and two threads writing batches to it would cut each other's lines.
 * A batch goes every `minBytes` or `flushMs`.
 *
 * Bounded: a busy main thread does not read its message port, and batches posted to it wait
 * there. The main thread acknowledges each batch once it has taken it (`acked`); beyond
 * `maxUnackedBytes` posted and not acknowledged, lines are dropped and counted (`dropped`), as
 * the main thread's own destination does when stdout stalls.
 */

/** Batch buffer size: the default batch and the line that overflows it. */
const FILL_BYTES = 64 * 1024

export class PortDestination {
  private fill = Buffer.allocUnsafeSlow(FILL_BYTES)
  private used = 0
  private readonly minBytes: number
  private readonly maxUnacked: number
  /** Bytes posted that the main thread has not acknowledged yet. */
  private unacked = 0
  private readonly timer: NodeJS.Timeout
  /** Lines dropped because `maxUnackedBytes` were waiting on the main thread. */
  dropped = 0

  /** `post` gets each batch; it owns the bytes (their ArrayBuffer can be transferred). */
  constructor (private readonly post: (batch: Uint8Array) => void, opts: { minBytes?: number, flushMs?: number, maxUnackedBytes?: number } = {}) {
    this.minBytes = opts.minBytes ?? 16384
    this.maxUnacked = opts.maxUnackedBytes ?? 8 * 1024 * 1024
    this.timer = setInterval(() => { this.flush() }, opts.flushMs ?? 100)
    this.timer.unref()
  }

  /** pino's destination interface: one serialised line (with its newline). */
  write (line: string): boolean {
    if (this.unacked + this.used + line.length > this.maxUnacked) { this.dropped++; return true }
    // UTF-8 takes at most 3 bytes per UTF-16 unit: make room for the worst case first.
    if (this.used + line.length * 3 > this.fill.length) {
      this.flush()
      if (line.length * 3 > this.fill.length) this.fill = Buffer.allocUnsafeSlow(line.length * 3)
    }
    this.used += this.fill.write(line, this.used)
    if (this.used >= this.minBytes) this.flush()
    return true
  }

  /** Hand over what is waiting. */
  flush (): void {
    if (this.used === 0) return
    const batch = new Uint8Array(this.fill.buffer, this.fill.byteOffset, this.used)
    this.fill = Buffer.allocUnsafeSlow(FILL_BYTES)
    this.unacked += this.used
    this.used = 0
    this.post(batch)
  }

  /** The main thread took `bytes` of what was posted. */
  acked (bytes: number): void {
    this.unacked = Math.max(0, this.unacked - bytes)
  }

  end (): void {
    this.flush()
    clearInterval(this.timer)
  }
}
