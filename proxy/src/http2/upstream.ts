/**
 * HTTP/2 (h2c) sessions to original destinations, shared by the streams of every client
 * connection with the same destination and source identity. One session per key carries many
 * streams (nghttp2 queues streams beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS); a
 * session that received GOAWAY, failed or closed is dropped from the pool at once, so the next
 * stream opens a fresh one while the streams already on it finish. A session with no stream
 * for `idleTimeoutMs` is closed.
 */
import http2, { type ClientHttp2Session } from 'node:http2'
import net from 'node:net'
import { setSocketMark, socketFd } from '../libc.js'

export interface H2UpstreamOptions {
  connectTimeoutMs: number
  idleTimeoutMs: number
  /** SO_MARK once connected (0: none), as the HTTP/1 upstream connections. */
  mark: number
  /** Our receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE), as on the client side. */
  initialWindowSize: number
  maxHeaderListSize: number
}

/** The message of the error a connect that took too long fails with. */
export const UPSTREAM_CONNECT_TIMEOUT = 'upstream connect timeout'

class Entry {
  active = 0
  idleTimer: NodeJS.Timeout | null = null
  constructor (readonly session: ClientHttp2Session) {}
}

export class H2UpstreamPool {
  private readonly byKey = new Map<string, Entry>()
  private readonly all = new Set<Entry>()

  constructor (private readonly opts: H2UpstreamOptions) {}

  /** Sessions open (gauge). */
  get size (): number { return this.all.size }

  /**
   * A session for `key`, and the function to call once per stream when that stream is over
   * (it lets an idle session time out).
   */
  acquire (key: string, ip: string, port: number): { session: ClientHttp2Session, done: () => void } {
    let e = this.byKey.get(key)
    if (e === undefined || e.session.closed || e.session.destroyed) e = this.open(key, ip, port)
    const entry = e
    entry.active++
    if (entry.idleTimer !== null) { clearTimeout(entry.idleTimer); entry.idleTimer = null }
    let once = false
    return {
      session: entry.session,
      done: () => {
        if (once) return
        once = true
        if (--entry.active === 0 && !entry.session.destroyed) {
          entry.idleTimer = setTimeout(() => { entry.session.close() }, this.opts.idleTimeoutMs)
          entry.idleTimer.unref()
        }
      }
    }
  }

  private open (key: string, ip: string, port: number): Entry {
    const { opts } = this
    let timer: NodeJS.Timeout | null = null
    const session = http2.connect(`http://${ip}:${port}`, {
      createConnection: () => {
        const s = net.connect({ host: ip, port, noDelay: true })
        timer = setTimeout(() => { s.destroy(new Error(UPSTREAM_CONNECT_TIMEOUT)) }, opts.connectTimeoutMs)
        s.once('connect', () => {
          if (timer !== null) { clearTimeout(timer); timer = null }
          // Set once connected, as for HTTP/1: the SYN takes the datapath's full path.
          if (opts.mark !== 0) setSocketMark(socketFd(s), opts.mark)
        })
        s.once('close', () => { if (timer !== null) { clearTimeout(timer); timer = null } })
        return s
      },
      settings: { enablePush: false, initialWindowSize: opts.initialWindowSize, maxHeaderListSize: opts.maxHeaderListSize }
    })
    const e = new Entry(session)
    this.byKey.set(key, e)
    this.all.add(e)
    const drop = (): void => { if (this.byKey.get(key) === e) this.byKey.delete(key) }
    // The streams on it report their own failures; the session's error only retires it.
    session.on('error', drop)
    session.on('goaway', drop)
    session.on('close', () => {
      drop()
      this.all.delete(e)
      if (e.idleTimer !== null) { clearTimeout(e.idleTimer); e.idleTimer = null }
    })
    return e
  }

  closeAll (): void {
    for (const e of this.all) e.session.destroy()
  }
}
