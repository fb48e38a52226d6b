/**
 * Sends on a dgram socket's own libuv handle, skipping what `socket.send()` does around it.
 *
 * Why: for every datagram, `dgram.Socket.send()` validates its arguments, resolves the
 * destination through `dns.lookup` (for an IP literal: a regex and a `process.nextTick`), runs
 * the send in an async-id scope from that tick, then allocates a `SendWrap` and a one-element
 * list for the C++ `UDPWrap::Send`. The DNS proxy sends twice per query, always to an IPv4
 * literal or on a connected socket, so that work is pure overhead there (bench/dns-proxy.ts).
 *
 * What is kept: the same C++ call (`UDPWrap::Send`, which parses the address, tries a
 * synchronous `sendmsg` and only falls back to an async request when the kernel says EAGAIN),
 * the same send-without-callback semantics (errors dropped, like dgram without a callback).
 * The request object and the list are reused only after a send that completed synchronously
 * (the C++ side never saw them then); after an async one they belong to it and fresh ones are made.
 *
 * This reaches into Node's internals (the socket's state symbol, `process.binding('udp_wrap')`).
 * `directSender` checks every assumption once and returns null when one does not hold (another
 * Node version, an IPv6 socket): callers then use `socket.send()`. test/proxy/udp-direct.test.ts
 * pins the behaviour on the Node this project runs.
 */
import type * as dgram from 'node:dgram'

interface UdpHandle {
  send (req: SendReq, list: Buffer[], count: number, port: number, ip: string, hasCallback: boolean): number
  send (req: SendReq, list: Buffer[], count: number, hasCallback: boolean): number
}
interface SendReq { list?: Buffer[] }
interface DgramState { handle: UdpHandle | null, bindState: number, connectState: number }

/** dgram's BIND_STATE_BOUND and CONNECT_STATE_CONNECTED (lib/dgram.js, Node 20). */
const BOUND = 2
const CONNECTED = 2

type SendWrapCtor = new () => SendReq

let sendWrap: SendWrapCtor | null | undefined
function sendWrapCtor (): SendWrapCtor | null {
  if (sendWrap !== undefined) return sendWrap
  try {
    const b = (process as unknown as { binding: (name: string) => { SendWrap?: unknown } }).binding('udp_wrap')
    sendWrap = typeof b.SendWrap === 'function' ? b.SendWrap as SendWrapCtor : null
  } catch {
    sendWrap = null
  }
  return sendWrap
}

function stateOf (sock: dgram.Socket): DgramState | null {
  const sym = Object.getOwnPropertySymbols(sock).find(s => s.description === 'state symbol')
  if (sym === undefined) return null
  const st = (sock as unknown as Record<symbol, DgramState | undefined>)[sym]
  if (st === undefined || st === null || typeof st !== 'object' || !('bindState' in st) || !('connectState' in st)) return null
  return st
}

export class DirectSender {
  private req: SendReq
  private list: Buffer[]

  constructor (private readonly sock: dgram.Socket, private readonly state: DgramState, private readonly SendWrap: SendWrapCtor) {
    this.req = new SendWrap()
    this.list = []
  }

  /** `sock.send(buf, port, ip)` for an IPv4 literal `ip`, without a callback. */
  sendTo (buf: Buffer, port: number, ip: string): void {
    const st = this.state
    const h = st.handle
    // Not bound yet (dgram queues), closed (dgram throws), or connected: dgram's own path.
    if (h === null || st.bindState !== BOUND || st.connectState === CONNECTED) { this.sock.send(buf, port, ip); return }
    this.list[0] = buf
    this.req.list = this.list
    if (h.send(this.req, this.list, 1, port, ip, false) === 0) this.fresh()
  }

  /** `sock.send(buf)` on a connected socket, without a callback. */
  send (buf: Buffer): void {
    const st = this.state
    const h = st.handle
    if (h === null || st.connectState !== CONNECTED) { this.sock.send(buf); return }
    this.list[0] = buf
    this.req.list = this.list
    if (h.send(this.req, this.list, 1, false) === 0) this.fresh()
  }

  /** The last send went async (0): its request and list are libuv's until it completes. */
  private fresh (): void {
    this.req = new this.SendWrap()
    this.list = []
  }
}

/** A DirectSender for an IPv4 dgram socket, or null where Node's internals are not as expected. */
export function directSender (sock: dgram.Socket): DirectSender | null {
  if ((sock as unknown as { type?: string }).type !== 'udp4') return null
  const ctor = sendWrapCtor()
  const st = stateOf(sock)
  if (ctor === null || st === null) return null
  return new DirectSender(sock, st, ctor)
}
