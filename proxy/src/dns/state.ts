/**
 * The FQDN cache on disk: `<stateDir>/dns-cache.json`, replaced atomically (write a temporary
 * file, then rename), at most one write at a time, debounced so a burst of answers costs one.
 * A restart reads it back, so learned IPs (and zombies) outlive the agent (Cilium keeps the
 * endpoint DNS history in the endpoint state for the same reason).
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import type { PersistedCache } from './cache.js'
import { DnsProxyError } from './errors.js'

const FILE = 'dns-cache.json'
/** A change to the set (an IP added, evicted, expired, a zombie): written this soon. */
export const DEBOUNCE_MS = 200
/**
 * Answers that only push known IPs' expiry further: written this late. Under steady DNS load
 * nearly every answer is one, and rewriting the whole cache five times a second for them cost
 * CPU for nothing. What waits is bounded: a crash loses at most this much of their refreshed
 * expiry (those IPs may then expire that much early after a restart, unless a connection uses
 * them: zombies); a clean stop writes everything.
 */
export const REFRESH_DEBOUNCE_MS = 10_000

export class StateFile {
  private readonly path: string
  private timer: NodeJS.Timeout | undefined
  /** When the scheduled write fires (ms since the epoch). */
  private due = 0
  private pending: (() => PersistedCache) | undefined
  private writing: Promise<void> = Promise.resolve()

  constructor (private readonly dir: string, private readonly log: Logger) {
    this.path = join(dir, FILE)
  }

  /** The persisted data, or undefined when there is none or it cannot be read (logged). */
  async load (): Promise<unknown> {
    let text: string
    try {
      text = await readFile(this.path, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.log.error({ err: new DnsProxyError('WARDEN_ERR_DNS_STATE', 'cannot read the FQDN cache', { path: this.path }, err) }, 'dns: state not restored')
      }
      return undefined
    }
    try {
      return JSON.parse(text)
    } catch (err) {
      this.log.error({ err: new DnsProxyError('WARDEN_ERR_DNS_STATE', 'the FQDN cache is not valid JSON', { path: this.path }, err) }, 'dns: state not restored')
      return undefined
    }
  }

  /**
   * Write `make()` within `delayMs`; later calls before the write replace earlier ones, and a
   * sooner one brings a later write forward.
   */
  schedule (make: () => PersistedCache, delayMs = DEBOUNCE_MS): void {
    this.pending = make
    const due = Date.now() + delayMs
    if (this.timer !== undefined) {
      if (this.due <= due) return
      clearTimeout(this.timer)
    }
    this.due = due
    this.timer = setTimeout(() => {
      this.timer = undefined
      const m = this.pending
      this.pending = undefined
      if (m !== undefined) void this.save(m())
    }, delayMs)
    this.timer.unref()
  }

  /** Write now (after any write in progress); cancels a scheduled write. */
  save (data: PersistedCache): Promise<void> {
    clearTimeout(this.timer)
    this.timer = undefined
    this.pending = undefined
    this.writing = this.writing.then(() => this.write(data))
    return this.writing
  }

  private async write (data: PersistedCache): Promise<void> {
    const tmp = `${this.path}.${process.pid}.tmp`
    try {
      await mkdir(this.dir, { recursive: true })
      await writeFile(tmp, JSON.stringify(data), { mode: 0o600 })
      await rename(tmp, this.path)
    } catch (err) {
      this.log.error({ err: new DnsProxyError('WARDEN_ERR_DNS_STATE', 'cannot write the FQDN cache', { path: this.path }, err) }, 'dns: state not saved')
    }
  }
}
