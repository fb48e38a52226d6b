/**
 * A raw HTTP/2 client for the limit and attack tests: it writes frames byte by byte as the
 * test says (including ones no well-behaved library would send) and reads every frame the
 * proxy sends back, parsing only the frame headers and the error codes of RST_STREAM and
 * GOAWAY. Header blocks are HPACK literals without indexing and without Huffman coding.
 */
import net from 'node:net'
import { H2_PREFACE } from '../../proxy/src/http2/preface.js'
import type { Tap } from './http-proxy.js'

export const FRAME = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8, CONTINUATION: 9 } as const
export const FLAG = { END_STREAM: 1, ACK: 1, END_HEADERS: 4 } as const
export const SETTING = { HEADER_TABLE_SIZE: 1, MAX_CONCURRENT_STREAMS: 3, INITIAL_WINDOW_SIZE: 4 } as const
export const ERR = { NO_ERROR: 0, PROTOCOL_ERROR: 1, FRAME_SIZE_ERROR: 6, REFUSED_STREAM: 7, CANCEL: 8, COMPRESSION_ERROR: 9, ENHANCE_YOUR_CALM: 11 } as const

export interface Frame { type: number, flags: number, stream: number, payload: Buffer }

export function frame (type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(9)
  h.writeUIntBE(payload.length, 0, 3)
  h[3] = type
  h[4] = flags
  h.writeUInt32BE(stream & 0x7fffffff, 5)
  return Buffer.concat([h, payload])
}

export function settings (pairs: Array<[number, number]> = []): Buffer {
  const p = Buffer.alloc(pairs.length * 6)
  pairs.forEach(([id, v], i) => { p.writeUInt16BE(id, i * 6); p.writeUInt32BE(v, i * 6 + 2) })
  return frame(FRAME.SETTINGS, 0, 0, p)
}

export function rstStream (stream: number, code: number): Buffer {
  const p = Buffer.alloc(4)
  p.writeUInt32BE(code)
  return frame(FRAME.RST_STREAM, 0, stream, p)
}

/** HPACK integer with an N-bit prefix (RFC 7541 §5.1); `first` holds the bits above the prefix. */
export function hpackInt (value: number, prefixBits: number, first = 0): Buffer {
  const max = (1 << prefixBits) - 1
  if (value < max) return Buffer.from([first | value])
  const out = [first | max]
  value -= max
  while (value >= 128) { out.push((value % 128) + 128); value = Math.floor(value / 128) }
  out.push(value)
  return Buffer.from(out)
}

/** A literal header field without indexing, new name (RFC 7541 §6.2.2). */
export function literal (name: string, value: string): Buffer {
  const n = Buffer.from(name, 'latin1')
  const v = Buffer.from(value, 'latin1')
  return Buffer.concat([Buffer.from([0]), hpackInt(n.length, 7), n, hpackInt(v.length, 7), v])
}

/** The header block of a request (pseudo-headers first, then `extra`). */
export function requestBlock (method: string, path: string, extra: Array<[string, string]> = [], authority = 'billing:8080'): Buffer {
  return Buffer.concat([literal(':method', method), literal(':scheme', 'http'), literal(':path', path),
    literal(':authority', authority), ...extra.map(([n, v]) => literal(n, v))])
}

export function headers (stream: number, block: Buffer, endStream: boolean, endHeaders = true): Buffer {
  return frame(FRAME.HEADERS, (endStream ? FLAG.END_STREAM : 0) | (endHeaders ? FLAG.END_HEADERS : 0), stream, block)
}

export class RawH2 {
  readonly frames: Frame[] = []
  closed = false
  private buf = Buffer.alloc(0)
  private waiters: Array<() => void> = []

  private constructor (readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => { this.buf = Buffer.concat([this.buf, d]); this.parse(); this.wake() })
    socket.on('error', () => {})
    socket.on('close', () => { this.closed = true; this.wake() })
  }

  /** Connect from `localAddress`, send the preface and a SETTINGS frame with `pairs`. */
  static async connect (t: Tap, port: number, localAddress: string, pairs: Array<[number, number]> = []): Promise<RawH2> {
    const s = net.connect({ host: '127.0.0.1', port, localAddress })
    await new Promise<void>((resolve, reject) => { s.once('connect', resolve); s.once('error', reject) })
    t.teardown(() => { s.destroy() })
    const c = new RawH2(s)
    s.write(Buffer.concat([H2_PREFACE, settings(pairs)]))
    return c
  }

  /** Connect, then wait for the proxy's SETTINGS and acknowledge them (its limits now apply). */
  static async handshake (t: Tap, port: number, localAddress: string, pairs: Array<[number, number]> = []): Promise<RawH2> {
    const c = await RawH2.connect(t, port, localAddress, pairs)
    const f = await c.waitFor(x => x.type === FRAME.SETTINGS && (x.flags & FLAG.ACK) === 0)
    if (f === null) throw new Error('no SETTINGS from the proxy')
    c.write(frame(FRAME.SETTINGS, FLAG.ACK, 0))
    return c
  }

  write (b: Buffer): boolean { return this.socket.write(b) }

  private parse (): void {
    while (this.buf.length >= 9) {
      const len = this.buf.readUIntBE(0, 3)
      if (this.buf.length < 9 + len) return
      this.frames.push({ type: this.buf[3], flags: this.buf[4], stream: this.buf.readUInt32BE(5) & 0x7fffffff, payload: this.buf.subarray(9, 9 + len) })
      this.buf = this.buf.subarray(9 + len)
    }
  }

  private wake (): void { const w = this.waiters; this.waiters = []; for (const f of w) f() }

  /** The first frame (already received or coming) that `pred` accepts, or null at close/timeout. */
  async waitFor (pred: (f: Frame) => boolean, timeoutMs = 5000): Promise<Frame | null> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const f = this.frames.find(pred)
      if (f !== undefined) return f
      const left = deadline - Date.now()
      if (this.closed || left <= 0) return null
      await new Promise<void>(resolve => {
        const timer = setTimeout(resolve, left)
        this.waiters.push(() => { clearTimeout(timer); resolve() })
      })
    }
  }

  /** The GOAWAY's error code, once one arrives (null: none before close/timeout). */
  async goaway (timeoutMs = 5000): Promise<number | null> {
    const f = await this.waitFor(x => x.type === FRAME.GOAWAY, timeoutMs)
    return f === null ? null : f.payload.readUInt32BE(4)
  }

  /** The RST_STREAM code for `stream` (null: none). */
  async rst (stream: number, timeoutMs = 5000): Promise<number | null> {
    const f = await this.waitFor(x => x.type === FRAME.RST_STREAM && x.stream === stream, timeoutMs)
    return f === null ? null : f.payload.readUInt32BE(0)
  }

  /** Wait until the proxy closes the connection (true) or the time runs out (false). */
  async waitClose (timeoutMs = 5000): Promise<boolean> {
    await this.waitFor(() => false, timeoutMs)
    return this.closed
  }
}
