// Every relative link in README.md and docs/**/*.md points at a file of the repository, and
// every #anchor at a heading of the file it names (GitHub's heading ids). External links
// (http:, https:, mailto:) are not fetched.
import t from 'tap'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')

function markdownFiles (): string[] {
  const out = [join(ROOT, 'README.md')]
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name)
      if (e.isDirectory()) walk(p)
      else if (e.name.endsWith('.md')) out.push(p)
    }
  }
  walk(join(ROOT, 'docs'))
  return out
}

/** The text outside fenced code blocks and inline code spans: links there are not links. */
export function proseOf (md: string): string {
  let inFence = false
  const lines: string[] = []
  for (const line of md.split('\n')) {
    if (/^\s*(```|~~~)/.test(line)) { inFence = !inFence; lines.push(''); continue }
    lines.push(inFence ? '' : line.replace(/`[^`]*`/g, '``'))
  }
  return lines.join('\n')
}

/** Targets of `[text](target)` and `![alt](target)` links (an optional title dropped). */
export function linkTargets (md: string): string[] {
  const out: string[] = []
  for (const m of proseOf(md).matchAll(/!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) out.push(m[1])
  return out
}

/** GitHub's id for a heading: lower-case, punctuation dropped, spaces to hyphens, -1, -2 for repeats. */
export function headingIds (md: string): Set<string> {
  const ids = new Set<string>()
  const seen = new Map<string, number>()
  let inFence = false
  for (const line of md.split('\n')) {
    if (/^\s*(```|~~~)/.test(line)) { inFence = !inFence; continue }
    const m = inFence ? null : /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line)
    if (m === null) continue
    const base = m[1].toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-')
    const n = seen.get(base) ?? 0
    seen.set(base, n + 1)
    ids.add(n === 0 ? base : `${base}-${n}`)
  }
  return ids
}

t.test('the parsers see what GitHub sees', async (t) => {
  t.same(linkTargets('a [x](docs/a.md#b) `[y](no.md)` ![i](p.svg "t")\n```\n[z](no.md)\n```\n'), ['docs/a.md#b', 'p.svg'])
  t.same([...headingIds('# Explaining a verdict: `warden trace`\n## Kernel requirements\n## Kernel requirements\n')],
    ['explaining-a-verdict-warden-trace', 'kernel-requirements', 'kernel-requirements-1'])
})

const files = markdownFiles()
t.ok(files.length > 5, 'README.md and docs/ are there')

for (const file of files) {
  const name = relative(ROOT, file)
  t.test(`${name}: every relative link resolves`, async (t) => {
    const md = readFileSync(file, 'utf8')
    for (const target of linkTargets(md)) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue // http:, https:, mailto:
      const [path, anchor] = target.split('#', 2) as [string, string | undefined]
      const dest = path === '' ? file : resolve(dirname(file), decodeURI(path))
      if (!dest.startsWith(ROOT + '/') && dest !== ROOT) { t.fail(`${target}: outside the repository`); continue }
      if (!existsSync(dest)) { t.fail(`${target}: ${relative(ROOT, dest)} does not exist`); continue }
      if (anchor === undefined || anchor === '') { t.pass(target); continue }
      if (!dest.endsWith('.md') || statSync(dest).isDirectory()) { t.fail(`${target}: an anchor into a file that is not Markdown`); continue }
      t.ok(headingIds(readFileSync(dest, 'utf8')).has(anchor), `${target}: #${anchor} is a heading of ${relative(ROOT, dest)}`)
    }
  })
}
