/**
 * The agent's connection to etcd: one state machine (connecting -> connected -> down ->
 * connecting ...), one lease, and the keys this node owns under it.
 *
 * A session is one etcd3 client and one lease. Anything that fails inside a session -- a call
 * past its deadline, a watch stream that breaks, the lease that etcd no longer has -- ends the
 * session, and the next one starts from scratch after a backoff: a fresh client, a fresh lease,
 * every owned key written again under it, and the session hooks (the watches' resume or relist,
 * the allocator's check of its identities) run before the state is `connected` again. So an etcd
 * restarted, partitioned away or restored from an empty data directory all take one path, and
 * nothing the agent enforces is flushed meanwhile: the hooks only ever apply differences.
 *
 * Owned keys are what this node publishes (its node record, its endpoints' ipcache entries, its
 * identity references): a desired map, written in order through one queue. While down, changes
 * only update the map; the next session writes the map as it is then.
 */
import type { Logger } from 'pino'
import { ClusterError, ERR } from './errors.js'
import { loadTlsMaterial, type KvstoreTlsFiles, type KvstoreTlsMaterial, type Secret } from './etcd-config.js'
import { Kv } from './kv.js'
import { probeTls } from './tls-probe.js'

/** Cilium's LockLeaseTTL (pkg/defaults): the TTL of the lease locks are taken under. */
export const LOCK_LEASE_TTL_SECONDS = 25

export type ConnectionState = 'connecting' | 'connected' | 'down' | 'closed'

export interface ConnectionOptions {
  urls: string[]
  /** This node's marker key (keys.ts markerKey): without it, no session reports lostData. */
  markerKey?: string
  /**
   * TLS files (read again at every session start, so a rotated certificate is picked up at the
   * next reconnect, as Cilium reloads it) and etcd credentials (etcd-config.ts).
   */
  tls?: KvstoreTlsFiles
  auth?: { username: string, password: Secret }
  /** The etcd.config file the settings came from, named in errors. */
  configFile?: string
  /** Lease TTL in seconds: this node's keys vanish this long after the agent stops renewing. */
  leaseTtlSeconds: number
  /** Deadline of one etcd call (default 2000 ms). */
  timeoutMs?: number
  /** How often the lease is renewed and etcd checked (default 1000 ms, at most a third of the TTL). */
  probeMs?: number
  /** Reconnect backoff, doubling from min to max (defaults 200 ms, 10 s). */
  backoffMinMs?: number
  backoffMaxMs?: number
  logger: Logger
}

/** One connected session, as the hooks see it. */
export interface Session {
  readonly kv: Kv
  readonly lease: string
  /**
   * The lease of this session's locks: short (Cilium's LockLeaseTTL, 25 s), so that a lock held
   * by an agent that died blocks the others that long, not the whole `--kvstore-lease-ttl`.
   */
  readonly lockLease: string
  /** etcd's revision and cluster id when the session started. */
  readonly revision: number
  readonly clusterId: string
  /**
   * Whether etcd still had the previous session's lease (so its data survived): watches may
   * resume from their revisions. False on the first session and after etcd lost its data.
   */
  readonly continuous: boolean
  /**
   * etcd lost data since this node's last session (its marker is gone or was written again at
   * another revision: restored empty or from an older backup), also across an agent restart:
   * keys absent now may only not be republished yet.
   */
  readonly lostData: boolean
  /** End this session (a watch broke): reconnect after the backoff. */
  fail: (err: Error) => void
}

export interface SessionHook {
  /** Run at each session start, after the owned keys are written; a throw ends the session. */
  onSession: (s: Session) => Promise<void>
  /** The session ended (etcd unreachable): stop using it. */
  onDown?: () => void
}

export interface ConnectionHealth {
  state: ConnectionState
  /** Seconds since the connection was lost (0 while connected). */
  downSeconds: number
  /** While down: the error of the last attempt. */
  lastError: { message: string, code: string | undefined } | null
}

export interface ConnectionStats {
  connected: number
  outages: number
  sessions: number
  republishedKeys: number
  keyWrites: number
  /** Session starts etcd refused for the credentials (WARDEN_ERR_KVSTORE_AUTH). */
  authFailures: number
  /** Session starts whose TLS handshake failed (WARDEN_ERR_KVSTORE_TLS). */
  tlsFailures: number
}

export class Connection {
  private state: ConnectionState = 'connecting'
  private session: Session | null = null
  private sessionSeq = 0
  private readonly owned = new Map<string, string>()
  private readonly hooks: SessionHook[] = []
  private queue: Promise<void> = Promise.resolve()
  private probeTimer: NodeJS.Timeout | null = null
  private retryTimer: NodeJS.Timeout | null = null
  private backoff: number
  /** The lease of the last session that got connected. */
  private lastLease: string | null = null
  /** The revision at which this node last wrote its marker (null: never, as far as it knows). */
  private markerRevision: number | null = null
  /** A loss seen by a session that did not get as far as its hooks: the next one reports it. */
  private lossPending = false
  private downSince = 0
  /** Why the last session ended or could not start (for `warden status`). */
  private lastError: { message: string, code: string | undefined } | null = null
  private readonly waiters: (() => void)[] = []
  /** A session attempt is under way, and who waits for its outcome (waitAttempt). */
  private attempting = false
  private readonly attemptWaiters: (() => void)[] = []
  readonly stats: ConnectionStats = { connected: 0, outages: 0, sessions: 0, republishedKeys: 0, keyWrites: 0, authFailures: 0, tlsFailures: 0 }
  /** The code and reason last logged in this outage: a different cause is logged again. */
  private downCause = ''
  private readonly log: Logger
  private readonly timeoutMs: number
  private readonly probeMs: number
  private readonly backoffMin: number
  private readonly backoffMax: number

  constructor (readonly opts: ConnectionOptions) {
    if (!Number.isInteger(opts.leaseTtlSeconds) || opts.leaseTtlSeconds < 2) throw new ClusterError(ERR.KVSTORE_CONFIG, `the kvstore lease TTL must be a whole number of seconds, 2 or more; got ${opts.leaseTtlSeconds}`, { leaseTtlSeconds: opts.leaseTtlSeconds })
    this.log = opts.logger
    this.timeoutMs = opts.timeoutMs ?? 2000
    this.probeMs = Math.min(opts.probeMs ?? 1000, opts.leaseTtlSeconds * 1000 / 3)
    this.backoffMin = opts.backoffMinMs ?? 200
    this.backoffMax = opts.backoffMaxMs ?? 10000
    this.backoff = this.backoffMin
  }

  get current (): ConnectionState { return this.state }

  /** The marker's revision, to persist; and its restore at start (before the first session). */
  get marker (): number | null { return this.markerRevision }
  restoreMarker (revision: number): void { this.markerRevision = revision }

  /**
   * How long after etcd is back a live agent may take to have republished its keys: it tries
   * again at most one longest backoff later, and a session start is a few calls (probe, two
   * leases, the puts), each within the call deadline.
   */
  get republishWindowMs (): number { return this.backoffMax + 4 * this.timeoutMs }

  /** The state with how long it has been down and why: what `warden status` shows. */
  health (now = Date.now()): ConnectionHealth {
    const down = this.state === 'down'
    return {
      state: this.state,
      downSeconds: down ? Math.round((now - this.downSince) / 1000) : 0,
      lastError: down ? this.lastError : null
    }
  }
  /** The live session, or null while not connected. */
  get live (): Session | null { return this.state === 'connected' ? this.session : null }

  addHook (h: SessionHook): void { this.hooks.push(h) }

  start (): void { this.attempt() }

  /** Resolves when connected (or closed), or after `ms`; true when connected. */
  async waitConnected (ms: number): Promise<boolean> {
    if (this.state === 'connected') return true
    return await new Promise((resolve) => {
      const timer = setTimeout(() => { done(); resolve(false) }, ms)
      const done = (): void => { const i = this.waiters.indexOf(fire); if (i >= 0) this.waiters.splice(i, 1); clearTimeout(timer) }
      const fire = (): void => { done(); resolve(this.state === 'connected') }
      this.waiters.push(fire)
    })
  }

  /**
   * Resolves true when connected; false at once while etcd is known to be away (no attempt
   * under way), else when the attempt under way fails, or after `ms`.
   */
  async waitAttempt (ms: number): Promise<boolean> {
    if (this.state === 'connected') return true
    if (!this.attempting) return false
    return await new Promise((resolve) => {
      const timer = setTimeout(() => { done(); resolve(false) }, ms)
      const done = (): void => { const i = this.attemptWaiters.indexOf(fire); if (i >= 0) this.attemptWaiters.splice(i, 1); clearTimeout(timer) }
      const fire = (): void => { done(); resolve(this.state === 'connected') }
      this.attemptWaiters.push(fire)
    })
  }

  /** Publish `key` = `value` under this node's lease (now if connected, else at the next session). */
  own (key: string, value: string): void {
    if (this.owned.get(key) === value) return
    this.owned.set(key, value)
    this.enqueue(async (s) => { if (this.owned.get(key) === value) { await s.kv.put(key, value, s.lease); this.stats.keyWrites++ } })
  }

  /** Record `key` = `value` as owned without writing it (the caller just wrote it in a transaction). */
  adopt (key: string, value: string): void { this.owned.set(key, value) }

  disown (key: string): void {
    if (!this.owned.delete(key)) return
    this.enqueue(async (s) => { if (!this.owned.has(key)) { await s.kv.delete(key); this.stats.keyWrites++ } })
  }

  ownedKeys (): ReadonlyMap<string, string> { return this.owned }

  /**
   * Resolves when the owned-key writes queued so far are done (or dropped with their session),
   * or after one call deadline: a caller on the policy reload path never waits longer.
   */
  async drain (): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    await Promise.race([this.queue, new Promise<void>((resolve) => { timer = setTimeout(resolve, this.timeoutMs) })])
    clearTimeout(timer)
  }

  /** Run `fn` in the write queue against the live session; skipped (false) while not connected. */
  async withSession<T> (fn: (s: Session) => Promise<T>): Promise<T> {
    const s = this.live
    if (s === null) throw new ClusterError(ERR.KVSTORE_UNAVAILABLE, 'etcd is not connected', {})
    try {
      return await fn(s)
    } catch (err) {
      if (err instanceof ClusterError && err.code === ERR.KVSTORE_UNAVAILABLE) this.fail(s, err)
      throw err
    }
  }

  private enqueue (fn: (s: Session) => Promise<void>): void {
    const s = this.live
    if (s === null) return // written by the next session's republish
    this.queue = this.queue.then(async () => {
      if (this.session !== s || this.state !== 'connected') return
      try { await fn(s) } catch (err) { this.fail(s, err as Error) }
    })
  }

  private attempt (): void {
    if (this.state === 'closed') return
    const seq = ++this.sessionSeq
    let material: KvstoreTlsMaterial | undefined
    if (this.opts.tls !== undefined) {
      try {
        material = loadTlsMaterial(this.opts.tls, this.opts.configFile)
      } catch (err) {
        this.goDown(err as Error)
        return
      }
    }
    const kv = new Kv(this.opts.urls, this.timeoutMs, { tls: material, auth: this.opts.auth })
    this.attempting = true
    void (async () => {
      const probe = await kv.get('cilium/state/')
      // Did etcd keep the previous session's lease? Then its data survived and watches may resume.
      let continuous = false
      if (this.lastLease !== null) {
        try { continuous = (await kv.leaseTtl(this.lastLease)) > 0 } catch { continuous = false }
      }
      // Did etcd lose data since this node's last session? Its marker tells, whatever the
      // revisions did meanwhile (other nodes' republishes can take a restored etcd's past this
      // node's copy). A backup old enough to hold the previous lease is no continuation either.
      let lostData = false
      if (this.opts.markerKey !== undefined) {
        const m = await kv.get(this.opts.markerKey)
        lostData = this.lossPending || (this.markerRevision !== null && (m.value === null || m.modRevision !== this.markerRevision))
        if (lostData) continuous = false
        this.lossPending = lostData
        this.markerRevision = await kv.put(this.opts.markerKey, new Date().toISOString())
      }
      const lease = await kv.grantLease(this.opts.leaseTtlSeconds)
      const lockLease = await kv.grantLease(Math.min(LOCK_LEASE_TTL_SECONDS, this.opts.leaseTtlSeconds))
      if (this.superseded(seq)) throw new Error('superseded')
      const session: Session = { kv, lease, lockLease, revision: probe.revision, clusterId: probe.clusterId, continuous, lostData, fail: (err) => this.fail(session, err) }
      this.session = session
      // Republish everything this node owns under the new lease (written again even when etcd kept
      // the keys: they move to the new lease, and a value equal to the stored one changes nothing
      // for the watchers).
      const keys = [...this.owned]
      for (const [k, v] of keys) await kv.put(k, v, lease)
      this.stats.republishedKeys += keys.length
      for (const h of this.hooks) await h.onSession(session)
      if (this.superseded(seq)) throw new Error('superseded')
      this.lossPending = false // the copies have relisted knowing it
      // The previous lease, if etcd still has it, holds nothing any more: let it go now rather
      // than at its expiry.
      if (this.lastLease !== null && continuous) await kv.revokeLease(this.lastLease).catch(() => {})
      this.lastLease = lease
      const wasDown = this.state === 'down'
      this.state = 'connected'
      this.stats.connected = 1
      this.stats.sessions++
      this.backoff = this.backoffMin
      const fields = { kvstore: this.opts.urls.join(','), lease, revision: probe.revision, resumed: continuous, republishedKeys: keys.length }
      if (wasDown) this.log.info({ ...fields, downMs: Date.now() - this.downSince }, continuous ? 'kvstore reconnected: watches resumed, keys republished' : 'kvstore reconnected: state relisted, keys republished')
      else this.log.info(fields, 'kvstore connected')
      this.scheduleProbe(session)
      // Changes made while the session was starting: write them now.
      const written = new Map(keys)
      for (const [k, v] of this.owned) if (written.get(k) !== v) this.enqueue(async (s) => { if (this.owned.get(k) === v) await s.kv.put(k, v, s.lease) })
      for (const k of written.keys()) if (!this.owned.has(k)) this.enqueue(async (s) => { if (!this.owned.has(k)) await s.kv.delete(k) })
      this.settleAttempt()
      for (const w of this.waiters.splice(0)) w()
    })().catch(async (err: Error) => {
      kv.close()
      if (this.superseded(seq)) return
      this.session = null
      this.goDown(await this.explain(err, material))
      this.settleAttempt()
    })
  }

  private settleAttempt (): void {
    this.attempting = false
    for (const w of this.attemptWaiters.splice(0)) w()
  }

  /**
   * An unreachable TLS endpoint may be a handshake that failed: ask each endpoint why (tls-probe.ts),
   * so a wrong CA or a refused client certificate is reported as such and not as an outage.
   */
  private async explain (err: Error, material: KvstoreTlsMaterial | undefined): Promise<Error> {
    if (material === undefined || (err as ClusterError).code !== ERR.KVSTORE_UNAVAILABLE) return err
    // all endpoints at once: an unreachable one costs one deadline, not one each
    const found = await Promise.all(this.opts.urls.map(async (url) => ({ url, f: await probeTls(url, material, this.timeoutMs).catch(() => null) })))
    const hit = found.find((x) => x.f !== null)
    if (hit === undefined || hit.f === null) return err
    return new ClusterError(ERR.KVSTORE_TLS, `TLS with etcd at ${hit.url} failed (${hit.f.reason}): ${hit.f.detail}`, { endpoint: hit.url, reason: hit.f.reason })
  }

  /** A newer attempt started, or the connection closed, since attempt `seq` began. */
  private superseded (seq: number): boolean { return seq !== this.sessionSeq || this.state === 'closed' }

  private scheduleProbe (s: Session): void {
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null
      if (this.session !== s || this.state !== 'connected') return
      Promise.all([s.kv.keepAlive(s.lease), s.kv.keepAlive(s.lockLease)]).then(([ttl, lockTtl]) => {
        if (ttl <= 0 || lockTtl <= 0) throw new ClusterError(ERR.KVSTORE_UNAVAILABLE, `etcd no longer has lease ${ttl <= 0 ? s.lease : s.lockLease} (restored or expired): its keys are gone`, { lease: s.lease })
        this.scheduleProbe(s)
      }).catch((err: Error) => this.fail(s, err))
    }, this.probeMs)
    this.probeTimer.unref()
  }

  private fail (s: Session, err: Error): void {
    if (this.session !== s || this.state === 'closed') return
    this.session = null
    if (this.probeTimer !== null) { clearTimeout(this.probeTimer); this.probeTimer = null }
    for (const h of this.hooks) h.onDown?.()
    s.kv.close()
    this.goDown(err)
  }

  private goDown (err: Error): void {
    this.lastError = { message: err.message, code: (err as ClusterError).code }
    const code = (err as ClusterError).code
    const reason = (err as ClusterError).context?.reason as string | undefined
    if (code === ERR.KVSTORE_AUTH) this.stats.authFailures++
    if (code === ERR.KVSTORE_TLS) this.stats.tlsFailures++
    const cause = `${code ?? ''}/${reason ?? ''}`
    const atStart = this.state === 'connecting' && this.stats.sessions === 0
    if (this.state !== 'down') {
      this.downSince = Date.now()
      this.stats.outages++
    }
    // One line per outage, and one more whenever its cause changes (etcd back but refusing the
    // credentials is news): never one per retry.
    if (this.state !== 'down' || cause !== this.downCause) {
      const fields = { kvstore: this.opts.urls.join(','), err: err.message, code, reason }
      const enforcing = atStart ? 'enforcing the cluster state last persisted, retrying' : 'enforcing what is known, nothing flushed, retrying'
      if (code === ERR.KVSTORE_AUTH) this.log.error(fields, `kvstore authentication failed (${reason ?? 'refused'}): ${enforcing}`)
      else if (code === ERR.KVSTORE_TLS) this.log.error(fields, `kvstore TLS handshake failed (${reason ?? 'failed'}): ${enforcing}`)
      else if (code === ERR.KVSTORE_CONFIG) this.log.error(fields, `kvstore TLS files unusable: ${enforcing}`)
      else this.log.warn(fields, atStart ? `kvstore unreachable at start: ${enforcing}` : `kvstore unreachable: ${enforcing}`)
      this.downCause = cause
    }
    this.state = 'down'
    this.stats.connected = 0
    const wait = this.backoff
    this.backoff = Math.min(this.backoffMax, this.backoff * 2)
    this.retryTimer = setTimeout(() => { this.retryTimer = null; this.attempt() }, wait)
    this.retryTimer.unref()
  }

  /** Stop: revoke the lease when `revoke` (a clean leave: this node's keys go at once), close. */
  async close (opts: { revoke?: boolean } = {}): Promise<void> {
    const s = this.live
    this.state = 'closed'
    this.sessionSeq++
    this.stats.connected = 0
    if (this.probeTimer !== null) clearTimeout(this.probeTimer)
    if (this.retryTimer !== null) clearTimeout(this.retryTimer)
    for (const w of this.waiters.splice(0)) w()
    this.settleAttempt()
    if (s !== null) {
      await this.queue.catch(() => {})
      await s.kv.revokeLease(s.lockLease).catch(() => {}) // no lock outlives a stop
      if (opts.revoke === true) await s.kv.revokeLease(s.lease).catch(() => {})
      for (const h of this.hooks) h.onDown?.()
      s.kv.close()
    }
    this.session = null
  }
}
