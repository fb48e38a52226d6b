/**
 * Numbers for label sets (identities) and for endpoints. Cilium allocates cluster identities
 * from 256; ours are node-local but must be stable across restarts, so the file
 * allocator persists every assignment under `stateDir`. Numbers are never reused: a label set
 * that comes back gets its old number, and a removed one keeps its number reserved.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ERR, StoreError } from './errors.js'
import { MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY, type Label } from './types.js'

/** Largest endpoint id: it must fit the 16-bit field of the kernel map keys. */
export const MAX_ENDPOINT_ID = 65535

export interface IdentityAllocator {
  /** Stable identity for a label set (order-insensitive). Throws WARDEN_ERR_IDENTITY_EXHAUSTED. */
  identityFor (labels: readonly Label[]): number
  /** Stable endpoint id (1..65535) for `namespace/name`. */
  endpointIdFor (key: string): number
  /** Persist new assignments (no-op in memory). */
  flush (): Promise<void>
}

export function labelsKey (labels: readonly Label[]): string {
  return [...labels].sort().join('\n')
}

export class MemoryIdentityAllocator implements IdentityAllocator {
  protected identities = new Map<string, number>()
  protected endpoints = new Map<string, number>()
  protected nextIdentity = MIN_CLUSTER_IDENTITY
  protected nextEndpoint = 1
  protected dirty = false

  identityFor (labels: readonly Label[]): number {
    const key = labelsKey(labels)
    let id = this.identities.get(key)
    if (id === undefined) {
      if (this.nextIdentity > MAX_CLUSTER_IDENTITY) throw new StoreError(ERR.IDENTITY_EXHAUSTED, 'no identity left in 256..65535', { labels })
      id = this.nextIdentity++
      this.identities.set(key, id)
      this.dirty = true
    }
    return id
  }

  endpointIdFor (key: string): number {
    let id = this.endpoints.get(key)
    if (id === undefined) {
      if (this.nextEndpoint > MAX_ENDPOINT_ID) throw new StoreError(ERR.IDENTITY_EXHAUSTED, 'no endpoint id left in 1..65535', { endpoint: key })
      id = this.nextEndpoint++
      this.endpoints.set(key, id)
      this.dirty = true
    }
    return id
  }

  async flush (): Promise<void> { this.dirty = false }
}

interface StateFile { version: 1, identities: Record<string, number>, endpoints: Record<string, number> }

/** Persists to `<stateDir>/identities.json` (written to a temp file, then renamed). */
export class FileIdentityAllocator extends MemoryIdentityAllocator {
  private constructor (private readonly path: string) { super() }

  static async open (stateDir: string): Promise<FileIdentityAllocator> {
    const a = new FileIdentityAllocator(join(stateDir, 'identities.json'))
    try {
      await mkdir(stateDir, { recursive: true })
    } catch (err) {
      throw new StoreError(ERR.STATE, `cannot create state dir ${stateDir}: ${(err as Error).message}`, { stateDir })
    }
    let text: string | null = null
    try {
      text = await readFile(a.path, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new StoreError(ERR.STATE, `cannot read ${a.path}: ${(err as Error).message}`, { path: a.path })
    }
    if (text !== null) {
      let state: StateFile
      try {
        state = JSON.parse(text) as StateFile
        if (state.version !== 1 || typeof state.identities !== 'object' || typeof state.endpoints !== 'object') throw new Error('unexpected shape')
      } catch (err) {
        // Refuse rather than renumber: renumbering would silently change every kernel key.
        throw new StoreError(ERR.STATE, `corrupt identity state ${a.path}: ${(err as Error).message}; move it away to start afresh`, { path: a.path })
      }
      for (const [k, v] of Object.entries(state.identities)) {
        a.identities.set(k, v)
        a.nextIdentity = Math.max(a.nextIdentity, v + 1)
      }
      for (const [k, v] of Object.entries(state.endpoints)) {
        a.endpoints.set(k, v)
        a.nextEndpoint = Math.max(a.nextEndpoint, v + 1)
      }
    }
    return a
  }

  override async flush (): Promise<void> {
    if (!this.dirty) return
    const state: StateFile = { version: 1, identities: Object.fromEntries(this.identities), endpoints: Object.fromEntries(this.endpoints) }
    const tmp = `${this.path}.${process.pid}.tmp`
    try {
      await writeFile(tmp, JSON.stringify(state, null, 1))
      await rename(tmp, this.path)
    } catch (err) {
      throw new StoreError(ERR.STATE, `cannot write ${this.path}: ${(err as Error).message}`, { path: this.path })
    }
    this.dirty = false
  }
}
