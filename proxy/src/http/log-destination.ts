/**
 * A pino destination for the access log (one line per request): lines are kept in an array and
 * written with ONE write per batch (at least `minBytes`, or every `flushMs`). Measured reasons
 * (bench/micro/access-log.ts, this machine):
 * - sonic-boom (pino.destination) appends each line to a growing string and measures that
 *   string's UTF-8 length on every write, which flattens it each time: at minLength 4096 it
 *   cost about 4 us more per line than this array batcher.
 * - An async fs.write goes through libuv's thread pool: 20-40 us of process CPU per call
 *   against 1-2 us for a writeSync of the same 16 KiB batch; but per line, with 16 KiB batches,
 *   the two measured the same (4.5 vs 4.6 us). So the default is async, where a stalled log
 *   reader blocks a pool thread, never the proxy; `sync: true` writes with writeSync (pino's
 *   own default), which blocks on a blocking fd whose reader stalls. EAGAIN keeps the bytes
 *   for the next attempt in both modes.
 *
 * Bounded: beyond `maxBytes` waiting, lines are dropped and counted (`dropped`), so a stalled
 * log reader never grows the proxy's memory. Order is kept; at most one async write in flight.
 * For the agent: `pino(opts, batchedDestination(1))` and `end()` (or `flushSync()`) on shutdown.
 */
import { write, writeSync } from 'node:fs'

export interface BatchedDestinationOptions {
  /** Write once this many bytes (string length) are waiting. Default 16384. */
  minBytes?: number
  /** Drop lines beyond this many waiting bytes. Default 8 MiB. */
  maxBytes?: number
  /** Write what is waiting at least this often (ms). Default 100. */
  flushMs?: number
  /** writeSync per batch; default false (fs.write through the thread pool). */
  sync?: boolean
}

export class BatchedDestination {
  /** Lines dropped because `maxBytes` were already waiting (or batches lost to a write error). */
  dropped = 0
  private parts: string[] = []
  private waiting = 0
  /** Bytes taken from `parts` and not yet written (a partial write, EAGAIN, or an async write in flight). */
  private out: Buffer | null = null
  private writing = false
  private closed = false
  private readonly minBytes: number
  private readonly maxBytes: number
  private readonly sync: boolean
  private readonly timer: NodeJS.Timeout
  private readonly afterWrite: Array<() => void> = []

  constructor (readonly fd: number, opts: BatchedDestinationOptions = {}) {
    this.minBytes = opts.minBytes ?? 16384
    this.maxBytes = opts.maxBytes ?? 8 * 1024 * 1024
    this.sync = opts.sync ?? false
    this.timer = setInterval(() => { this.flush() }, opts.flushMs ?? 100)
    this.timer.unref()
  }

  /** pino's destination interface: one serialised line (with its newline). */
  write (line: string): boolean {
    const held = this.out === null ? 0 : this.out.length
    if (this.closed || held + this.waiting + line.length > this.maxBytes) { this.dropped++; return true }
    this.parts.push(line)
    this.waiting += line.length
    if (this.waiting >= this.minBytes) this.kick()
    return true
  }

  /** Write what is waiting now; `cb` runs once everything written so far is out (or could not be). */
  flush (cb?: () => void): void {
    if (cb !== undefined) this.afterWrite.push(cb)
    this.kick()
    if (!this.writing) this.settle()
  }

  /** Synchronous write of everything waiting, retrying EAGAIN (shutdown). An async write in flight may land after it. */
  flushSync (): void {
    if (this.writing) { if (this.parts.length > 0) this.writeAllSync(this.join()); return }
    this.take()
    const b = this.out
    this.out = null
    this.writeAllSync(b)
  }

  end (): void {
    this.flushSync()
    this.closed = true
    clearInterval(this.timer)
    this.settle()
  }

  private join (): Buffer {
    const b = Buffer.from(this.parts.join(''), 'utf8')
    this.parts = []
    this.waiting = 0
    return b
  }

  /** Move waiting lines behind the unwritten bytes. */
  private take (): void {
    if (this.parts.length === 0) return
    const b = this.join()
    this.out = this.out === null ? b : Buffer.concat([this.out, b])
  }

  private kick (): void {
    if (this.writing || this.closed) return
    this.take()
    if (this.out === null) return
    if (this.sync) this.writeSyncOnce()
    else this.writeAsync()
  }

  private writeSyncOnce (): void {
    const b = this.out as Buffer
    try {
      let off = 0
      while (off < b.length) off += writeSync(this.fd, b, off)
      this.out = null
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EAGAIN') return // kept; the timer retries
      this.out = null
      this.dropped++
    }
  }

  private writeAsync (): void {
    const b = this.out as Buffer
    this.writing = true
    write(this.fd, b, 0, b.length, null, (err, n) => {
      this.writing = false
      if (err !== null) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') { this.out = null; this.dropped++ }
      } else {
        this.out = n >= b.length ? null : b.subarray(n)
      }
      if (this.waiting >= this.minBytes || (this.out !== null && err === null)) this.kick()
      if (!this.writing) this.settle()
    })
  }

  private writeAllSync (b: Buffer | null): void {
    if (b === null) return
    let off = 0
    for (let again = 0; off < b.length;) {
      try {
        off += writeSync(this.fd, b, off)
      } catch (err) {
        // A full non-blocking pipe at shutdown: retry a while, then give the batch up.
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN' && ++again < 10_000) continue
        this.dropped++
        return
      }
    }
  }

  private settle (): void {
    if (this.afterWrite.length === 0) return
    const cbs = this.afterWrite.splice(0)
    for (const cb of cbs) cb()
  }
}

export function batchedDestination (fd: number, opts?: BatchedDestinationOptions): BatchedDestination {
  return new BatchedDestination(fd, opts)
}
