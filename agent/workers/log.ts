/**
 * The pino destination of an HTTP proxy worker: lines are encoded into a batch buffer, and the
 * batch is handed to the main thread (transferred, not copied), which appends it to its own
 * destination (BatchedDestination.writeBytes). One writer on stdout: a pipe keeps a write whole
 * only up to 4 KiB, and two threads writing batches to it would cut each other's lines.
 * A batch goes every `minBytes` or `flushMs`; memory is bounded where the lines are written (the
 * main thread's destination drops beyond its limit when stdout stalls).
 */

/** Batch buffer size: the default batch and the line that overflows it. */
const FILL_BYTES = 64 * 1024

export class PortDestination {
  private fill = Buffer.allocUnsafeSlow(FILL_BYTES)
  private used = 0
  private readonly minBytes: number
  private readonly timer: NodeJS.Timeout

  /** `post` gets each batch; it owns the bytes (their ArrayBuffer can be transferred). */
  constructor (private readonly post: (batch: Uint8Array) => void, opts: { minBytes?: number, flushMs?: number } = {}) {
    this.minBytes = opts.minBytes ?? 16384
    this.timer = setInterval(() => { this.flush() }, opts.flushMs ?? 100)
    this.timer.unref()
  }

  /** pino's destination interface: one serialised line (with its newline). */
  write (line: string): boolean {
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
    this.used = 0
    this.post(batch)
  }

  end (): void {
    this.flush()
    clearInterval(this.timer)
  }
}
