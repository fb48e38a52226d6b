// Runs the whole benchmark harness (`npm run bench -- --quick --json`) with tiny durations so it
// cannot rot: checks the results' schema, that every measured scenario got answers, and that the
// lab is gone afterwards. No speed assertions. Needs root (it builds network namespaces and runs
// the agent) and the build in dist/ (scripts/setup.sh runs it); CI is root.
import t from 'tap'
import { spawn, execFileSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { SCENARIOS } from '../../bench/scenarios.js'
import type { BenchResults } from '../../bench/results.js'

const runJs = join(process.cwd(), 'dist', 'bench', 'run.js')

if (process.getuid?.() !== 0) {
  t.comment('skipped: needs root (network namespaces)')
  t.pass('not root')
} else {
  t.test('npm run bench -- --quick --json', { timeout: 240_000 }, async (t) => {
    t.ok(existsSync(runJs), 'dist/bench/run.js is built (npm run build)')
    const out = t.testdir({})
    const child = spawn(process.execPath, [runJs, '--quick', '--json', '--duration', '1', '--warmup', '0.2', '--connections', '8', '--out', out], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s })
    child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s })
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
    t.teardown(async () => {
      // Only when the test gave up on it: the harness cleans up after itself on SIGTERM; if it
      // does not exit within a minute, SIGKILL and --cleanup (its registered PIDs, lab, agent state).
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      const timer = setTimeout(() => { child.kill('SIGKILL') }, 60_000)
      await exited
      clearTimeout(timer)
      if (child.signalCode === 'SIGKILL') execFileSync(process.execPath, [runJs, '--cleanup'], { stdio: 'ignore' })
    })
    const code = await exited
    t.equal(code, 0, `exit code (stderr: ${stderr.slice(-2000)})`)
    const last = stdout.trim().split('\n').pop() ?? ''
    const res = JSON.parse(last) as BenchResults

    t.match(res.commit, /^([0-9a-f]{40}|unknown)$/)
    t.match(res.machine, { cpu: String, cores: Number, kernel: String, node: String, haproxy: /HAProxy/, nginx: /nginx/ })
    t.strictSame(res.scenarios.map((s) => s.name), SCENARIOS.map((s) => s.name), 'every scenario, in order')
    for (const s of res.scenarios) {
      if (s.skipped !== undefined) {
        t.match(s.skipped, /\S/, `${s.name}: skipped says why`)
        t.equal(s.rps, undefined, `${s.name}: skipped has no numbers`)
        continue
      }
      t.equal(s.error, undefined, `${s.name}: answers had the expected status`)
      for (const f of ['rps', 'p50_us', 'p99_us', 'proxy_cpu'] as const) t.type(s[f], 'number', `${s.name}.${f}`)
      t.ok((s.rps ?? 0) > 0, `${s.name}: measured requests`)
      t.ok(s.rounds !== undefined && s.rounds.length > 0 && s.rounds.every((r) => r.requests > 0), `${s.name}: each round had requests`)
      // No userspace proxy on the path: direct, and warden at L4 (the kernel path).
      if (s.name.startsWith('direct') || s.name.startsWith('warden-l4')) t.equal(s.rps_per_core, null, `${s.name}: no proxy on the path`)
      else t.ok(typeof s.rps_per_core === 'number' && s.rps_per_core > 0, `${s.name}: requests per proxy CPU-second`)
    }
    // The peers and the baseline do not depend on the agent: they must always measure.
    for (const name of ['direct', 'haproxy-l7', 'nginx-l7']) {
      t.equal(res.scenarios.find((s) => s.name === name)?.skipped, undefined, `${name} ran`)
    }
    t.strictSame(JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8')), res, 'latest.json is the printed object')
    t.match(readFileSync(join(out, 'latest.md'), 'utf8'), /\| scenario \| req\/s \|/)
    t.match(readFileSync(join(out, 'latest.svg'), 'utf8'), /^<svg /)

    const netns = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    t.notMatch(netns, /wbench-/, 'lab namespaces removed')
    const links = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })
    t.notMatch(links, /: wb-/, 'lab links removed')
  })
}
