/**
 * The few libc calls Node does not expose (setsockopt, socket/bind/listen on a descriptor libuv
 * does not own yet, recvmmsg), through koffi. One binding for the whole project: the transparent
 * listeners, the socket adoption of the HTTP proxy, the DNS proxy's UDP sockets (udp-batch.ts),
 * and the tests' unaccepting port.
 */
import koffi from 'koffi'

export interface Libc {
  socket: (domain: number, type: number, proto: number) => number
  setsockopt: (fd: number, level: number, name: number, val: Buffer, len: number) => number
  bind: (fd: number, addr: Buffer, len: number) => number
  listen: (fd: number, backlog: number) => number
  getsockname: (fd: number, addr: Buffer, len: number[]) => number
  fcntl: (fd: number, cmd: number, arg: number) => number
  close: (fd: number) => number
  connect: (fd: number, addr: Buffer, len: number) => number
  /** `vec` is a koffi.alloc pointer: the mmsghdr array holds raw addresses (udp-batch.ts). */
  recvmmsg: (fd: number, vec: unknown, vlen: number, flags: number, timeout: null) => number
  send: (fd: number, buf: Buffer, len: number, flags: number) => number
  sendto: (fd: number, buf: Buffer, len: number, flags: number, addr: Buffer, addrLen: number) => number
}

export const AF_INET = 2
export const SOCK_STREAM = 1
export const SOCK_DGRAM = 2
export const SOCK_NONBLOCK = 0o4000
export const SOCK_CLOEXEC = 0o2000000
export const F_DUPFD_CLOEXEC = 1030

let bound: Libc | undefined

/** libc, loaded on first use. */
export function libc (): Libc {
  if (bound !== undefined) return bound
  const lib = koffi.load('libc.so.6')
  bound = {
    socket: lib.func('int socket(int domain, int type, int protocol)'),
    setsockopt: lib.func('int setsockopt(int fd, int level, int name, const void *val, uint32_t len)'),
    bind: lib.func('int bind(int fd, const void *addr, uint32_t len)'),
    listen: lib.func('int listen(int fd, int backlog)'),
    getsockname: lib.func('int getsockname(int fd, _Out_ uint8_t *addr, _Inout_ uint32_t *len)'),
    fcntl: lib.func('int fcntl(int fd, int cmd, int arg)'),
    close: lib.func('int close(int fd)'),
    connect: lib.func('int connect(int fd, const void *addr, uint32_t len)'),
    recvmmsg: lib.func('int recvmmsg(int fd, void *vec, unsigned int vlen, int flags, void *timeout)'),
    send: lib.func('intptr_t send(int fd, const void *buf, size_t len, int flags)'),
    sendto: lib.func('intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t len)')
  }
  return bound
}

/** errno of the last failed call on this thread. */
export function errno (): number {
  return koffi.errno()
}

export const SOL_SOCKET = 1
const SO_MARK = 36

/** The descriptor under a net.Socket (libuv's), or -1 when it has none (not connected yet, closed). */
export function socketFd (socket: object): number {
  const fd = (socket as { _handle?: { fd?: number } | null })._handle?.fd
  return typeof fd === 'number' ? fd : -1
}

export const SOL_IP = 0

/** An int socket option; 0 on success, else errno. */
export function setIntOption (fd: number, level: number, name: number, value: number): number {
  const v = Buffer.alloc(4)
  v.writeInt32LE(value | 0, 0)
  return libc().setsockopt(fd, level, name, v, 4) === 0 ? 0 : errno()
}

/** SO_MARK on a socket (needs CAP_NET_ADMIN); 0 on success, else errno. */
export function setSocketMark (fd: number, mark: number): number {
  return setIntOption(fd, SOL_SOCKET, SO_MARK, mark | 0)
}

const IP_TRANSPARENT = 19
const IP_BIND_ADDRESS_NO_PORT = 24

/**
 * Bind `fd` (TCP or UDP, not yet bound) to `ipNum` with the port left to the kernel, whatever
 * the address (IP_TRANSPARENT: a non-local one, the client's, works), with SO_MARK `mark` when
 * not 0. For a proxy's upstream socket that keeps its client's source address: the mark is on
 * from the first packet, which the datapath records the flow by (redirect-bpf/bpf/l7p.h,
 * L7P_MARK_PROXY). TCP: the port is chosen at connect (IP_BIND_ADDRESS_NO_PORT), unique for
 * the source and destination. Returns 0, or [errno, what failed].
 */
export function bindTransparentSource (fd: number, ipNum: number, mark: number, tcp: boolean): 0 | [number, string] {
  if (setIntOption(fd, SOL_IP, IP_TRANSPARENT, 1) !== 0) return [errno(), 'setsockopt(IP_TRANSPARENT)']
  if (tcp && setIntOption(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1) !== 0) return [errno(), 'setsockopt(IP_BIND_ADDRESS_NO_PORT)']
  if (mark !== 0 && setSocketMark(fd, mark) !== 0) return [errno(), 'setsockopt(SO_MARK)']
  if (libc().bind(fd, sockaddrIn(ipNum, 0), 16) !== 0) return [errno(), 'bind']
  return 0
}

/**
 * struct sockaddr_in for an address as a number (a.b.c.d = a<<24 | ...) and a port, written into
 * `into`: 16 bytes whose last 8 (sin_zero) are zero and stay so (Buffer.alloc; a sender reuses one
 * per socket, so only the first 8 are written per datagram).
 */
export function sockaddrIn (ipNum: number, port: number, into: Buffer = Buffer.alloc(16)): Buffer {
  into.writeUInt16LE(AF_INET, 0)
  into.writeUInt16BE(port, 2)
  into.writeUInt32BE(ipNum >>> 0, 4)
  return into
}
