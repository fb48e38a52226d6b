import t from 'tap'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'

// The agent warns once at start when a hot-path shortcut through Node internals is missing
// (another Node major), naming it; on the Node the suite runs on, none is missing.
const child = fileURLToPath(new URL('../fixtures/fast-paths-child.ts', import.meta.url))
const tsLoader = process.execArgv.filter(a => a.includes('typescript') || a === '--enable-source-maps' || a.startsWith('--import') || a.startsWith('--loader'))

interface Out { fallbacks: Record<string, string>, lines: Array<{ msg: string, fallbacks: Record<string, string> }> }

async function run (hide: string): Promise<Out> {
  const out = await new Promise<string>((resolve, reject) => {
    execFile(process.execPath, [...tsLoader, child, hide], { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`${err.message}\n${stderr}`)); else resolve(stdout)
    })
  })
  return JSON.parse(out.trim().split('\n').pop() ?? '{}') as Out
}

t.test('on this Node every fast path is there: no warning', async (t) => {
  const out = await run('')
  t.strictSame(out.fallbacks, {})
  t.strictSame(out.lines, [])
})

t.test('stream_wrap without WriteWrap: one warning naming socket-writes', async (t) => {
  const out = await run('stream_wrap')
  t.strictSame(Object.keys(out.fallbacks), ['socket-writes'])
  t.equal(out.lines.length, 1)
  t.match(out.lines[0].msg, /socket-writes/)
})

t.test('pino without its internal symbols: log lines fall back, both named in one line', async (t) => {
  const out = await run('stream_wrap,pino')
  t.strictSame(Object.keys(out.fallbacks).sort(), ['log-lines', 'socket-writes'])
  t.equal(out.lines.length, 1)
  t.match(out.lines[0].msg, /socket-writes, log-lines|log-lines, socket-writes/)
  t.match(out.fallbacks['log-lines'], /chindingsSym/)
})
