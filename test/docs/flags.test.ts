// docs/configuration.md documents exactly the flags `warden run --help` prints, and the flags the
// help prints are the ones the command parses. The help text and the parser's option table are
// imported from the command's module (cli/run.ts), so no process is spawned.
import t from 'tap'
import { readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { command } from '../../cli/run.js'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
const DOC = join(ROOT, 'docs', 'configuration.md')

/** `--flag` -> what the help says its default is ('' when it names none), from the Options list. */
export function helpFlags (usage: string): Map<string, string> {
  const out = new Map<string, string>()
  for (const line of usage.split('\n')) {
    const m = /^\s{2}(--[a-z0-9-]+)\b(.*)$/.exec(line)
    if (m === null) continue
    const d = /\(default:? ([^;)]+)/.exec(m[2])
    out.set(m[1], d === null ? '' : d[1].trim())
  }
  return out
}

/** `--flag` -> its default cell, from the first column of the flag table under "## `warden run` flags". */
export function documentedFlags (md: string): Map<string, string> {
  const start = md.indexOf('## `warden run` flags')
  if (start < 0) throw new Error('docs/configuration.md has no "## `warden run` flags" section')
  const end = md.indexOf('\n## ', start + 1)
  const out = new Map<string, string>()
  for (const line of md.slice(start, end < 0 ? undefined : end).split('\n')) {
    const m = /^\|\s*`(--[a-z0-9-]+)[^`]*`\s*\|([^|]*)\|/.exec(line)
    if (m !== null) out.set(m[1], m[2].trim())
  }
  return out
}

t.test('the parsers read what they should', async (t) => {
  t.same([...helpFlags('Options:\n  --a-b N   x (default 7)\n  --c       y\ntext --d\n')], [['--a-b', '7'], ['--c', '']])
  t.same([...documentedFlags('## `warden run` flags\n| flag | default |\n|---|---|\n| `--x N` | `5` |\n## next\n| `--y` | 1 |\n')], [['--x', '`5`']])
})

const help = helpFlags(command.usage)
const parsed = new Set(Object.keys(command.options).map((k) => '--' + k))
const doc = documentedFlags(readFileSync(DOC, 'utf8'))

t.ok(help.size >= 10, `the help lists the flags (${help.size})`)

t.test('the help lists every flag the command parses, and only those', async (t) => {
  for (const f of parsed) t.ok(help.has(f), `${f} is in \`warden run --help\``)
  for (const f of help.keys()) t.ok(parsed.has(f), `${f} (in the help) is an option of cli/run.ts`)
})

t.test('docs/configuration.md documents every flag of the help', async (t) => {
  for (const f of help.keys()) t.ok(doc.has(f), `${f} is documented`)
})

t.test('every flag docs/configuration.md documents exists', async (t) => {
  for (const f of doc.keys()) t.ok(help.has(f), `${f} (documented) is in \`warden run --help\``)
})

t.test('where the help names a default, the document gives the same one', async (t) => {
  for (const [f, d] of help) {
    if (d === '' || !doc.has(f)) continue
    t.ok((doc.get(f) as string).includes(d), `${f}: help says "${d}", the document "${doc.get(f) as string}"`)
  }
})
