// The README's quick start is the two commands, and the test command is what CI runs.
import t from 'tap'
import { readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')

t.test('quick start: exactly `bash scripts/demo.sh` and `bash scripts/test.sh`', async (t) => {
  const section = readme.slice(readme.indexOf('## Quick start'), readme.indexOf('\n## ', readme.indexOf('## Quick start') + 1))
  const block = /```sh\n([\s\S]*?)```/.exec(section)
  t.ok(block, 'a sh block in the Quick start section')
  const commands = (block?.[1] ?? '').split('\n').map((l) => l.replace(/#.*$/, '').trim()).filter((l) => l !== '')
  t.same(commands, ['bash scripts/demo.sh', 'bash scripts/test.sh'])
})

t.test('CI runs the README\'s test command', async (t) => {
  const ci = readFileSync(join(ROOT, '.ci', 'run'), 'utf8').split('\n').filter((l) => !l.startsWith('#') && l.trim() !== '')
  t.ok(ci.includes('bash scripts/test.sh'), '.ci/run runs bash scripts/test.sh')
})

t.test('the README stays a first-day document (about 200 lines at most)', async (t) => {
  const lines = readme.split('\n').length
  t.ok(lines <= 210, `${lines} lines`)
})
