/**
 * UDP sockets that the DNS proxy reads with recvmmsg(2), up to SLOTS datagrams per system call,
 * and writes with sendto/send, all on descriptors libuv never sees (readiness from a uv_poll
 * handle, koffi.node.poll).
 *
 * Why not dgram: for each datagram Node returns to the event loop, allocates a 64 KiB receive
 * buffer and shrinks it, formats the source address into a new string and a new rinfo object,
 * and enters JS through MakeCallback. That was about a quarter of the DNS proxy's CPU
 * (perf, bench/dns-proxy.ts). Here a readable socket costs one recvmmsg for everything queued,
 * the bytes land in one area allocated once per thread, and source addresses are kept as
 * numbers (their text is memoised).
 *
 * It also gives what dgram cannot: with `origDst` the socket asks for IP_ORIGDSTADDR, so a
 * datagram that the datapath assigned to a transparent socket (bpf_sk_assign) carries the
 * address and port the workload sent it to, read from the packet itself, with no lookup.
 *
 * The price: a `Datagram`'s bytes are valid only while its handler runs (the next read reuses
 * the area). A handler that keeps them copies them.
 */
import koffi from 'koffi'
import { AF_INET, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, SOL_IP, SOL_SOCKET, bindTransparentSource, errno, libc, setIntOption, sockaddrIn } from './libc.js'

/** Datagrams per recvmmsg. */
const SLOTS = 32
/** A slot holds the largest UDP payload over IPv4, so nothing is ever truncated. */
const SLOT_BYTES = 65536
/** Reads per readiness callback before yielding to the rest of the event loop. */
const MAX_READS = 8

// struct mmsghdr on LP64 Linux (x86_64, aarch64): struct msghdr (56 bytes) + msg_len, padded.
const MMSG_BYTES = 64
const IOV_BYTES = 16
const NAME_BYTES = 16
/** CMSG_SPACE(sizeof(struct sockaddr_in)): one IP_ORIGDSTADDR message. */
const CTRL_BYTES = 32
const OFF = { name: 0, namelen: 8, iov: 16, iovlen: 24, control: 32, controllen: 40, flags: 48, len: 56 } as const

const IP_RECVORIGDSTADDR = 20
const IP_ORIGDSTADDR = 20
const SO_RCVBUF = 8
const MSG_DONTWAIT = 0x40
const MSG_TRUNC = 0x20
const EAGAIN = 11
const EINTR = 4

export class UdpSocketError extends Error {
  readonly code = 'WARDEN_ERR_UDP_SOCKET'
  constructor (readonly op: string, readonly errno: number, readonly address: string) {
    super(`${op} on udp socket ${address} failed: errno ${errno}`)
    this.name = 'UdpSocketError'
  }
}

/**
 * One received datagram. The same object is refilled for every datagram: read it in the
 * handler, do not keep it or its `data` (copy what must outlive the call).
 */
export interface Datagram {
  data: Buffer
  /** Source address as a number (a.b.c.d = a<<24 | ..., unsigned) and as text. */
  srcIpNum: number
  srcIp: string
  srcPort: number
  /** Where the sender addressed it (IP_ORIGDSTADDR); '' and 0 when the socket does not ask. */
  dstIp: string
  dstPort: number
}

/** The receive area: SLOTS mmsghdrs with their iovecs, addresses, control and data, in C memory. */
class ReceiveArea {
  readonly ptr: unknown
  private readonly view: DataView
  private readonly bytes: ArrayBuffer
  private readonly iovAt = SLOTS * MMSG_BYTES
  private readonly nameAt = this.iovAt + SLOTS * IOV_BYTES
  private readonly ctrlAt = this.nameAt + SLOTS * NAME_BYTES
  private readonly dataAt = this.ctrlAt + SLOTS * CTRL_BYTES
  /** Slots whose namelen/controllen the kernel overwrote in the last call. */
  private dirty = SLOTS
  private readonly d: Datagram = { data: Buffer.alloc(0), srcIpNum: 0, srcIp: '', srcPort: 0, dstIp: '', dstPort: 0 }

  constructor () {
    const size = this.dataAt + SLOTS * SLOT_BYTES
    this.ptr = koffi.alloc('uint8_t', size)
    this.bytes = koffi.view(this.ptr, size)
    this.view = new DataView(this.bytes)
    const base = Number(koffi.address(this.ptr))
    const v = this.view
    const put = (at: number, addr: number): void => {
      v.setUint32(at, addr % 0x100000000, true)
      v.setUint32(at + 4, Math.floor(addr / 0x100000000), true)
    }
    for (let i = 0; i < SLOTS; i++) {
      const m = i * MMSG_BYTES
      const iov = this.iovAt + i * IOV_BYTES
      put(iov, base + this.dataAt + i * SLOT_BYTES)
      put(iov + 8, SLOT_BYTES)
      put(m + OFF.name, base + this.nameAt + i * NAME_BYTES)
      put(m + OFF.iov, base + iov)
      put(m + OFF.iovlen, 1)
      put(m + OFF.control, base + this.ctrlAt + i * CTRL_BYTES)
    }
  }

  /** recvmmsg into the area: the count, or -errno. */
  recv (fd: number): number {
    const v = this.view
    for (let i = 0; i < this.dirty; i++) {
      const m = i * MMSG_BYTES
      v.setUint32(m + OFF.namelen, NAME_BYTES, true)
      v.setUint32(m + OFF.controllen, CTRL_BYTES, true)
      v.setUint32(m + OFF.controllen + 4, 0, true)
    }
    const n = libc().recvmmsg(fd, this.ptr, SLOTS, MSG_DONTWAIT, null)
    if (n < 0) { this.dirty = 0; return -errno() }
    this.dirty = n
    return n
  }

  /** Slot i of the last recv as the shared Datagram, or null when it was truncated or not IPv4. */
  datagram (i: number): Datagram | null {
    const v = this.view
    const m = i * MMSG_BYTES
    const len = v.getUint32(m + OFF.len, true)
    if ((v.getInt32(m + OFF.flags, true) & MSG_TRUNC) !== 0) return null
    const name = this.nameAt + i * NAME_BYTES
    if (v.getUint16(name, true) !== AF_INET) return null
    const d = this.d
    d.data = Buffer.from(this.bytes, this.dataAt + i * SLOT_BYTES, len)
    d.srcPort = v.getUint16(name + 2, false)
    d.srcIpNum = v.getUint32(name + 4, false)
    d.srcIp = ipv4Text(d.srcIpNum)
    d.dstIp = ''
    d.dstPort = 0
    // Walk the control messages for IP_ORIGDSTADDR (the only one asked for; others are skipped).
    const ctrl = this.ctrlAt + i * CTRL_BYTES
    const clen = v.getUint32(m + OFF.controllen, true)
    for (let at = 0; at + 16 <= clen;) {
      const cl = v.getUint32(ctrl + at, true)
      if (cl < 16 || at + cl > clen) break
      if (v.getInt32(ctrl + at + 8, true) === SOL_IP && v.getInt32(ctrl + at + 12, true) === IP_ORIGDSTADDR && cl >= 32 &&
        v.getUint16(ctrl + at + 16, true) === AF_INET) {
        d.dstPort = v.getUint16(ctrl + at + 18, false)
        d.dstIp = ipv4Text(v.getUint32(ctrl + at + 20, false))
      }
      at += (cl + 7) & ~7
    }
    return d
  }
}

let area: ReceiveArea | undefined

// Text of recently seen addresses: clients and servers repeat, a Map hit costs less than formatting.
const texts = new Map<number, string>()
/** `a.b.c.d` of an address as a number (memoised, bounded). */
export function ipv4Text (n: number): string {
  let s = texts.get(n)
  if (s === undefined) {
    s = `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`
    if (texts.size >= 4096) texts.clear()
    texts.set(n, s)
  }
  return s
}

/** `a.b.c.d` as a number, or -1 when it is not a dotted quad. */
export function ipv4Num (ip: string): number {
  let n = 0
  let part = 0
  let digits = 0
  let dots = 0
  for (let i = 0; i < ip.length; i++) {
    const c = ip.charCodeAt(i)
    if (c === 46) {
      if (digits === 0 || dots === 3) return -1
      n = n * 256 + part
      part = 0
      digits = 0
      dots++
    } else if (c >= 48 && c <= 57 && digits < 3) {
      part = part * 10 + c - 48
      digits++
      if (part > 255) return -1
    } else {
      return -1
    }
  }
  if (digits === 0 || dots !== 3) return -1
  return n * 256 + part
}

// process._tickCallback runs queued nextTicks and microtasks. koffi calls the poll callback
// with napi_call_function, which promises no checkpoint of its own (MakeCallback does one); on
// Node 20 the queue ran promptly anyway in test/proxy/udp-batch.test.ts, but a held DNS
// answer's release must not depend on that. Present on every Node this project supports.
const drainTicks: () => void = (process as unknown as { _tickCallback?: () => void })._tickCallback ?? (() => {})

function rethrowLater (err: unknown): void {
  setImmediate(() => { throw err })
}

export interface UdpBatchSocketOptions {
  /** Where it is bound (`host:port` in errors and logs). */
  label: string
  /** Called with each datagram received; see Datagram for what may be kept. */
  onDatagram?: (d: Datagram) => void
  /**
   * Receive errors (a UdpSocketError: ICMP errors on a connected socket, ECONNREFUSED...) and
   * handler exceptions (whatever was thrown).
   */
  onError?: (err: unknown) => void
}

/** A UDP socket on a descriptor of its own (owned: `close` closes it). */
export class UdpBatchSocket {
  private poller: ReturnType<typeof koffi.node.poll> | null = null
  private readonly addr = Buffer.alloc(16)
  private onDatagram: ((d: Datagram) => void) | undefined
  private onError: (err: unknown) => void
  private closed = false

  constructor (readonly fd: number, readonly label: string, opts: Omit<UdpBatchSocketOptions, 'label'> = {}) {
    this.onDatagram = opts.onDatagram
    this.onError = opts.onError ?? (() => {})
    if (this.onDatagram !== undefined) this.startReading(this.onDatagram, this.onError)
  }

  /** Deliver every datagram to `onDatagram` from now on (once per socket). */
  startReading (onDatagram: (d: Datagram) => void, onError: (err: unknown) => void = this.onError): void {
    if (this.poller !== null) throw new Error(`udp socket ${this.label} is already being read`)
    if (this.closed) throw new Error(`udp socket ${this.label} is closed`)
    this.onDatagram = onDatagram
    this.onError = onError
    area ??= new ReceiveArea()
    this.poller = koffi.node.poll(this.fd, { readable: true }, this.pollCallback)
  }

  // koffi calls it as (status, events) (src/koffi/src/uv.cc), whatever its index.d.ts says.
  private readonly pollCallback = this.readable.bind(this)

  /**
   * Nothing may escape this function: koffi calls it with napi_call_function and does not look
   * at the result, so an exception left pending there stops every poll callback of the thread
   * (seen with koffi 3.3.4 on Node 20). What a handler or onError throws is rethrown from a
   * setImmediate, where Node's uncaught-exception handling sees it as usual.
   */
  private readable (status: unknown): void {
    try {
      this.readBatches()
    } catch (err) {
      rethrowLater(err)
    }
    try {
      // A pending socket error (POLLERR: an ICMP error on a connected socket) makes libuv stop
      // the poll handle and report UV_EBADF. The recvmmsg above has read and cleared it, so
      // watch again; without this, an upstream socket that once met a closed port went deaf.
      // (An error that reading does not clear would make this spin; none can arise here: no
      // IP_RECVERR queue is asked for.)
      if (typeof status === 'number' && status < 0 && !this.closed) this.poller?.start({ readable: true }, this.pollCallback)
    } catch (err) {
      rethrowLater(err)
    }
    try {
      drainTicks()
    } catch (err) {
      rethrowLater(err)
    }
  }

  private readBatches (): void {
    const a = area as ReceiveArea
    const handler = this.onDatagram as (d: Datagram) => void
    for (let reads = 0; reads < MAX_READS && !this.closed; reads++) {
      const n = a.recv(this.fd)
      if (n < 0) {
        if (n === -EAGAIN) break
        if (n === -EINTR) continue
        // A pending socket error (ICMP port unreachable on a connected socket) is reported once
        // and cleared by the call. Stop here either way: datagrams still queued wake us again
        // (level-triggered), and an error that does not clear is not reported in a loop.
        this.report(new UdpSocketError('recvmmsg', -n, this.label))
        break
      }
      for (let i = 0; i < n && !this.closed; i++) {
        const d = a.datagram(i)
        if (d === null) continue
        try { handler(d) } catch (err) { this.report(err) }
      }
      if (n < SLOTS) break
    }
  }

  /** onError, which must not end the batch when it throws itself. */
  private report (err: unknown): void {
    try { this.onError(err) } catch (e) { rethrowLater(e) }
  }

  /** sendto(ip, port) without waiting: false when the kernel refused it (full buffer, pending error). */
  sendTo (buf: Buffer, ipNum: number, port: number): boolean {
    if (this.closed) return false
    return libc().sendto(this.fd, buf, buf.length, MSG_DONTWAIT, sockaddrIn(ipNum, port, this.addr), 16) >= 0
  }

  /** send() on a connected socket, without waiting; false when the kernel refused it. */
  send (buf: Buffer): boolean {
    if (this.closed) return false
    return libc().send(this.fd, buf, buf.length, MSG_DONTWAIT) >= 0
  }

  /** The bound address (after connect: the random local port). */
  localAddress (): { ip: string, port: number } {
    const sa = Buffer.alloc(16)
    const len = [16]
    if (libc().getsockname(this.fd, sa, len) !== 0) throw new UdpSocketError('getsockname', errno(), this.label)
    return { ip: ipv4Text(sa.readUInt32BE(4)), port: sa.readUInt16BE(2) }
  }

  /** Keep (ref) or not keep (unref) the event loop alive while reading. */
  unref (): this { this.poller?.unref(); return this }

  close (): void {
    if (this.closed) return
    this.closed = true
    this.poller?.close()
    this.poller = null
    libc().close(this.fd)
  }
}

/** An int option on a socket made here; on failure the socket is closed and the error thrown. */
function setInt (fd: number, level: number, name: number, value: number, label: string, where: string): void {
  const e = setIntOption(fd, level, name, value)
  if (e !== 0) {
    libc().close(fd)
    throw new UdpSocketError(`setsockopt(${label})`, e, where)
  }
}

/** Ask the kernel for each datagram's original destination (IP_ORIGDSTADDR) on `fd`. */
export function askOriginalDestination (fd: number, where: string): void {
  setInt(fd, SOL_IP, IP_RECVORIGDSTADDR, 1, 'IP_RECVORIGDSTADDR', where)
}

/**
 * A UDP socket connect()ed to ip:port from a random local port: the kernel delivers only that
 * peer's datagrams to it. `recvBufferBytes` sizes its receive queue. With `from`, the local
 * address is `from.ip`, whatever it is (libc.ts bindTransparentSource), marked `from.mark`.
 */
export function connectUdp (ip: string, port: number, recvBufferBytes: number, opts: Omit<UdpBatchSocketOptions, 'label'> = {},
  from?: { ip: string, mark: number }): UdpBatchSocket {
  const where = from === undefined ? `${ip}:${port}` : `${from.ip}>${ip}:${port}`
  const ipNum = ipv4Num(ip)
  if (ipNum < 0) throw new TypeError(`not an IPv4 address: ${ip}`)
  const fromNum = from === undefined ? 0 : ipv4Num(from.ip)
  if (fromNum < 0) throw new TypeError(`not an IPv4 address: ${from?.ip ?? ''}`)
  const fd = libc().socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
  if (fd < 0) throw new UdpSocketError('socket', errno(), where)
  setInt(fd, SOL_SOCKET, SO_RCVBUF, recvBufferBytes, 'SO_RCVBUF', where)
  if (from !== undefined) {
    const r = bindTransparentSource(fd, fromNum, from.mark, false)
    if (r !== 0) {
      libc().close(fd)
      throw new UdpSocketError(r[1], r[0], where)
    }
  }
  if (libc().connect(fd, sockaddrIn(ipNum, port), 16) !== 0) {
    const e = errno()
    libc().close(fd)
    throw new UdpSocketError('connect', e, where)
  }
  return new UdpBatchSocket(fd, where, opts)
}

/** A UDP socket bound to ip:port (0: a random port), not transparent: tests and benches. */
export function bindUdp (ip: string, port: number, opts: Omit<UdpBatchSocketOptions, 'label'> & { origDst?: boolean } = {}): UdpBatchSocket {
  const where = `${ip}:${port}`
  const ipNum = ipv4Num(ip)
  if (ipNum < 0) throw new TypeError(`not an IPv4 address: ${ip}`)
  const fd = libc().socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
  if (fd < 0) throw new UdpSocketError('socket', errno(), where)
  if (opts.origDst === true) askOriginalDestination(fd, where)
  if (libc().bind(fd, sockaddrIn(ipNum, port), 16) !== 0) {
    const e = errno()
    libc().close(fd)
    throw new UdpSocketError('bind', e, where)
  }
  return new UdpBatchSocket(fd, where, opts)
}
