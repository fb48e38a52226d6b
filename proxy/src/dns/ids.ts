/**
 * Random numbers for upstream query IDs and socket choice, from the CSPRNG in blocks:
 * an off-path spoofer has to guess them (RFC 5452 §9), and one randomFillSync per 2048
 * queries costs far less than one crypto call per query.
 */
import { randomFillSync } from 'node:crypto'

export class RandomPool {
  private readonly buf = Buffer.allocUnsafe(4096)
  private pos = this.buf.length

  /** A uniformly random 16-bit number. */
  u16 (): number {
    if (this.pos + 2 > this.buf.length) { randomFillSync(this.buf); this.pos = 0 }
    const v = this.buf.readUInt16BE(this.pos)
    this.pos += 2
    return v
  }
}
