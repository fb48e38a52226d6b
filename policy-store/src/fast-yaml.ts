/**
 * A fast path for the YAML that policy and endpoints files are made of: block mappings and
 * sequences, one-line flow collections, plain and quoted one-line scalars, comments. It is much
 * cheaper than the `yaml` package (which builds a full CST and AST), and returns null for
 * ANYTHING outside that subset (anchors, tags, block scalars, multi-line scalars or flow
 * collections, tabs, floats, duplicate keys, odd indentation ...): the caller then parses with
 * the `yaml` package, which stays the reference. When it returns documents, they equal what the
 * `yaml` package gives (checked by a property test, test/policy-store/fast-yaml.test.ts).
 *
 * Positions: only the line of each sequence item is kept (rule references need it). Error
 * locations come from the `yaml` package: a document that fails validation is parsed again.
 */

export interface FastDocument {
  value: unknown
  /** Per sequence: the 1-based file line where each item's value starts. */
  itemLines: WeakMap<readonly unknown[], number[]>
}

class Bail extends Error {}
const bail = (): never => { throw new Bail() }

interface Line { indent: number, text: string, no: number }

/** Plain scalars that are not strings in the YAML 1.2 core schema (besides simple integers). */
const NON_STRING = /^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)|[-+]?0[xo][0-9a-fA-F]*)$/
const SIMPLE_INT = /^(?:0|[1-9][0-9]{0,14})$/
/** Characters a plain scalar may not start with (flow/structure indicators), and `-?:` + space. */
const BAD_START = /^(?:[[\]{},#&*!|>'"%@`]|[-?:](?:[ ]|$))/

function resolvePlain (s: string): unknown {
  if (s === '' || s === '~' || s === 'null' || s === 'Null' || s === 'NULL') return null
  if (s === 'true' || s === 'True' || s === 'TRUE') return true
  if (s === 'false' || s === 'False' || s === 'FALSE') return false
  if (SIMPLE_INT.test(s)) return Number(s)
  if (NON_STRING.test(s)) bail()
  return s
}

/**
 * Parse `text` (a YAML stream or a piece of one starting at file line `lineBase` + 1). Returns
 * the non-empty documents, or null when the text is outside the fast subset.
 */
export function fastParseYaml (text: string, lineBase = 0): FastDocument[] | null {
  if (/[\t\r\u0085\u2028\u2029\ufeff]/.test(text.replace(/\r\n/g, '\n'))) return null
  try {
    return new FastParser(text, lineBase).documents()
  } catch (err) {
    if (err instanceof Bail) return null
    throw err
  }
}

class FastParser {
  private readonly lines: Line[] = []
  private pos = 0
  private readonly itemLines = new WeakMap<readonly unknown[], number[]>()

  constructor (text: string, lineBase: number) {
    const raw = text.split('\n')
    raw.forEach((l, i) => {
      if (l.endsWith('\r')) l = l.slice(0, -1)
      const t = l.trimStart()
      if (t === '' || t.startsWith('#')) return // blank or comment line
      this.lines.push({ indent: l.length - t.length, text: t, no: lineBase + i + 1 })
    })
  }

  documents (): FastDocument[] {
    const docs: FastDocument[] = []
    while (this.pos < this.lines.length) {
      const l = this.lines[this.pos]
      if (isMarker(l)) {
        if (stripComment(l.text.slice(3)) !== '') bail() // content on the marker line
        this.pos++
        continue
      }
      if (l.indent !== 0 || l.text.startsWith('...') || l.text.startsWith('%')) bail()
      const value = this.block(0)
      // The document ends at a marker or at the end of the text; anything else is not ours.
      if (this.pos < this.lines.length && !isMarker(this.lines[this.pos])) bail()
      docs.push({ value, itemLines: this.itemLines })
    }
    return docs
  }

  /** A block node whose first line is the current line, at exactly `indent`. */
  private block (indent: number): unknown {
    const l = this.lines[this.pos]
    if (l.indent !== indent) bail()
    if (l.text === '-' || l.text.startsWith('- ')) return this.sequence(indent)
    if (l.text.startsWith('{') || l.text.startsWith('[')) {
      // A one-line flow collection as a whole node.
      const v = this.flowLine(l)
      this.pos++
      return v
    }
    return this.mapping(indent, l.text, l)
  }

  private sequence (indent: number): unknown[] {
    const out: unknown[] = []
    const lines: number[] = []
    this.itemLines.set(out, lines)
    while (this.pos < this.lines.length) {
      const l = this.lines[this.pos]
      if (l.indent < indent) break
      if (l.indent > indent) bail()
      if (!(l.text === '-' || l.text.startsWith('- '))) break
      const rest = l.text.slice(1)
      const trimmed = rest.trimStart()
      const col = indent + 1 + (rest.length - trimmed.length)
      if (stripComment(trimmed) === '') {
        // `-` alone: the item is the block below, more indented.
        this.pos++
        const n = this.lines[this.pos]
        if (n === undefined || n.indent <= indent) bail() // a null item
        lines.push(n.no)
        out.push(this.block(n.indent))
        continue
      }
      lines.push(l.no)
      if (trimmed.startsWith('- ') || trimmed === '-') bail() // `- - x`
      if (trimmed.startsWith('{') || trimmed.startsWith('[') || trimmed.startsWith('"') || trimmed.startsWith("'") || findMapColon(trimmed) === -1) {
        out.push(this.inlineValue(trimmed, l))
        this.pos++
        this.noContinuation(indent)
        continue
      }
      // `- key: value`: a mapping whose indentation is the key's column.
      out.push(this.mapping(col, trimmed, l))
    }
    return out
  }

  /** A block mapping at `indent`; its first key is in `firstText` (on the current line). */
  private mapping (indent: number, firstText: string, firstLine: Line): Record<string, unknown> {
    const out: Record<string, unknown> = {}
    let text = firstText
    let line = firstLine
    for (;;) {
      const { key, rest } = this.key(text)
      if (Object.prototype.hasOwnProperty.call(out, key)) bail() // duplicate key: the yaml package reports it
      const value = stripComment(rest.trimStart())
      this.pos++
      if (value === '') {
        const n = this.lines[this.pos]
        if (n !== undefined && n.indent > indent) out[key] = this.block(n.indent)
        else if (n !== undefined && n.indent === indent && (n.text === '-' || n.text.startsWith('- '))) out[key] = this.sequence(indent)
        else out[key] = null
      } else {
        out[key] = this.inlineValue(rest.trimStart(), line)
        this.noContinuation(indent)
      }
      const n = this.lines[this.pos]
      if (n === undefined || n.indent < indent) break
      if (n.indent > indent) bail()
      if (n.text === '-' || n.text.startsWith('- ')) break // the parent sequence's next item
      if (n.indent === 0 && (n.text.startsWith('---') || n.text.startsWith('...'))) break // the caller decides
      text = n.text
      line = n
    }
    return out
  }

  /** The next line must not continue the current value (a multi-line scalar, or an error). */
  private noContinuation (indent: number): void {
    const n = this.lines[this.pos]
    if (n !== undefined && n.indent > indent) bail()
  }

  /** `key: rest` at the start of `text`. */
  private key (text: string): { key: string, rest: string } {
    let key: string
    let i: number
    if (text.startsWith('"') || text.startsWith("'")) {
      const q = readQuoted(text, 0)
      key = q.value
      i = q.end
      if (text[i] !== ':') bail()
    } else {
      i = findMapColon(text)
      if (i === -1) bail()
      const raw = text.slice(0, i).trimEnd()
      if (raw === '' || BAD_START.test(raw) || raw.includes(' #')) bail()
      const v = resolvePlain(raw)
      if (typeof v !== 'string') bail()
      key = v as string
    }
    if (key === '__proto__' || key === '<<') bail()
    const rest = text.slice(i + 1)
    if (rest !== '' && rest[0] !== ' ') bail()
    return { key, rest }
  }

  /** A value on the rest of a line: flow collection, quoted or plain scalar. */
  private inlineValue (text: string, line: Line): unknown {
    if (text.startsWith('{') || text.startsWith('[')) return this.flowLine({ ...line, text })
    if (text.startsWith('"') || text.startsWith("'")) {
      const q = readQuoted(text, 0)
      if (stripComment(text.slice(q.end)) !== '') bail()
      return q.value
    }
    const s = stripComment(text)
    if (BAD_START.test(s) || findMapColon(s) !== -1) bail()
    return resolvePlain(s)
  }

  /** A flow collection that must end on its line (then only a comment may follow). */
  private flowLine (line: Line): unknown {
    const f = new FlowReader(line.text, line.no, this.itemLines)
    const v = f.value()
    f.spaces()
    if (stripComment(line.text.slice(f.i)) !== '') bail()
    return v
  }
}

/** `---` alone or followed by a comment, at column 0. */
function isMarker (l: Line): boolean {
  return l.indent === 0 && (l.text === '---' || l.text.startsWith('--- '))
}

/** Index of the `:` that ends a block mapping key (followed by a space or the end), or -1. */
function findMapColon (text: string): number {
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (c === '#' && (i === 0 || text[i - 1] === ' ')) return -1
    if (c === ':' && (i + 1 === text.length || text[i + 1] === ' ')) return i
  }
  return -1
}

/** Text without a trailing ` # comment`, trimmed (plain scalars and after values). */
function stripComment (text: string): string {
  if (text.startsWith('#')) return ''
  const i = text.indexOf(' #')
  return (i === -1 ? text : text.slice(0, i)).trim()
}

function readQuoted (text: string, at: number): { value: string, end: number } {
  const q = text[at]
  let out = ''
  let i = at + 1
  for (;;) {
    if (i >= text.length) bail() // multi-line quoted scalar
    const c = text[i]
    if (q === "'") {
      if (c === "'") {
        if (text[i + 1] === "'") { out += "'"; i += 2; continue }
        return { value: out, end: i + 1 }
      }
      out += c
      i++
    } else {
      if (c === '"') return { value: out, end: i + 1 }
      if (c === '\\') {
        const e = text[i + 1]
        if (e === '\\' || e === '"' || e === '/') out += e
        else if (e === 'n') out += '\n'
        else if (e === 't') out += '\t'
        else bail()
        i += 2
        continue
      }
      out += c
      i++
    }
  }
}

class FlowReader {
  i = 0
  constructor (private readonly s: string, private readonly line: number, private readonly itemLines: WeakMap<readonly unknown[], number[]>) {}

  spaces (): void { while (this.s[this.i] === ' ') this.i++ }

  value (): unknown {
    this.spaces()
    const c = this.s[this.i]
    if (c === '{') return this.map()
    if (c === '[') return this.seq()
    if (c === '"' || c === "'") {
      const q = readQuoted(this.s, this.i)
      this.i = q.end
      return q.value
    }
    return resolvePlain(this.plain())
  }

  /** A plain scalar in flow context: up to `,` `]` `}` or `: ` / `:` before an indicator. */
  private plain (): string {
    const start = this.i
    for (; this.i < this.s.length; this.i++) {
      const c = this.s[this.i]
      if (c === ',' || c === ']' || c === '}') break
      if (c === '[' || c === '{') bail()
      if (c === ':' && (this.i + 1 === this.s.length || ' ,]}'.includes(this.s[this.i + 1]))) break
      if (c === '#' && this.s[this.i - 1] === ' ') bail()
    }
    const raw = this.s.slice(start, this.i).trimEnd()
    if (raw === '' || BAD_START.test(raw)) bail()
    return raw
  }

  private map (): Record<string, unknown> {
    const out: Record<string, unknown> = {}
    this.i++
    this.spaces()
    if (this.s[this.i] === '}') { this.i++; return out }
    for (;;) {
      this.spaces()
      let key: string
      if (this.s[this.i] === '"' || this.s[this.i] === "'") {
        const q = readQuoted(this.s, this.i)
        key = q.value
        this.i = q.end
      } else {
        const v = resolvePlain(this.plain())
        if (typeof v !== 'string') bail()
        key = v as string
      }
      if (this.s[this.i] !== ':' || this.s[this.i + 1] !== ' ') bail() // `{a}` or `{a:b}` or `{a:}`
      if (key === '__proto__' || key === '<<' || Object.prototype.hasOwnProperty.call(out, key)) bail()
      this.i++
      out[key] = this.value()
      this.spaces()
      const c = this.s[this.i]
      if (c === '}') { this.i++; return out }
      if (c !== ',') bail()
      this.i++
      this.spaces()
      if (this.s[this.i] === '}') bail() // trailing comma
    }
  }

  private seq (): unknown[] {
    const out: unknown[] = []
    const lines: number[] = []
    this.itemLines.set(out, lines)
    this.i++
    this.spaces()
    if (this.s[this.i] === ']') { this.i++; return out }
    for (;;) {
      this.spaces()
      const v = this.value()
      this.spaces()
      if (this.s[this.i] === ':') bail() // `[a: b]`: a single-pair mapping
      out.push(v)
      lines.push(this.line)
      const c = this.s[this.i]
      if (c === ']') { this.i++; return out }
      if (c !== ',') bail()
      this.i++
      this.spaces()
      if (this.s[this.i] === ']') bail() // trailing comma
    }
  }
}
