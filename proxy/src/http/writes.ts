/**
 * Socket writes straight to the libuv handle, around Node's Writable.
 *
 * Why: a `socket.write` walks Writable's state machine, creates a WriteWrap (a C++-backed
 * object instantiated from a template) for every write, and schedules an after-write tick, even
 * when the kernel takes the bytes at once, which it almost always does. The proxy's messages
 * are small and its sockets usually have room, so here the common write is one call into the
 * handle (`writeBuffer` / `writeLatin1String` / `writev`, the methods Node's own net.Socket
 * calls), with one request object reused for as long as writes complete synchronously. A raw
 * forwarder on loopback spent about 0.75 us of user CPU less per write this way.
 *
 * Ordering: libuv queues a stream's writes in order, and refuses a synchronous write while any
 * write is queued, so direct writes keep their order among themselves and with writes that
 * Writable hands to the same handle later (tunnels use `socket.write` after the HTTP phase).
 * The one thing never done is a direct write while Writable still holds bytes it has not given
 * to the handle (a socket still connecting, or a corked Writable): then the write goes through
 * `socket.write` too, behind them.
 *
 * Backpressure: a write the kernel could not take at once stays queued in libuv (its buffer or
 * string kept alive by the request object) and counts as pending; `needDrain` is true until
 * every pending write completes, then the socket emits 'drain' as Writable would have. Callers
 * stop reading the other side while `needDrain`, so pending bytes are bounded by one read.
 *
 * A failed write destroys the socket with the error (as net.Socket does). If the binding is
 * missing (another Node version), every write goes through `socket.write`: slower, same result.
 */
import type net from 'node:net'
import { getSystemErrorName } from 'node:util'
import { fellBack } from '../fast-paths.js'

interface WriteReq {
  oncomplete: (this: WriteReq, status: number) => void
  writer: SocketWriter | null
  /** Keeps a pending write's bytes alive until libuv is done with them. */
  data: unknown
  bytes: number
}

interface StreamHandle {
  writeBuffer (req: WriteReq, data: Buffer): number
  writeLatin1String (req: WriteReq, data: string): number
  writev (req: WriteReq, chunks: unknown[], allBuffers: boolean): number
}

interface StreamWrapBinding {
  WriteWrap: new () => WriteReq
  streamBaseState: Int32Array
  kLastWriteWasAsync: number
}

function loadBinding (): StreamWrapBinding | null {
  try {
    const b = (process as unknown as { binding (name: string): unknown }).binding('stream_wrap') as Partial<StreamWrapBinding>
    if (typeof b.WriteWrap !== 'function' || b.streamBaseState === undefined || typeof b.kLastWriteWasAsync !== 'number') return null
    return b as StreamWrapBinding
  } catch {
    return null
  }
}

const binding = loadBinding()
if (binding === null) fellBack('socket-writes', "process.binding('stream_wrap') has no WriteWrap, streamBaseState or kLastWriteWasAsync: writes go through net.Socket.write")
const state = binding?.streamBaseState ?? new Int32Array(1)
const ASYNC = binding?.kLastWriteWasAsync ?? 0

function onComplete (this: WriteReq, status: number): void {
  const w = this.writer
  this.writer = null
  this.data = null
  if (w !== null) w.completed(this.bytes, status)
}

/**
 * Bytes written through any SocketWriter in this process that the kernel has not taken yet
 * (queued in libuv): what the proxy holds in memory on behalf of slow peers. A gauge. (Writable's
 * own queue, used only while a socket connects, stops callers at its highWaterMark.)
 */
export const writeStats = { pendingBytes: 0 }

/** A request object for the next write; reused while writes complete synchronously. */
let spare: WriteReq | null = null

function takeReq (): WriteReq {
  const r = spare
  if (r !== null) { spare = null; return r }
  const req = new (binding as StreamWrapBinding).WriteWrap()
  req.oncomplete = onComplete
  req.writer = null
  req.data = null
  req.bytes = 0
  return req
}

export class WriteError extends Error {
  readonly code: string
  constructor (readonly errno: number) {
    let name = 'EIO'
    try { name = getSystemErrorName(errno) } catch { /* unknown errno */ }
    super(`write ${name}`)
    this.code = name
    this.name = 'WriteError'
  }
}

/** Writes of one socket (see the module comment). Strings are latin1 (HTTP heads). */
export class SocketWriter {
  private pendingBytes = 0
  /** Between cork() and uncork(): writes gathered for one writev. */
  private gathered: (Buffer | string)[] | null = null

  constructor (readonly socket: net.Socket) {}

  /** The kernel (or Writable) holds bytes not yet sent: stop feeding this socket until 'drain'. */
  get needDrain (): boolean {
    return this.pendingBytes > 0 || this.socket.writableNeedDrain
  }

  /** false = backpressure (wait for the socket's 'drain'), like socket.write. */
  write (data: Buffer | string): boolean {
    const g = this.gathered
    if (g !== null) { g.push(data); return true }
    const s = this.socket
    const h = this.directHandle()
    if (h === null) {
      // Writable's own path, which also reports a write after end() as net.Socket does.
      if (s.destroyed) return false
      return typeof data === 'string' ? s.write(data, 'latin1') : s.write(data)
    }
    const req = takeReq()
    const err = typeof data === 'string' ? h.writeLatin1String(req, data) : h.writeBuffer(req, data)
    return this.dispatched(req, err, data, data.length)
  }

  /** Gather writes until uncork(): they leave in one writev. */
  cork (): void {
    if (this.gathered === null) this.gathered = []
  }

  /** Send what was gathered; false = backpressure, as from write(). */
  uncork (): boolean {
    const g = this.gathered
    if (g === null) return !this.needDrain
    this.gathered = null
    if (g.length === 0) return !this.needDrain
    if (g.length === 1) return this.write(g[0])
    const s = this.socket
    const h = this.directHandle()
    if (h === null) {
      if (s.destroyed) return false
      s.cork()
      for (const d of g) { if (typeof d === 'string') s.write(d, 'latin1'); else s.write(d) }
      s.uncork()
      return !s.writableNeedDrain
    }
    const chunks: unknown[] = new Array(g.length * 2)
    let bytes = 0
    for (let i = 0; i < g.length; i++) {
      const d = g[i]
      chunks[i * 2] = d
      chunks[i * 2 + 1] = typeof d === 'string' ? 'latin1' : 'buffer'
      bytes += d.length
    }
    const req = takeReq()
    return this.dispatched(req, h.writev(req, chunks, false), chunks, bytes)
  }

  /** The handle when a direct write keeps the order and net.Socket's rules (module comment), else null. */
  private directHandle (): StreamHandle | null {
    const s = this.socket
    const h = (s as unknown as { _handle: StreamHandle | null })._handle
    if (binding === null || h === null || s.connecting || s.writableLength !== 0 || s.destroyed || s.writableEnded) return null
    return h
  }

  private dispatched (req: WriteReq, err: number, data: unknown, bytes: number): boolean {
    if (err !== 0) {
      // The handle may have wrapped the request before failing: never reuse it.
      this.socket.destroy(new WriteError(err))
      return false
    }
    if (state[ASYNC] === 0) { spare = req; return this.pendingBytes === 0 }
    req.writer = this
    req.data = data
    req.bytes = bytes
    this.pendingBytes += bytes
    writeStats.pendingBytes += bytes
    return false
  }

  /** From a pending write's completion (libuv). */
  completed (bytes: number, status: number): void {
    this.pendingBytes -= bytes
    writeStats.pendingBytes -= bytes
    const s = this.socket
    if (status < 0) { if (!s.destroyed) s.destroy(new WriteError(status)); return }
    if (this.pendingBytes === 0 && !s.destroyed && !s.writableNeedDrain) s.emit('drain')
  }
}
