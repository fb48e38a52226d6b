/**
 * Where policies come from. `PolicySource` is the seam for a second backend (etcd, the
 * Kubernetes API); `DirectoryPolicySource` reads every .yaml/.yml/.json file below a directory.
 * Results are cached per file by (size, mtime, inode) and then by content, so an unchanged file
 * yields the SAME `FilePolicies` object and the compiler can skip its endpoints.
 */
import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { ERR, type PolicyError } from './errors.js'
import type { FilePolicies } from './model.js'
import { readYamlFile } from './source-file.js'
import { validatePolicyFile } from './validate.js'
import { watchPaths } from './watch.js'

/** One resource (a file): its policies when valid, else its errors. */
export interface PolicyResource {
  /** Stable key (the file path as given). */
  key: string
  policies: FilePolicies | null
  errors: readonly PolicyError[]
}

export interface PolicySource {
  readonly description: string
  /** Every resource currently present. Unchanged resources return the same objects. */
  load (): Promise<PolicyResource[]>
  watch (onChange: () => void): () => void
}

const EXT = /\.(ya?ml|json)$/i
/** Refuse to walk absurd trees (a mistaken `--policies /`). */
const MAX_FILES = 10000

interface CacheEntry { stamp: string, text: string, resource: PolicyResource }

export class DirectoryPolicySource implements PolicySource {
  private readonly cache = new Map<string, CacheEntry>()
  constructor (readonly dir: string) {}
  get description (): string { return this.dir }

  async load (): Promise<PolicyResource[]> {
    const files: string[] = []
    const errors: PolicyError[] = []
    await this.walk(this.dir, files, errors)
    const out: PolicyResource[] = []
    if (errors.length > 0) out.push({ key: this.dir, policies: null, errors })
    const seen = new Set<string>()
    for (const file of files.sort()) {
      seen.add(file)
      out.push(await this.loadFile(file))
    }
    for (const k of this.cache.keys()) if (!seen.has(k)) this.cache.delete(k)
    return out
  }

  private async walk (dir: string, out: string[], errors: PolicyError[]): Promise<void> {
    let entries
    try {
      entries = await readdir(dir, { withFileTypes: true })
    } catch (err) {
      errors.push({ code: ERR.READ, file: dir, line: 0, col: 0, path: '', message: `cannot read policy directory: ${(err as Error).message}` })
      return
    }
    for (const e of entries) {
      if (e.name.startsWith('.')) continue // editor temp files, .git
      const p = join(dir, e.name)
      if (e.isDirectory()) await this.walk(p, out, errors)
      else if ((e.isFile() || e.isSymbolicLink()) && EXT.test(e.name)) {
        if (out.length >= MAX_FILES) {
          errors.push({ code: ERR.TOO_LARGE, file: dir, line: 0, col: 0, path: '', message: `more than ${MAX_FILES} policy files` })
          return
        }
        out.push(p)
      }
    }
  }

  private async loadFile (file: string): Promise<PolicyResource> {
    let stamp = ''
    try {
      const s = await stat(file)
      stamp = `${s.size}:${s.mtimeMs}:${s.ino}`
    } catch { /* vanished: readYamlFile reports it */ }
    const cached = this.cache.get(file)
    if (cached !== undefined && stamp !== '' && cached.stamp === stamp) return cached.resource
    const parsed = await readYamlFile(file)
    if ('errors' in parsed) {
      const resource = { key: file, policies: null, errors: parsed.errors }
      if (stamp !== '') this.cache.set(file, { stamp, text: '', resource })
      return resource
    }
    // Same bytes (touched, or rewritten identically): keep the same objects.
    if (cached !== undefined && cached.text === parsed.text) {
      cached.stamp = stamp
      return cached.resource
    }
    const { policies, errors } = validatePolicyFile(parsed)
    const resource: PolicyResource = errors.length > 0 ? { key: file, policies: null, errors } : { key: file, policies, errors: [] }
    this.cache.set(file, { stamp, text: parsed.text, resource })
    return resource
  }

  watch (onChange: () => void): () => void {
    return watchPaths([this.dir], true, (name) => name === null || EXT.test(name) || !name.includes('.'), onChange)
  }
}
