/**
 * The FQDN cache on disk: `<stateDir>/dns-cache.json`, replaced atomically (write a temporary
 * file, then rename), at most one write at a time, debounced so a burst of answers costs one.
 * A restart reads it back, so learned IPs (and zombies) outlive the agent (Cilium keeps the
 * endpoint DNS history in the endpoint state for the same reason, §6.5).
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import type { PersistedCache } from './cache.js'
import { DnsProxyError } from './errors.js'

const FILE = 'dns-cache.json'
const DEBOUNCE_MS = 200

export class StateFile {
  private readonly path: string
  private timer: NodeJS.Timeout | undefined
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

  /** Write `make()` soon; later calls before the write replace earlier ones. */
  schedule (make: () => PersistedCache): void {
    this.pending = make
    if (this.timer !== undefined) return
    this.timer = setTimeout(() => {
      this.timer = undefined
      const m = this.pending
      this.pending = undefined
      if (m !== undefined) void this.save(m())
    }, DEBOUNCE_MS)
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
