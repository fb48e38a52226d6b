/**
 * One file on disk to YAML documents with positions. Used for policy files and the endpoints
 * file alike. Guards against what would otherwise crash or stall the agent: huge files,
 * binary files, empty files, YAML syntax errors, alias bombs.
 */
import { readFile, stat } from 'node:fs/promises'
import { isMap, isScalar, isSeq, LineCounter, parseAllDocuments, type Document, type Node as YamlNode } from 'yaml'
import { ERR, renderPath, type PolicyError, type PolicyErrorCode } from './errors.js'

/** Larger files are refused unread (a policy file is a few KB; 4 MiB is generous). */
export const MAX_FILE_BYTES = 4 * 1024 * 1024
/** YAML aliases expanded at most this many times per document (billion-laughs guard). */
const MAX_ALIAS_COUNT = 100

export type PathSeg = string | number

/** Collects errors for one file, with positions resolved from the YAML tree. */
export class Reporter {
  constructor (readonly file: string, private readonly lc: LineCounter | null,
    private readonly doc: Document | null = null, readonly errors: PolicyError[] = []) {}

  /** A reporter for one document of the file; errors of all documents land in one list. */
  forDocument (doc: Document): Reporter {
    return new Reporter(this.file, this.lc, doc, this.errors)
  }

  /** Report at `path`. `atKey` points at the mapping key (unknown fields) rather than its value. */
  add (code: PolicyErrorCode, path: readonly PathSeg[], message: string, atKey = false): void {
    const { line, col } = this.locate(path, atKey)
    this.errors.push({ code, file: this.file, line, col, path: renderPath(path), message })
  }

  addAt (code: PolicyErrorCode, line: number, col: number, message: string): void {
    this.errors.push({ code, file: this.file, line, col, path: '', message })
  }

  /** The line of the node at `path` (1-based), or of its closest existing ancestor. */
  lineOf (path: readonly PathSeg[]): number {
    return this.locate(path, false).line
  }

  private locate (path: readonly PathSeg[], atKey: boolean): { line: number, col: number } {
    if (this.doc === null || this.lc === null) return { line: 1, col: 1 }
    let node: unknown = this.doc.contents
    let offset = (node as YamlNode | null)?.range?.[0] ?? 0
    for (let i = 0; i < path.length; i++) {
      const seg = path[i]
      let next: unknown
      let keyNode: unknown
      if (isMap(node)) {
        const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg))
        if (pair === undefined) break
        next = pair.value
        keyNode = pair.key
      } else if (isSeq(node) && typeof seg === 'number') {
        next = node.items[seg]
      } else {
        break
      }
      const last = i === path.length - 1
      const target = (last && atKey && keyNode !== undefined) ? keyNode : next
      const r = (target as YamlNode | null)?.range
      if (r === undefined || r === null) {
        // `key:` with no value: point at the key.
        const kr = (keyNode as YamlNode | undefined)?.range
        if (kr !== undefined && kr !== null) offset = kr[0]
        break
      }
      offset = r[0]
      node = next
    }
    const pos = this.lc.linePos(offset)
    return { line: pos.line, col: pos.col }
  }
}

export interface ParsedFile {
  /** One JS value per non-empty YAML document, with its reporter for positions. */
  docs: { value: unknown, reporter: Reporter }[]
  reporter: Reporter
  /** Raw bytes, to tell whether a file changed. */
  text: string
}

function fail (file: string, code: PolicyErrorCode, message: string): { errors: PolicyError[] } {
  return { errors: [{ code, file, line: 1, col: 1, path: '', message }] }
}

/** Read and parse one file. Never throws for anything about the file's content. */
export async function readYamlFile (file: string, displayName = file): Promise<ParsedFile | { errors: PolicyError[] }> {
  let size: number
  try {
    size = (await stat(file)).size
  } catch (err) {
    return fail(displayName, ERR.READ, `cannot read: ${(err as Error).message}`)
  }
  if (size > MAX_FILE_BYTES) {
    return fail(displayName, ERR.TOO_LARGE, `file is ${size} bytes; the limit is ${MAX_FILE_BYTES} bytes`)
  }
  let buf: Buffer
  try {
    buf = await readFile(file)
  } catch (err) {
    return fail(displayName, ERR.READ, `cannot read: ${(err as Error).message}`)
  }
  // Re-check: the file may have grown between stat and read.
  if (buf.length > MAX_FILE_BYTES) return fail(displayName, ERR.TOO_LARGE, `file is ${buf.length} bytes; the limit is ${MAX_FILE_BYTES} bytes`)
  return parseYamlText(buf, displayName)
}

export function parseYamlText (buf: Buffer, file: string): ParsedFile | { errors: PolicyError[] } {
  if (buf.includes(0)) return fail(file, ERR.BINARY, 'binary file (contains NUL bytes); expected YAML or JSON text')
  let text: string
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(buf)
  } catch {
    return fail(file, ERR.BINARY, 'binary file (not valid UTF-8); expected YAML or JSON text')
  }
  if (text.trim() === '') return fail(file, ERR.EMPTY, 'empty file; expected at least one policy document')
  const lc = new LineCounter()
  const reporter = new Reporter(file, lc)
  const docs: ParsedFile['docs'] = []
  let parsed
  try {
    parsed = parseAllDocuments(text, { lineCounter: lc, uniqueKeys: true, prettyErrors: false })
  } catch (err) {
    return fail(file, ERR.SYNTAX, `YAML: ${(err as Error).message}`)
  }
  const list = Array.isArray(parsed) ? parsed : []
  for (const doc of list) {
    if (doc.errors.length > 0) {
      for (const e of doc.errors) {
        const pos = lc.linePos(e.pos[0])
        reporter.addAt(ERR.SYNTAX, pos.line, pos.col, `YAML: ${firstLine(e.message)}`)
      }
      continue
    }
    if (doc.contents === null) continue // an empty document between `---` separators
    let value: unknown
    try {
      value = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT })
    } catch (err) {
      const r = doc.contents.range ?? [0]
      const pos = lc.linePos(r[0])
      reporter.addAt(ERR.SYNTAX, pos.line, pos.col, `YAML: ${firstLine((err as Error).message)}`)
      continue
    }
    if (value === null || value === undefined) continue // `---` followed by nothing
    docs.push({ value, reporter: reporter.forDocument(doc) })
  }
  if (reporter.errors.length > 0) return { errors: reporter.errors }
  if (docs.length === 0) return fail(file, ERR.EMPTY, 'no YAML document in the file (only comments or separators)')
  return { docs, reporter, text }
}

function firstLine (s: string): string {
  const i = s.indexOf('\n')
  return i === -1 ? s : s.slice(0, i).replace(/:$/, '')
}
