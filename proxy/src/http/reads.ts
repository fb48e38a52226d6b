/**
 * Socket reads into one process-wide buffer instead of a new Buffer per read.
 *
 * Why: by default every read of a net.Socket allocates a 64 KiB backing store, shrinks it to
 * the bytes read, wraps it in an ArrayBuffer and pushes it through the Readable machinery; the
 * store is freed later by V8's ArrayBuffer sweeper. On this machine that was half of a raw
 * forwarder's user CPU per request (bench/http-proxy.ts `sketch`, onread on both sides: 24 ->
 * 13 us of user CPU per request). Node's public `onread` option reads into a buffer we own and
 * calls us with the byte count, and nothing else.
 *
 * The contract that makes one shared buffer safe: a read's bytes are valid only during the
 * callback (`OnRead`). Reads are dispatched one at a time from the event loop, never from inside
 * another callback, so no two reads overlap. Whatever must outlive the callback -- bytes written
 * to another socket (a write may complete later and would read the buffer then), pipelined
 * bytes held back, a head split across reads -- is copied by the caller (`keep`).
 *
 * Accepted sockets cannot be given `onread` by net.Server, so `adoptAccepted` takes a socket
 * accepted with `pauseOnConnect: true` (nothing read yet), duplicates its descriptor, closes
 * the original and opens a new net.Socket on the duplicate with `onread`. Closing one of two
 * descriptors of a TCP socket does not end the connection.
 */
import net from 'node:net'
import { errno, F_DUPFD_CLOEXEC, libc, socketFd } from '../libc.js'

/** Largest single read (the size Node itself uses per read). */
const READ_SIZE = 64 * 1024
const SHARED = Buffer.allocUnsafeSlow(READ_SIZE)

/** Gets the bytes of one read: a view into the shared buffer, valid only during the call. */
export type OnRead = (chunk: Buffer) => void

/** Options for net.Server so that `adoptAccepted` can take its sockets. */
export const SERVER_OPTIONS = { allowHalfOpen: true, pauseOnConnect: true } as const

export class AdoptError extends Error {
  readonly code = 'WARDEN_ERR_HTTP_ADOPT'
  constructor (message: string) {
    super(message)
    this.name = 'AdoptError'
  }
}

function onread (onRead: OnRead): net.OnReadOpts {
  return { buffer: SHARED, callback: (n: number, buf: Uint8Array) => { onRead((buf as Buffer).subarray(0, n)); return true } }
}

/**
 * Re-open an accepted socket (accepted with `SERVER_OPTIONS`) so its reads go to `onRead`.
 * Half-open allowed (a client may end its side and still wait for its answers).
 */
export function adoptAccepted (socket: net.Socket, onRead: OnRead): net.Socket {
  if (socket.readableFlowing !== false) {
    throw new AdoptError('HTTP proxy: sockets must come from a server made with pauseOnConnect: true (reads/SERVER_OPTIONS)')
  }
  const fd = socketFd(socket)
  if (fd < 0) throw new AdoptError('HTTP proxy: accepted socket has no descriptor')
  const dup = libc().fcntl(fd, F_DUPFD_CLOEXEC, 0)
  if (dup < 0) throw new AdoptError(`HTTP proxy: fcntl(F_DUPFD_CLOEXEC) failed: errno ${errno()}`)
  socket.destroy()
  // `onread` is accepted by the Socket constructor (lib/net.js) though @types/node lists it only
  // for connect(); as a variable, not a literal, the options pass the constructor's type.
  const opts = { fd: dup, readable: true, writable: true, allowHalfOpen: true, onread: onread(onRead) }
  return new net.Socket(opts)
}

/**
 * Hand a socket re-opened by `adoptAccepted` to code that reads through Node's own stream
 * (node:http2): the descriptor is duplicated, the original closed (which stops its reads at
 * once: no byte is read by it after this call) and a plain net.Socket opened on the duplicate.
 * Called from inside the original's read callback, with the bytes read so far in `replay`,
 * which the new socket gives out first.
 */
export function reopenPlain (socket: net.Socket, replay: Buffer): net.Socket {
  const fd = socketFd(socket)
  if (fd < 0) throw new AdoptError('HTTP proxy: socket has no descriptor')
  const dup = libc().fcntl(fd, F_DUPFD_CLOEXEC, 0)
  if (dup < 0) throw new AdoptError(`HTTP proxy: fcntl(F_DUPFD_CLOEXEC) failed: errno ${errno()}`)
  socket.destroy()
  const plain = new net.Socket({ fd: dup, readable: true, writable: true })
  // Reads on the new descriptor complete on a later turn of the loop: these bytes stay first.
  plain.unshift(replay)
  return plain
}

/**
 * `net.connect` whose reads go to `onRead`. With `fd` (a bound, unconnected TCP socket, such as
 * transparent.ts's transparentUpstreamFd) the connection is made on that descriptor: net opens
 * its handle on it and connect() uses it as it is.
 */
export function connect (ip: string, port: number, onRead: OnRead, fd = -1): net.Socket {
  if (fd < 0) return net.connect({ host: ip, port, noDelay: true, onread: onread(onRead) })
  const opts = { fd, readable: true, writable: true, noDelay: true, onread: onread(onRead) }
  const s = new net.Socket(opts)
  return s.connect({ host: ip, port })
}

/** A copy of bytes from a read, for anything that outlives the read callback. */
export function keep (chunk: Buffer): Buffer {
  return Buffer.from(chunk)
}

/**
 * Tunnel bytes from one socket to the other (after a 101 or a CONNECT 2xx): copied, with
 * backpressure (the reading side stops until the writing side drains).
 */
export function relay (chunk: Buffer, from: net.Socket, to: net.Socket): void {
  if (to.destroyed) return
  if (!to.write(keep(chunk))) {
    from.pause()
    to.once('drain', () => { from.resume() })
  }
}
