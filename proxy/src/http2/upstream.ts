/**
 * HTTP/2 (h2c) sessions to original destinations, shared by the streams of every client
 * connection with the same key: destination, source identity, and the source address when the
 * client's is kept (a session's socket is bound to one client address, so it carries only the
 * streams of clients with that address; the identity in the key keeps two identities that
 * claim one address apart too, as the policy judged each of them). One session per key carries
 * many streams (nghttp2 queues streams beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS); a
 * session that received GOAWAY, failed or closed is dropped from the key at once, so the next
 * stream opens a fresh one while the streams already on it finish.
 *
 * Bounded by configuration, not by clients: at most `maxSessions` sessions in all, counting
 * those still finishing after GOAWAY. A session with no stream for `idleTimeoutMs` is closed;
 * when the pool is full a new key takes the place of the session idle longest, and with none
 * idle the stream is refused (503) rather than another session opened.
 *
 * Shared fairly: each session is charged to the client address that opened it, and one client
 * address may be charged with at most `maxSessionsPerSource`. A client at its share gets a new
 * key only in place of its own session idle longest, or a 503; so a client that keeps a slow
 * stream open to every destination it may reach holds its share, never the whole pool, and the
 * 503 is its own. The share is per address, not per identity: an identity is every replica of
 * a workload, and `world` every client outside the cluster, so a share per identity would let
 * one of them starve all the others. A session shared by several clients (no kept source
 * address: the key is destination and identity) stays charged to the one that opened it.
 */
import http2, { type ClientHttp2Session } from 'node:http2'
import net from 'node:net'
import { setSocketMark, socketFd } from '../libc.js'
import { transparentUpstreamFd, TransparentSocketError } from '../transparent.js'

export interface H2UpstreamOptions {
  connectTimeoutMs: number
  idleTimeoutMs: number
  /** Sessions open at once, in all. */
  maxSessions: number
  /** Sessions open at once charged to one client address (at most maxSessions). */
  maxSessionsPerSource: number
  /** SO_MARK (0: none), as the HTTP/1 upstream connections. */
  mark: number
  /** Our receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE), as on the client side. */
  initialWindowSize: number
  maxHeaderListSize: number
}

/** The message of the error a connect that took too long fails with. */
export const UPSTREAM_CONNECT_TIMEOUT = 'upstream connect timeout'

/** Why no session could be had for a stream: both answer it 503. */
export type H2AcquireRefusal =
  /** The client's address could not be bound (never replaced by the node's). */
  | { refused: 'source', err: TransparentSocketError }
  /** `maxSessions` sessions open and every one of them busy. */
  | { refused: 'full' }
  /** The client's address is charged with `maxSessionsPerSource` sessions, every one busy. */
  | { refused: 'source-full' }

export interface H2Lease {
  session: ClientHttp2Session
  /** Call once when the stream is over (an idle session times out). */
  done: () => void
}

class Entry {
  active = 0
  idleTimer: NodeJS.Timeout | null = null
  constructor (readonly key: string, readonly session: ClientHttp2Session, readonly owner: Owner) {}
}

/** What one client address is charged with. */
class Owner {
  open = 0
  /** Its entries with no stream, longest idle first. */
  readonly idle = new Set<Entry>()
  constructor (readonly client: string) {}
}

export class H2UpstreamPool {
  private readonly byKey = new Map<string, Entry>()
  private readonly all = new Set<Entry>()
  /** Entries with no stream, longest idle first (a Set keeps insertion order). */
  private readonly idle = new Set<Entry>()
  /** Client addresses charged with at least one open session. */
  private readonly owners = new Map<string, Owner>()

  constructor (private readonly opts: H2UpstreamOptions) {}

  /** Sessions open (gauge). */
  get size (): number { return this.all.size }

  /**
   * A session for `key` to ip:port, leaving from `source` ('' = the node's address, chosen by
   * the kernel), for a stream of the client at address `client`. `key` must name `source` when
   * there is one. A session that exists is shared whoever opened it; a new one is charged to
   * `client`.
   */
  acquire (key: string, ip: string, port: number, source: string, client: string): H2Lease | H2AcquireRefusal {
    let e = this.byKey.get(key)
    if (e === undefined || e.session.closed || e.session.destroyed) {
      if (e !== undefined) this.retire(e)
      const owner = this.owners.get(client)
      if (owner !== undefined && owner.open >= this.opts.maxSessionsPerSource) {
        // At its share: only its own idle session makes room (which frees a place in all too).
        if (!this.evictFrom(owner.idle)) return { refused: 'source-full' }
      } else if (this.all.size >= this.opts.maxSessions && !this.evictFrom(this.idle)) {
        return { refused: 'full' }
      }
      const opened = this.open(key, ip, port, source, client)
      if (opened instanceof TransparentSocketError) return { refused: 'source', err: opened }
      e = opened
    }
    const entry = e
    entry.active++
    this.idle.delete(entry)
    entry.owner.idle.delete(entry)
    if (entry.idleTimer !== null) { clearTimeout(entry.idleTimer); entry.idleTimer = null }
    let once = false
    return {
      session: entry.session,
      done: () => {
        if (once) return
        once = true
        if (--entry.active === 0 && !entry.session.destroyed) {
          this.idle.add(entry)
          entry.owner.idle.add(entry)
          entry.idleTimer = setTimeout(() => { entry.session.close() }, this.opts.idleTimeoutMs)
          entry.idleTimer.unref()
        }
      }
    }
  }

  /** Close the session of `idle` idle longest, to make room; false when there is none. */
  private evictFrom (idle: Set<Entry>): boolean {
    for (const e of idle) {
      this.forget(e)
      e.session.destroy()
      return true
    }
    return false
  }

  /** The socket for a session: bound to `source` when there is one, before the SYN. */
  private socket (ip: string, port: number, source: string): net.Socket | TransparentSocketError {
    const { opts } = this
    if (source === '') {
      const s = net.connect({ host: ip, port, noDelay: true })
      // Set once connected, as for HTTP/1: the SYN takes the datapath's full path.
      if (opts.mark !== 0) s.once('connect', () => { setSocketMark(socketFd(s), opts.mark) })
      return s
    }
    let fd: number
    try {
      // IP_TRANSPARENT, the client's address, and the mark the datapath tracks the flow by
      fd = transparentUpstreamFd(source, opts.mark)
    } catch (err) {
      if (err instanceof TransparentSocketError) return err
      throw err
    }
    const s = new net.Socket({ fd, readable: true, writable: true })
    s.setNoDelay(true)
    return s.connect({ host: ip, port })
  }

  private open (key: string, ip: string, port: number, source: string, client: string): Entry | TransparentSocketError {
    const { opts } = this
    const socket = this.socket(ip, port, source)
    if (socket instanceof TransparentSocketError) return socket
    const timer = setTimeout(() => { socket.destroy(new Error(UPSTREAM_CONNECT_TIMEOUT)) }, opts.connectTimeoutMs)
    const settle = (): void => { clearTimeout(timer) }
    socket.once('connect', settle)
    socket.once('close', settle)
    const session = http2.connect(`http://${ip}:${port}`, {
      createConnection: () => socket,
      settings: { enablePush: false, initialWindowSize: opts.initialWindowSize, maxHeaderListSize: opts.maxHeaderListSize }
    })
    let owner = this.owners.get(client)
    if (owner === undefined) { owner = new Owner(client); this.owners.set(client, owner) }
    owner.open++
    const e = new Entry(key, session, owner)
    this.byKey.set(key, e)
    this.all.add(e)
    // The streams on it report their own failures; the session's error only retires it.
    session.on('error', () => { this.retire(e) })
    session.on('goaway', () => { this.retire(e) })
    session.on('close', () => { this.forget(e) })
    return e
  }

  /** No new stream goes to `e`; the ones on it finish. */
  private retire (e: Entry): void {
    if (this.byKey.get(e.key) === e) this.byKey.delete(e.key)
  }

  private forget (e: Entry): void {
    this.retire(e)
    if (!this.all.delete(e)) return
    this.idle.delete(e)
    const owner = e.owner
    owner.idle.delete(e)
    // The map holds only addresses with sessions: its size is bounded by the pool's.
    if (--owner.open === 0) this.owners.delete(owner.client)
    if (e.idleTimer !== null) { clearTimeout(e.idleTimer); e.idleTimer = null }
  }

  closeAll (): void {
    for (const e of this.all) e.session.destroy()
  }
}
