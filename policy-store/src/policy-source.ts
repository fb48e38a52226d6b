/**
 * Where policies come from. `PolicySource` is the seam for a second backend (etcd, the
 * Kubernetes API); `DirectoryPolicySource` reads every .yaml/.yml/.json file below a directory.
 * Results are cached per file by (size, mtime, inode) and then by content, so an unchanged file
 * yields the SAME `FilePolicies` object and the compiler can skip its endpoints. Within a changed
 * file, documents are cached by (first line, text): an edit of one document re-parses and
 * re-validates that document only, and the others keep their `PolicyRule` objects.
 */
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { ERR, type PolicyError } from './errors.js'
import type { CidrGroup, FilePolicies, PolicyRule } from './model.js'
import { fileStampSync, parseYamlString, readTextFile, splitDocuments } from './source-file.js'
import { validatePolicyFile } from './validate.js'
import { watchPaths } from './watch.js'

/** One resource (a file): its policies when valid, else its errors. */
export interface PolicyResource {
  /** Stable key (the file path as given). */
  key: string
  policies: FilePolicies | null
  errors: readonly PolicyError[]
}

/** What a source holds now. */
export interface PolicyListing {
  /** Every resource found. Unchanged resources are the same objects as in the previous listing. */
  resources: PolicyResource[]
  /**
   * Errors of the listing itself (a directory that cannot be read, too many files). When there
   * are any, the listing may be incomplete: a resource missing from it is not known to be gone,
   * and the store keeps its last good version rather than dropping its policies.
   */
  listingErrors: PolicyError[]
}

export interface PolicySource {
  readonly description: string
  load (): Promise<PolicyListing>
  watch (onChange: () => void): () => void
}

const EXT = /\.(ya?ml|json)$/i
/** Refuse to walk absurd trees (a mistaken `--policies /`). */
const MAX_FILES = 10000
/** Files stat'ed between two turns of the event loop. */
const STAT_BATCH = 256

/** One document (piece of a file) parsed and validated. */
interface DocEntry { syntax: PolicyError[] | null, docCount: number, policies: FilePolicies | null, errors: PolicyError[] }
interface CacheEntry { stamp: string, text: string, resource: PolicyResource, docs: Map<string, DocEntry> }

export class DirectoryPolicySource implements PolicySource {
  private readonly cache = new Map<string, CacheEntry>()
  constructor (readonly dir: string) {}
  get description (): string { return this.dir }

  async load (): Promise<PolicyListing> {
    const files: string[] = []
    const errors: PolicyError[] = []
    await this.walk(this.dir, files, errors)
    const out: PolicyResource[] = []
    const seen = new Set<string>(files)
    files.sort()
    // Most files are unchanged: stat them synchronously (a few microseconds each, far less than
    // a promise round trip), yielding to the event loop between batches; read the others.
    for (let i = 0; i < files.length; i += STAT_BATCH) {
      if (i > 0) await new Promise((resolve) => setImmediate(resolve))
      for (const f of files.slice(i, i + STAT_BATCH)) {
        const stamp = fileStampSync(f)
        const cached = this.cache.get(f)
        out.push(cached !== undefined && stamp !== '' && cached.stamp === stamp ? cached.resource : await this.loadFile(f, stamp))
      }
    }
    for (const k of this.cache.keys()) if (!seen.has(k)) this.cache.delete(k)
    return { resources: out, listingErrors: errors }
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

  private async loadFile (file: string, stamp: string): Promise<PolicyResource> {
    const cached = this.cache.get(file)
    if (cached !== undefined && stamp !== '' && cached.stamp === stamp) return cached.resource
    const read = await readTextFile(file)
    if ('errors' in read) {
      const resource = { key: file, policies: null, errors: read.errors }
      // Keep the document cache: the next good version likely shares most documents.
      this.cache.set(file, { stamp: '', text: '', resource, docs: cached?.docs ?? new Map<string, DocEntry>() })
      return resource
    }
    // Same bytes (touched, or rewritten identically): keep the same objects.
    if (cached !== undefined && cached.text === read.text) {
      cached.stamp = stamp
      return cached.resource
    }
    const docs = new Map<string, DocEntry>()
    let pieces = splitDocuments(read.text).map((p) => {
      const key = `${p.lineBase}\n${p.parseText}`
      const d = cached?.docs.get(key) ?? docs.get(key) ?? parsePiece(p.parseText, file, p.lineBase)
      docs.set(key, d)
      return d
    })
    // A YAML error: report it exactly as the whole file parses (a quoted scalar may span a
    // `---` line there); if the whole file parses after all, use that.
    if (pieces.some((d) => d.syntax !== null)) pieces = [parsePiece(read.text, file, 0)]
    const resource = this.combine(file, pieces)
    this.cache.set(file, { stamp, text: read.text, resource, docs })
    return resource
  }

  /** The file's result from its documents: as if it had been parsed and validated whole. */
  private combine (file: string, pieces: DocEntry[]): PolicyResource {
    // YAML syntax errors alone (validation needs every document).
    const syntax = pieces.flatMap((d) => d.syntax ?? [])
    if (syntax.length > 0) return { key: file, policies: null, errors: syntax }
    if (pieces.every((d) => d.docCount === 0)) {
      return { key: file, policies: null, errors: [{ code: ERR.EMPTY, file, line: 1, col: 1, path: '', message: 'no YAML document in the file (only comments or separators)' }] }
    }
    const errors: PolicyError[] = []
    const rules: PolicyRule[] = []
    const cidrGroups: CidrGroup[] = []
    let policies = 0
    let skipped = 0
    for (const d of pieces) {
      errors.push(...d.errors)
      const p = d.policies as FilePolicies
      for (const r of p.rules) rules.push(r)
      for (const g of p.cidrGroups ?? []) cidrGroups.push(g)
      policies += p.policies
      skipped += p.skipped
    }
    if (errors.length > 0) return { key: file, policies: null, errors }
    const out: FilePolicies = { file, rules, policies, skipped }
    if (cidrGroups.length > 0) out.cidrGroups = cidrGroups
    return { key: file, policies: out, errors: [] }
  }

  watch (onChange: () => void): () => void {
    return watchPaths([this.dir], true, (name) => name === null || EXT.test(name) || !name.includes('.'), onChange)
  }
}

/**
 * Parse and validate one document (a piece of a file). The fast YAML path is tried first; a
 * document with a validation error is parsed again by the `yaml` package, whose positions the
 * error messages need.
 */
function parsePiece (text: string, file: string, lineBase: number): DocEntry {
  const parsed = parseYamlString(text, file, lineBase, true, true)
  if ('errors' in parsed) return { syntax: parsed.errors, docCount: 0, policies: null, errors: [] }
  let v = validatePolicyFile(parsed)
  if (v.errors.length > 0 && parsed.fast === true) {
    const slow = parseYamlString(text, file, lineBase, true)
    if ('errors' in slow) return { syntax: slow.errors, docCount: 0, policies: null, errors: [] }
    v = validatePolicyFile(slow)
  }
  return { syntax: null, docCount: parsed.docs.length, policies: v.policies, errors: v.errors }
}
