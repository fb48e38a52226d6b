// The fast YAML path either declines (null) or gives exactly what the `yaml` package gives:
// same values, and each sequence item's line equal to where the package's item node starts.
import t, { type Test } from 'tap'
import fc from 'fast-check'
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { isMap, isPair, isScalar, isSeq, LineCounter, parseAllDocuments, stringify, type Node as YamlNode } from 'yaml'
import { fastParseYaml } from '../../policy-store/src/fast-yaml.js'

/** The yaml package's reading (as source-file.ts calls it), or 'error'. */
function reference (text: string): { values: unknown[], lines: Map<string, number> } | 'error' {
  const lc = new LineCounter()
  let docs
  try {
    docs = parseAllDocuments(text, { lineCounter: lc, uniqueKeys: true, prettyErrors: false })
  } catch {
    return 'error'
  }
  if (!Array.isArray(docs)) return 'error'
  const values: unknown[] = []
  const lines = new Map<string, number>()
  for (const d of docs) {
    if (d.errors.length > 0) return 'error'
    if (d.contents === null) continue
    const v: unknown = d.toJS({ maxAliasCount: 100 })
    if (v === null || v === undefined) continue
    const walk = (n: unknown, path: string): void => {
      if (isSeq(n)) {
        n.items.forEach((it, i) => {
          const r = (it as YamlNode | null)?.range
          if (r !== undefined && r !== null) lines.set(`${values.length}${path}/${i}`, lc.linePos(r[0]).line)
          walk(it, `${path}/${i}`)
        })
      } else if (isMap(n)) {
        for (const p of n.items) if (isPair(p) && isScalar(p.key)) walk(p.value, `${path}/${String(p.key.value)}`)
      }
    }
    walk(d.contents, '')
    values.push(v)
  }
  return { values, lines }
}



function check (t: Test, text: string): boolean {
  const fast = fastParseYaml(text)
  if (fast === null) return false
  const ref = reference(text)
  t.not(ref, 'error', `fast path accepted what yaml rejects: ${JSON.stringify(text)}`)
  if (ref === 'error') return true
  t.same(fast.map((d) => d.value), ref.values, JSON.stringify(text))
  const lines = new Map<string, number>()
  fast.forEach((d, di) => {
    const walk = (v: unknown, path: string): void => {
      if (Array.isArray(v)) {
        const ls = d.itemLines.get(v) ?? []
        v.forEach((x, i) => { lines.set(`${di}${path}/${i}`, ls[i]); walk(x, `${path}/${i}`) })
      } else if (v !== null && typeof v === 'object') {
        for (const [k, x] of Object.entries(v)) walk(x, `${path}/${k}`)
      }
    }
    walk(d.value, '')
  })
  t.same(lines, ref.lines, `item lines: ${JSON.stringify(text)}`)
  return true
}

t.test('chosen cases: declined, or equal to the yaml package', async (t) => {
  const declined = ['a: 1\na: 2\n', 'a: {b: 1, b: 2}\n', 'a: &x 1\nb: *x\n', 'a: |\n  x\n', 'a: "x\n  y"\n', 'a: x\n  y\n', 'a: 1.5\n',
    'a: 0x10\n', 'a:\tb\n', '%YAML 1.2\n---\na: 1\n', 'a: 1\n...\n', '--- {a: 1}\n', 'a: [1,\n  2]\n', '0: a\n', '? a\n: b\n', 'a: !t b\n']
  for (const text of declined) t.equal(fastParseYaml(text), null, JSON.stringify(text))
  const taken = ['a: True\nb: TRUE\nc: False\nd: Null\ne: NULL\nf: ~\ng:\n', '- a:\n  - x\n  - y\n  b: 1\n- c\n', '-\n  a: 1\n-\n  - 2\n',
    'a:\n- {b: [1, 2]}\n- "c"\n', 'spec:\n  ingress:\n    - fromEndpoints:\n        - matchLabels: {app: x}\n', 'a: 1\r\nb: [x]\r\n',
    '# c\n---\na: 1 # c\n--- # d\nb: \'x # y\'\n', 'a: "x\\"y\\\\z\\n"\n']
  for (const text of taken) t.ok(check(t, text), `taken: ${JSON.stringify(text)}`)
})

t.test('random YAML-ish lines: fast path declines or agrees', async (t) => {
  let accepted = 0
  const frag = fc.constantFrom('a:', 'b: 1', 'c: x', 'd: "q"', "e: 'it''s'", 'f: [1, x, "y"]', 'g: {h: 1, i: j}', '- k', '- l: 2', '-', '- [a]',
    '- {m: n}', 'a: dup', 'n: null', 'o: ~', 'p: true', 'q: 1.5', 'r: 0x1F', 's: -1', 't: 007', 'u: 10.42.0.1', 'v: a: b', 'w: a #c', '# c',
    'x: "a\\nb"', 'y: "\\u0041"', '---', '--- # doc', '...', 'z: |', 'aa: &x 1', 'bb: *x', 'cc: !t 1', '? k', 'dd: [a, ]', 'ee: {f}',
    'ff: {g: }', 'gg: [a: b]', 'hh: http://x/y', 'ii: a:b', 'jj: - x', '"kk": 1', 'll: "unterminated', 'mm: [a,', '0: zero', 'true: t',
    '__proto__: 1', '<<: {a: 1}', 'p: True', 'p: FALSE', 'n: Null', 'n: NULL', 'a: 2', 'nn: [{a: 1}, {b: [2, 3]}]', 'oo: "/api/v1/.*"', 'pp: -x', 'qq: ?x', 'rr: :x', 'ss: a,b', 'tt: [a b, c]',
    '')
  const line = fc.tuple(fc.integer({ min: 0, max: 6 }), frag).map(([n, f]) => ' '.repeat(n) + f)
  fc.assert(fc.property(fc.array(line, { maxLength: 10 }), fc.boolean(), (lines, crlf) => {
    if (check(t, lines.join(crlf ? '\r\n' : '\n') + '\n')) accepted++
  }), { numRuns: 3000 })
  t.ok(accepted > 200, `fast path took ${accepted} texts`)
})

t.test('stringified values: fast path agrees (and takes block and flow styles)', async (t) => {
  const key = fc.oneof(fc.constantFrom('a', 'b', 'k8s:app', 'io.kubernetes.pod.namespace', 'x y', '80', 'true', '-', 'a:b', '#'), fc.string({ maxLength: 5 }))
  const scalar = fc.oneof(fc.string({ maxLength: 8 }), fc.integer({ min: -5, max: 70000 }), fc.boolean(), fc.constant(null),
    fc.constantFrom('GET', '/api/v1/.*', '10.0.0.0/8', 'svc-1', '', ' x ', "it's", 'a "q"', '*.example.com', '1.5', 'null', 'yes'))
  const value = fc.letrec((tie) => ({
    node: fc.oneof({ depthSize: 'small', withCrossShrink: true }, scalar, tie('arr'), tie('obj')),
    arr: fc.array(tie('node'), { maxLength: 4 }),
    obj: fc.dictionary(key, tie('node'), { maxKeys: 4 })
  })).obj
  let accepted = 0
  fc.assert(fc.property(fc.array(value, { minLength: 1, maxLength: 3 }), fc.integer({ min: 0, max: 3 }), fc.integer({ min: 2, max: 4 }), (docs, style, indent) => {
    const opts = { indent, collectionStyle: style === 1 ? 'flow' as const : 'any' as const, indentSeq: style !== 2, lineWidth: 0 }
    const text = docs.map((d) => stringify(d, opts)).join('---\n')
    if (check(t, text)) accepted++
  }), { numRuns: 1500 })
  t.ok(accepted > 500, `fast path took ${accepted} texts`)
})

t.test('the repository\'s policy and endpoints files take the fast path, with the same result', async (t) => {
  const dirs = ['test/fixtures/policies/seed', 'test/fixtures/policies/endpoints']
  let n = 0
  for (const dir of dirs) {
    const names: string[] = readdirSync(dir)
    for (const f of names.filter((x) => /\.ya?ml$/.test(x))) {
      const text = readFileSync(join(dir, f), 'utf8')
      t.ok(check(t, text), `${dir}/${f} takes the fast path`)
      n++
    }
  }
  t.ok(n >= 3, `${n} files`)
})
