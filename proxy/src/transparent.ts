/**
 * Transparent sockets (IP_TRANSPARENT) for the proxies. Node has no setsockopt, so the
 * socket is made with libc through koffi, bound, and handed to net by fd (TCP) or read and
 * written with libc (UDP, udp-batch.ts).
 *
 * - A TCP listener with IP_TRANSPARENT accepts connections that the tc program assigned to
 *   it with bpf_sk_assign; an accepted socket's localAddress/localPort are the ORIGINAL
 *   destination. SO_REUSEPORT lets one listener per worker share the port.
 * - A UDP socket with IP_TRANSPARENT receives assigned datagrams, and can be bound to a
 *   non-local ip:port to send answers FROM the address the client queried.
 */
import net from 'node:net'
import { UdpBatchSocket, askOriginalDestination, ipv4Num } from './udp-batch.js'
import { AF_INET, bindTransparentSource, errno, libc, setIntOption, setSocketMark, sockaddrIn, SOCK_CLOEXEC, SOL_IP, SOL_SOCKET, SOCK_DGRAM, SOCK_NONBLOCK, SOCK_STREAM } from './libc.js'

const SO_REUSEADDR = 2
const SO_REUSEPORT = 15
const IP_TRANSPARENT = 19
const IP_FREEBIND = 15

export class TransparentSocketError extends Error {
  readonly code = 'WARDEN_ERR_TRANSPARENT_SOCKET'
  constructor (readonly op: string, readonly errno: number, readonly address: string) {
    super(`${op} for transparent socket ${address} failed: errno ${errno}`)
    this.name = 'TransparentSocketError'
  }
}

const c = libc

function sockaddrOf (host: string, port: number): Buffer {
  const n = ipv4Num(host)
  if (n < 0) throw new TypeError(`not an IPv4 address: ${host}`)
  return sockaddrIn(n, port)
}

function transparentFd (type: number, host: string, port: number): number {
  const l = c()
  const where = `${host}:${port}`
  const fd = l.socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
  if (fd < 0) throw new TransparentSocketError('socket', errno(), where)
  const opts: Array<[number, number, string]> = [
    [SOL_IP, IP_TRANSPARENT, 'IP_TRANSPARENT'],
    [SOL_IP, IP_FREEBIND, 'IP_FREEBIND'],
    [SOL_SOCKET, SO_REUSEADDR, 'SO_REUSEADDR'],
    [SOL_SOCKET, SO_REUSEPORT, 'SO_REUSEPORT']
  ]
  for (const [level, name, label] of opts) {
    const e = setIntOption(fd, level, name, 1)
    if (e !== 0) {
      l.close(fd)
      throw new TransparentSocketError(`setsockopt(${label})`, e, where)
    }
  }
  const sa = sockaddrOf(host, port)
  if (l.bind(fd, sa, 16) !== 0) {
    const e = errno()
    l.close(fd)
    throw new TransparentSocketError('bind', e, where)
  }
  return fd
}

/**
 * A listening net.Server on host:port with IP_TRANSPARENT, SO_REUSEADDR, SO_REUSEPORT, and
 * `mark` as SO_MARK when not 0 (every accepted connection inherits it: the HTTP proxy passes
 * the datapath's proxy mark, redirect-bpf's PROXY_SOCKET_MARK).
 */
export async function listenTransparentTcp (port: number, host = '0.0.0.0', backlog = 511,
  serverOptions: net.ServerOpts = { allowHalfOpen: true }, mark = 0): Promise<net.Server> {
  const fd = transparentFd(SOCK_STREAM, host, port)
  if (mark !== 0) {
    const e = setSocketMark(fd, mark)
    if (e !== 0) {
      c().close(fd)
      throw new TransparentSocketError('setsockopt(SO_MARK)', e, `${host}:${port}`)
    }
  }
  if (c().listen(fd, backlog) !== 0) {
    const e = errno()
    c().close(fd)
    throw new TransparentSocketError('listen', e, `${host}:${port}`)
  }
  // allowHalfOpen: a client that half-closes after pipelining still gets every response in flight.
  const server = net.createServer(serverOptions)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen({ fd, backlog }, () => { server.off('error', reject); resolve() })
  })
  return server
}

/**
 * A TCP socket bound to `source` (any address, local or not: IP_TRANSPARENT) with SO_MARK
 * `mark`, not connected yet: the descriptor for an upstream connection that keeps its client's
 * source address. The port is left to connect(), which picks one unused for that source and
 * destination; the client's own port is not reused, so a proxy connection and a direct one of
 * the same workload never share a tuple. The mark is set before the SYN: the datapath records
 * the flow from it and steers the replies, which are addressed to the client, to this socket
 * (redirect-bpf/bpf/l7p.h, L7P_MARK_PROXY).
 */
export function transparentUpstreamFd (source: string, mark: number): number {
  const fd = c().socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
  if (fd < 0) throw new TransparentSocketError('socket', errno(), source)
  const n = ipv4Num(source)
  const r = n < 0 ? [22, 'address'] as [number, string] : bindTransparentSource(fd, n, mark, true)
  if (r !== 0) {
    c().close(fd)
    throw new TransparentSocketError(r[1], r[0], source)
  }
  return fd
}

/**
 * A bound UDP socket with IP_TRANSPARENT (+ SO_REUSEADDR/SO_REUSEPORT), read with recvmmsg
 * (udp-batch.ts). `origDst`: each datagram carries the address and port its sender addressed
 * (IP_ORIGDSTADDR), the DNS proxy's listener. With a non-local `host` it sends from that
 * address: how the DNS proxy answers as the server queried. Returned at once, bound: the DNS
 * proxy asks for "a socket that answers as server X" on its hot path.
 */
export function openTransparentUdp (port: number, host = '0.0.0.0', origDst = false): UdpBatchSocket {
  const fd = transparentFd(SOCK_DGRAM, host, port)
  if (origDst) askOriginalDestination(fd, `${host}:${port}`)
  return new UdpBatchSocket(fd, `${host}:${port}`)
}
