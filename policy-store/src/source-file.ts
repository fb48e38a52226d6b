/**
 * One file on disk to YAML documents with positions. Used for policy files and the endpoints
 * file alike. Guards against what would otherwise crash or stall the agent: huge files,
 * binary files, empty files, YAML syntax errors, alias bombs.
 */
import { statSync } from 'node:fs'
import { readFile, stat } from 'node:fs/promises'
import { isMap, isScalar, isSeq, LineCounter, parseAllDocuments, type Document, type Node as YamlNode } from 'yaml'
import { ERR, renderPath, type PolicyError, type PolicyErrorCode } from './errors.js'
import { fastParseYaml } from './fast-yaml.js'

/** Larger files are refused unread (a policy file is a few KB; 4 MiB is generous). */
export const MAX_FILE_BYTES = 4 * 1024 * 1024
/** YAML aliases expanded at most this many times per document (billion-laughs guard). */
const MAX_ALIAS_COUNT = 100

export type PathSeg = string | number

/** Collects errors for one file, with positions resolved from the YAML tree. */
/** Offset -> 1-based line and column (a yaml LineCounter, possibly shifted). */
export interface Positions { linePos (offset: number): { line: number, col: number } }

export class Reporter {
  constructor (readonly file: string, private readonly lc: Positions | null,
    private readonly doc: Document | null = null, readonly errors: PolicyError[] = [],
    /** Fast-path documents: the value and its sequence item lines instead of a YAML tree. */
    private readonly fast: { root: unknown, itemLines: WeakMap<readonly unknown[], number[]> } | null = null) {}

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
    if (this.fast !== null) {
      // Only sequence items are asked for (rule elements, endpoints).
      let node = this.fast.root
      for (let i = 0; i < path.length - 1; i++) node = (node as Record<string | number, unknown> | null)?.[path[i]]
      const line = Array.isArray(node) ? this.fast.itemLines.get(node)?.[path[path.length - 1] as number] : undefined
      if (line !== undefined) return line
    }
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
  /**
   * Parsed by the fast path (fast-yaml.ts): item lines are exact, but error positions are not;
   * if validation finds an error, parse again with `fast: false` to report it.
   */
  fast?: boolean
}

/** Younger files are re-read even when their stamp matches (timestamps are coarse: a rewrite of
 * the same size within one clock tick keeps the same mtime). */
const STAMP_SETTLE_MS = 1000

/**
 * `size:mtime:inode` of a file, for "unchanged since last read" checks; '' when it cannot be
 * trusted (missing file, or modified less than a second ago) so the caller re-reads it.
 */
export async function fileStamp (file: string): Promise<string> {
  try {
    const s = await stat(file)
    if (Date.now() - s.mtimeMs < STAMP_SETTLE_MS) return ''
    return `${s.size}:${s.mtimeMs}:${s.ino}`
  } catch {
    return ''
  }
}

/** `fileStamp` without the thread pool round trip (a stat is microseconds; for many files). */
export function fileStampSync (file: string): string {
  try {
    const s = statSync(file)
    if (Date.now() - s.mtimeMs < STAMP_SETTLE_MS) return ''
    return `${s.size}:${s.mtimeMs}:${s.ino}`
  } catch {
    return ''
  }
}

function fail (file: string, code: PolicyErrorCode, message: string): { errors: PolicyError[] } {
  return { errors: [{ code, file, line: 1, col: 1, path: '', message }] }
}

/** Read one file as text. Never throws for anything about the file's content. */
export async function readTextFile (file: string, displayName = file): Promise<{ text: string } | { errors: PolicyError[] }> {
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
  return decodeText(buf, displayName)
}

/** Bytes to text: refuses binary (NUL, invalid UTF-8) and empty files. */
export function decodeText (buf: Buffer, file: string): { text: string } | { errors: PolicyError[] } {
  if (buf.includes(0)) return fail(file, ERR.BINARY, 'binary file (contains NUL bytes); expected YAML or JSON text')
  let text: string
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(buf)
  } catch {
    return fail(file, ERR.BINARY, 'binary file (not valid UTF-8); expected YAML or JSON text')
  }
  if (text.trim() === '') return fail(file, ERR.EMPTY, 'empty file; expected at least one policy document')
  return { text }
}

/**
 * Parse YAML text (with `fast`, through the fast path when the text is in its subset). `lineBase` is the number of file lines before `text` (when `text` is one
 * document cut out of a file by `splitDocuments`): reported lines are file lines. With
 * `allowEmpty`, a text without any document is not an error (a piece of a file may be empty).
 */
export function parseYamlString (text: string, file: string, lineBase = 0, allowEmpty = false, fast = false): ParsedFile | { errors: PolicyError[] } {
  if (fast) {
    const docs = fastParseYaml(text, lineBase)
    if (docs !== null && (docs.length > 0 || allowEmpty)) {
      const reporter = new Reporter(file, null)
      return {
        docs: docs.map((d) => ({ value: d.value, reporter: new Reporter(file, null, null, reporter.errors, { root: d.value, itemLines: d.itemLines }) })),
        reporter,
        text,
        fast: true
      }
    }
  }
  const lc = new LineCounter()
  const positions: Positions = lineBase === 0
    ? lc
    : { linePos: (offset: number) => { const p = lc.linePos(offset); return { line: p.line + lineBase, col: p.col } } }
  const reporter = new Reporter(file, positions)
  const docs: ParsedFile['docs'] = []
  let parsed
  try {
    parsed = parseAllDocuments(text, { lineCounter: lc, uniqueKeys: true, prettyErrors: false })
  } catch (err) {
    return { errors: [{ code: ERR.SYNTAX, file, line: lineBase + 1, col: 1, path: '', message: `YAML: ${(err as Error).message}` }] }
  }
  const list = Array.isArray(parsed) ? parsed : []
  for (const doc of list) {
    if (doc.errors.length > 0) {
      for (const e of doc.errors) {
        const pos = positions.linePos(e.pos[0])
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
      const pos = positions.linePos(r[0])
      reporter.addAt(ERR.SYNTAX, pos.line, pos.col, `YAML: ${firstLine((err as Error).message)}`)
      continue
    }
    if (value === null || value === undefined) continue // `---` followed by nothing
    docs.push({ value, reporter: reporter.forDocument(doc) })
  }
  if (reporter.errors.length > 0) return { errors: reporter.errors }
  if (docs.length === 0 && !allowEmpty) return fail(file, ERR.EMPTY, 'no YAML document in the file (only comments or separators)')
  return { docs, reporter, text }
}

/** A line that starts a document (`---` at column 0; YAML 1.2 makes it a marker everywhere). */
const DOC_START = /^---(?=[ \t\r\n]|$)/gm
/** Directives (`%YAML`, `%TAG`) and document-end markers (`...`) span documents, and a lone CR
 * is a line break we do not count: no split. */
const NO_SPLIT = /^(%|\.\.\.(?=[ \t\r\n]|$))|\r(?!\n)/m

/**
 * Cut a YAML stream into pieces of at most one document each, so that an edit of one document
 * re-parses only that piece. Each piece keeps its `---` line; `lineBase` is the number of lines
 * before it. Parsing each piece's `parseText` gives the same documents as parsing the whole text
 * (YAML documents are independent once directives are excluded), with the same line numbers.
 *
 * `parseText` is the piece followed by a `---` line when another document follows: the yaml
 * package judges a document's last lines by what comes after them (`c:` then a tab-only line is
 * a tab-indentation error before `---`, and fine at the end of the input; found by the property
 * test in test/policy-store/source-cache.test.ts). The extra marker adds only an empty document.
 */
export function splitDocuments (text: string): { text: string, parseText: string, lineBase: number }[] {
  if (NO_SPLIT.test(text)) return [{ text, parseText: text, lineBase: 0 }]
  const starts: number[] = []
  DOC_START.lastIndex = 0
  for (let m = DOC_START.exec(text); m !== null; m = DOC_START.exec(text)) if (m.index > 0 && text.charCodeAt(m.index - 1) === 10) starts.push(m.index)
  if (starts.length === 0) return [{ text, parseText: text, lineBase: 0 }]
  const out: { text: string, parseText: string, lineBase: number }[] = []
  let from = 0
  let line = 0
  for (const at of [...starts, text.length]) {
    const piece = text.slice(from, at)
    out.push({ text: piece, parseText: at === text.length ? piece : piece + '---\n', lineBase: line })
    for (let i = piece.indexOf('\n'); i !== -1; i = piece.indexOf('\n', i + 1)) line++
    from = at
  }
  return out
}

function firstLine (s: string): string {
  const i = s.indexOf('\n')
  return i === -1 ? s : s.slice(0, i).replace(/:$/, '')
}
