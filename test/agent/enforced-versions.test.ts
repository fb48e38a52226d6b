// Which policy version each HTTP proxy worker enforces (agent/workers/enforced-versions.ts), with
// a fake clock: a worker that keeps up with a stream of edits is never stale, one that is stuck is
// reported once the grace period has passed (and however often the policy changes), one that is
// down is down; and what `warden status` makes of it (report, exit code, text). No root needed.
import t from 'tap'
import { EnforcedVersions, POLICY_LAG_GRACE_MS } from '../../agent/workers/enforced-versions.js'
import { statusReport, type ReportSources } from '../../agent/api/reports.js'
import { EventRing } from '../../agent/observe/ring.js'
import { renderStatus } from '../../cli/status.js'
import type { Snapshot } from '../../policy-store/src/index.js'

const GRACE = POLICY_LAG_GRACE_MS

function clock (): { now: () => number, advance: (ms: number) => void } {
  let ms = 1_000_000
  return { now: () => ms, advance: (d) => { ms += d } }
}

/** Workers 0..n-1 running at `version`. */
function running (n: number, version: number, c = clock()): { v: EnforcedVersions, c: ReturnType<typeof clock> } {
  const v = new EnforcedVersions(n, c.now)
  v.compiled(version)
  for (let w = 0; w < n; w++) v.enforced(w, version)
  return { v, c }
}

const lagging = (v: EnforcedVersions): number[] => v.report().filter((p) => p.lagging).map((p) => p.worker)

t.test('a worker that keeps up is never stale, however often the policy changes', async (t) => {
  const { v, c } = running(3, 1)
  // an edit every second for a minute; each worker applies it 300 ms later
  for (let version = 2; version <= 60; version++) {
    v.compiled(version)
    c.advance(300)
    t.strictSame(v.report().map((p) => p.behindSeconds), [0, 0, 0], `version ${version}: just compiled, nobody behind by a second`)
    for (let w = 0; w < 3; w++) v.enforced(w, version)
    c.advance(700)
  }
  t.strictSame(lagging(v), [], 'no worker lagging')
  t.strictSame(v.report().map((p) => p.policyVersion), [60, 60, 60])
})

t.test('a stuck worker is reported after the grace period, while the policy keeps changing', async (t) => {
  const { v, c } = running(3, 1)
  let version = 1
  const edit = (): void => { version++; v.compiled(version); v.enforced(0, version); v.enforced(1, version) } // worker 2 never applies
  edit()
  c.advance(GRACE)
  t.strictSame(lagging(v), [], 'exactly the grace period: not yet')
  t.equal(v.report()[2].behindSeconds, GRACE / 1000)
  c.advance(1)
  t.strictSame(lagging(v), [2], 'just past it: worker 2 is lagging')
  for (let i = 0; i < 20; i++) { c.advance(2000); edit() }
  const w2 = v.report()[2]
  t.strictSame({ lagging: w2.lagging, policyVersion: w2.policyVersion, behindSeconds: w2.behindSeconds }, { lagging: true, policyVersion: 1, behindSeconds: 45 },
    'still lagging, behind since the first version it lacks (edits every 2 s do not reset that)')
  t.strictSame(lagging(v), [2], 'the others are not')

  v.enforced(2, 5) // it catches up part of the way: now it lacks 6, compiled 13 s after 2
  t.equal(v.report()[2].behindSeconds, 45 - 13, 'behind since the first version it still lacks')
  v.enforced(2, version)
  t.strictSame(lagging(v), [], 'caught up: nobody lagging')
  t.equal(v.report()[2].behindSeconds, 0)
})

t.test('a worker not running is down, not stale; started again it reports its version', async (t) => {
  const { v, c } = running(2, 1)
  v.stopped(1)
  v.compiled(2)
  v.enforced(0, 2)
  c.advance(GRACE * 3)
  t.strictSame(v.report()[1], { worker: 1, running: false, policyVersion: 1, behindSeconds: 0, lagging: false }, 'down, its last version kept')
  v.enforced(1, 2)
  t.strictSame(v.report()[1], { worker: 1, running: true, policyVersion: 2, behindSeconds: 0, lagging: false }, 'started again with the current policy')
})

t.test('a worker that has not reported yet has no version and is not stale', async (t) => {
  const c = clock()
  const v = new EnforcedVersions(2, c.now)
  v.compiled(1)
  v.enforced(0, 1)
  c.advance(GRACE * 2)
  t.strictSame(v.report()[1], { worker: 1, running: false, policyVersion: null, behindSeconds: 0, lagging: false })
  v.compiled(0)
  t.equal(v.compiledVersion, 1, 'an older compiled version is ignored')
})

t.test('memory: the versions a stuck worker lacks are bounded, its own oldest kept', async (t) => {
  const { v, c } = running(2, 1)
  for (let version = 2; version <= 5000; version++) { v.compiled(version); v.enforced(0, version); c.advance(10) }
  const pending = (v as unknown as { pending: unknown[] }).pending
  t.ok(pending.length <= 1024, `at most 1024 versions remembered (${pending.length})`)
  t.equal(v.report()[1].behindSeconds, 49, 'the stuck worker is behind since version 2, not since a later one')
  v.enforced(1, 5000)
  t.equal(pending.length, 0, 'all forgotten once every worker has them')
})

// ---- what `warden status` makes of it

function snap (version: number): Snapshot {
  return { version, createdAt: 0, endpoints: [], identities: new Map(), ipcache: [], kernel: [], http: new Map(), dns: new Map(), fqdnSelectors: [] }
}

function sources (v: EnforcedVersions, compiled: number, kernel: number): ReportSources {
  return {
    version: '0.1.0',
    startedAt: Date.now(),
    compiled: () => snap(compiled),
    active: () => snap(kernel),
    inventory: () => ({ files: ['p.yaml'], rejected: [] }),
    inspect: () => ({ pending: [], maps: {} }),
    httpProxies: () => v.report(),
    auditAll: false,
    metrics: () => ({}),
    fqdnCache: () => [],
    ring: new EventRing(4)
  }
}

type StatusOut = Parameters<typeof renderStatus>[0]

t.test('status: every worker at the compiled version is healthy and listed', async (t) => {
  const { v } = running(3, 7)
  const s = statusReport(sources(v, 7, 7)) as unknown as StatusOut
  t.equal(s.healthy, true)
  t.strictSame(s.http.workers.map((w) => [w.worker, w.running, w.policyVersion]), [[0, true, 7], [1, true, 7], [2, true, 7]], '--json carries each worker')
  t.equal(s.policy.httpProxy, 7)
  const text = renderStatus(s)
  t.match(text, /Health:\s+ok/)
  t.match(text, /worker 0 \(main thread\): running, policy version 7\n {2}worker 1: running, policy version 7\n {2}worker 2: running, policy version 7\n/)
})

t.test('status: a stuck worker degrades the node after the grace period; a down one at once', async (t) => {
  const { v, c } = running(3, 7)
  v.compiled(8)
  v.enforced(0, 8)
  v.enforced(1, 8)
  const within = statusReport(sources(v, 8, 8)) as unknown as StatusOut
  t.equal(within.healthy, true, 'within the grace period: healthy')
  t.match(renderStatus(within), /worker 2: running, policy version 7 \(8 compiled, on its way\)/)
  t.equal(within.policy.httpProxy, 7, 'the oldest version an HTTP proxy enforces')

  c.advance(GRACE + 1000)
  const late = statusReport(sources(v, 8, 8)) as unknown as StatusOut
  t.equal(late.healthy, false)
  t.strictSame(late.degraded, ['HTTP proxy worker 2 enforces policy version 7, 8 compiled: behind for 6 s'])
  t.match(renderStatus(late), /worker 2: running, policy version 7, BEHIND 8 compiled for 6 s/)

  v.stopped(1)
  const down = statusReport(sources(v, 8, 8)) as unknown as StatusOut
  t.strictSame(down.degraded, ['1 of 3 HTTP proxy workers down (worker 1)', 'HTTP proxy worker 2 enforces policy version 7, 8 compiled: behind for 6 s'])
  t.match(renderStatus(down), /worker 1: NOT RUNNING \(last policy version 8/)
})

t.test('status: when the kernel itself is behind, the degraded line says so', async (t) => {
  const { v, c } = running(2, 3)
  v.compiled(4) // never applied to the kernel: nobody gets it
  c.advance(GRACE + 1)
  const s = statusReport(sources(v, 4, 3)) as unknown as StatusOut
  t.strictSame(s.degraded, [
    'HTTP proxy worker 0 enforces policy version 3, 4 compiled: behind for 5 s (the kernel has 3: is the apply failing? see the agent\'s log)',
    'HTTP proxy worker 1 enforces policy version 3, 4 compiled: behind for 5 s (the kernel has 3: is the apply failing? see the agent\'s log)'
  ])
})
t.test('a worker that starts behind, and stays behind, is reported lagging', async (t) => {
  let now = 0
  const ev = new EnforcedVersions(2, () => now, 5000)
  ev.compiled(1)
  ev.enforced(0, 1)
  // the kernel (and the main thread's proxy) move to 2 while worker 1 is still starting
  ev.compiled(2)
  ev.enforced(0, 2)
  // worker 1 listens with the snapshot it was started with, 1, and never applies 2
  ev.enforced(1, 1)
  now += 60_000
  const w1 = ev.report()[1]
  t.equal(w1.policyVersion, 1)
  t.ok(w1.lagging, 'enforcing 1 with 2 compiled for a minute: lagging')
})
