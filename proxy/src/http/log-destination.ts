/**
 * A pino destination for the access log (one line per request): lines are kept in an array and
 * written with ONE fs.write per batch (at least `minBytes`, or every `flushMs`). sonic-boom
 * (pino.destination) appends each line to a growing string and measures that string's UTF-8
 * length on every write, which flattens it each time: bench/micro/access-log.ts measured
 * sonic-boom at minLength 4096 about 4 us dearer per line than this on this machine.
 *
 * Bounded: beyond `maxBytes` waiting, lines are dropped and counted (`dropped`), so a stalled
 * log reader never grows the proxy's memory. Order is kept; at most one write is in flight.
 * For the agent: `pino(opts, batchedDestination(1))` and `flushSync()` on shutdown.
 */
import { writeSync, write } from 'node:fs'

export interface BatchedDestinationOptions {
  /** Write once this many bytes (string length) are waiting. Default 16384. */
  minBytes?: number
  /** Drop lines beyond this many waiting bytes. Default 8 MiB. */
  maxBytes?: number
  /** Write what is waiting at least this often (ms). Default 100. */
  flushMs?: number
}

export class BatchedDestination {
  /** Lines dropped because `maxBytes` were already waiting (or the fd failed). */
  dropped = 0
  private parts: string[] = []
  private waiting = 0
  private writing = false
  private closed = false
  private readonly minBytes: number
  private readonly maxBytes: number
  private readonly timer: NodeJS.Timeout
  private readonly afterWrite: Array<() => void> = []

  constructor (readonly fd: number, opts: BatchedDestinationOptions = {}) {
    this.minBytes = opts.minBytes ?? 16384
    this.maxBytes = opts.maxBytes ?? 8 * 1024 * 1024
    this.timer = setInterval(() => { this.flush() }, opts.flushMs ?? 100)
    this.timer.unref()
  }

  /** pino's destination interface: one serialised line (with its newline). */
  write (line: string): boolean {
    if (this.closed || this.waiting + line.length > this.maxBytes) { this.dropped++; return true }
    this.parts.push(line)
    this.waiting += line.length
    if (!this.writing && this.waiting >= this.minBytes) this.start()
    return true
  }

  /** Write what is waiting now; `cb` runs once it (and any write in flight) is out. */
  flush (cb?: () => void): void {
    if (cb !== undefined) this.afterWrite.push(cb)
    if (!this.writing) {
      if (this.parts.length > 0) this.start()
      else this.settle()
    }
  }

  /** Synchronous write of everything waiting (shutdown). A write already in flight may land after it. */
  flushSync (): void {
    if (this.parts.length === 0) return
    const data = Buffer.from(this.parts.join(''), 'utf8')
    this.parts = []
    this.waiting = 0
    try {
      let off = 0
      while (off < data.length) off += writeSync(this.fd, data, off)
    } catch {
      this.dropped++
    }
  }

  end (): void {
    this.flushSync()
    this.closed = true
    clearInterval(this.timer)
  }

  private start (): void {
    const data = Buffer.from(this.parts.join(''), 'utf8')
    this.parts = []
    this.waiting = 0
    this.writing = true
    this.writeOut(data, 0)
  }

  private writeOut (data: Buffer, off: number): void {
    write(this.fd, data, off, data.length - off, null, (err, n) => {
      if (err !== null) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') { setTimeout(() => { this.writeOut(data, off) }, 10).unref(); return }
        this.dropped++ // the batch is lost; keep logging what comes next
      } else if (off + n < data.length) {
        this.writeOut(data, off + n)
        return
      }
      this.writing = false
      if (this.waiting >= this.minBytes || (this.afterWrite.length > 0 && this.parts.length > 0)) this.start()
      else this.settle()
    })
  }

  private settle (): void {
    const cbs = this.afterWrite.splice(0)
    for (const cb of cbs) cb()
  }
}

export function batchedDestination (fd: number, opts?: BatchedDestinationOptions): BatchedDestination {
  return new BatchedDestination(fd, opts)
}
