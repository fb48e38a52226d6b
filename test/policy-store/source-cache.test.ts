// Per-document parsing and caching: a file cut into documents parses exactly as the whole file
// (values and error lines), an edit of one document re-validates only that one (the others keep
// their rule objects), and unchanged files are not re-parsed -- but a fast rewrite is still seen.
import t from 'tap'
import fc from 'fast-check'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { DirectoryPolicySource, FileEndpointSource } from '../../policy-store/src/index.js'
import { parseYamlString, splitDocuments } from '../../policy-store/src/source-file.js'
import { ENDPOINTS, tempTree } from './helpers.js'

const pol = (name: string, port: number): string => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}}
spec:
  endpointSelector: {matchLabels: {app: billing-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: checkout-service}}]
    toPorts: [{ports: [{port: "${port}", protocol: TCP}]}]
`

/** What DirectoryPolicySource does: parse the pieces; on any YAML error, the whole text. */
function parseWhole (text: string): unknown {
  const r = parseYamlString(text, 'f.yaml', 0, true)
  return 'errors' in r ? { errors: r.errors.map((e) => [e.line, e.col, e.message]) } : r.docs.map((d) => d.value)
}
function parsePieces (text: string): unknown {
  const values: unknown[] = []
  for (const p of splitDocuments(text)) {
    const r = parseYamlString(p.parseText, 'f.yaml', p.lineBase, true)
    if ('errors' in r) return parseWhole(text)
    values.push(...r.docs.map((d) => d.value))
  }
  return values
}

t.test('pieces parse like the whole stream (values and error positions)', async (t) => {
  const line = fc.constantFrom('---', '--- ', '--- {a: 1}', '---x: 1', '# c', '', 'a: 1', 'b: [1, 2]', '  - x', 'c:', '  d: "q', 'e: |',
    '  text ---', '...', '%YAML 1.2', 'f: \'s\'', '- 1', '  - y: 2', '\t', 'g: {h: 1', 'a: 2', 'k: &x 1', 'l: *x', 'a: b\r', '  y"', 'm: >-', '   z\'',
    'n: "a', 'o: \'b', ' ---', '- |', '  }', 'p: [', ']')
  fc.assert(fc.property(fc.array(line, { maxLength: 14 }), fc.boolean(), (lines, crlf) => {
    const text = lines.join(crlf ? '\r\n' : '\n') + '\n'
    t.same(parsePieces(text), parseWhole(text), JSON.stringify(text))
  }), { numRuns: 1000 })
  t.same(splitDocuments('a: 1\n---\nb: 2\n--- \nc: 3\n').map((p) => p.lineBase), [0, 1, 3])
  // The case the property found: a tab-only line ends the first document.
  for (const eol of ['\n', '\r\n']) {
    const text = ['c:', '\t', '--- {a: 1}'].join(eol) + '\n'
    t.same(parsePieces(text), parseWhole(text), JSON.stringify(text))
    t.match(parseWhole(text), { errors: [[2, 1, /Tabs are not allowed as indentation/]] })
  }
  t.same(splitDocuments('%YAML 1.2\n---\na: 1\n---\nb: 2\n').length, 1, 'directives: not split')
})

t.test('one edited document: only it is re-validated; lines stay file lines', async (t) => {
  const docs = (ports: number[]): string => ports.map((p, i) => pol(`p${i}`, p)).join('---\n')
  const dir = tempTree(t, { 'p/a.yaml': docs([80, 81, 82]) })
  const src = new DirectoryPolicySource(join(dir, 'p'))
  const [r1] = (await src.load()).resources
  t.equal(r1.policies?.rules.length, 3)
  writeFileSync(join(dir, 'p/a.yaml'), docs([80, 91, 82]))
  const [r2] = (await src.load()).resources
  const before = r1.policies?.rules ?? []
  const after = r2.policies?.rules ?? []
  t.equal(after[0], before[0], 'first document: same rule object')
  t.not(after[1], before[1], 'edited document: new rule')
  t.equal(after[2], before[2], 'last document: same rule object')
  t.same(after.map((r) => r.elements[0].ref.line), [7, 16, 25], 'rule lines are file lines')

  // A bad document in the middle: its error at its file line; the file is rejected whole.
  writeFileSync(join(dir, 'p/a.yaml'), docs([80, 99999, 82]))
  const [r3] = (await src.load()).resources
  t.equal(r3.policies, null)
  t.match(r3.errors, [{ code: 'WARDEN_ERR_POLICY_PORT', line: 17 }])
  // A YAML syntax error in one document: syntax errors alone, at the file line.
  writeFileSync(join(dir, 'p/a.yaml'), docs([80, 81, 82]).replace('metadata: {name: p2}', 'metadata: {name: p2'))
  const [r4] = (await src.load()).resources
  t.match(r4.errors, [{ code: 'WARDEN_ERR_POLICY_SYNTAX' }])
  t.ok(r4.errors.every((e) => e.line >= 21), 'error located in the third document')
  // Fixed: the documents that stayed the same keep their rules.
  writeFileSync(join(dir, 'p/a.yaml'), docs([80, 81, 82]))
  const [r5] = (await src.load()).resources
  t.equal(r5.policies?.rules[0], before[0])
  t.same(r5.policies?.rules.map((r) => r.elements[0].ports?.[0].port), [80, 81, 82])
  // Only comments left (one of the cached pieces): an empty file, as before.
  writeFileSync(join(dir, 'p/a.yaml'), '# nothing\n')
  const [r6] = (await src.load()).resources
  t.match(r6.errors, [{ code: 'WARDEN_ERR_POLICY_EMPTY' }])
})

t.test('unchanged files are not re-parsed; a same-size rewrite within the clock tick is seen', async (t) => {
  const dir = tempTree(t, { 'p/a.yaml': pol('a', 80), 'e.yaml': ENDPOINTS })
  const src = new DirectoryPolicySource(join(dir, 'p'))
  const eps = new FileEndpointSource(join(dir, 'e.yaml'))
  const [a1] = (await src.load()).resources
  const e1 = await eps.load()
  const [a2] = (await src.load()).resources
  const e2 = await eps.load()
  t.equal(a2, a1, 'policy file: same resource object')
  t.equal(e2, e1, 'endpoints file: same result object')
  // Same size, written right away: the stamp may not change, the content does.
  writeFileSync(join(dir, 'p/a.yaml'), pol('a', 81))
  writeFileSync(join(dir, 'e.yaml'), ENDPOINTS.replace('10.42.0.10', '10.42.0.20'))
  const [a3] = (await src.load()).resources
  const e3 = await eps.load()
  t.equal(a3.policies?.rules[0].elements[0].ports?.[0].port, 81)
  t.equal(e3.endpoints?.[0].ipv4, '10.42.0.20')
})
