// The HTTP proxy worker pool: workers start listening on the transparent port and report the
// policy version they enforce, a worker that dies is started again with the current policy,
// close() ends every thread.
// Needs root (IP_TRANSPARENT listeners, a pinned ipcache): namespaces wdp6-*, veths wdp6*,
// 198.18.22.0/24, pins /sys/fs/bpf/wdp6, table 2106, port 16060; all removed in teardown.
import t from 'tap'
import { pino } from 'pino'
import { HttpWorkers } from '../../agent/workers/pool.js'
import { datapathLab, isRoot } from '../helpers/lab-fixture.js'
import { openEntries } from '../helpers/lab-snapshot.js'
import { billingSnapshot } from '../helpers/http-proxy.js'

t.test('worker pool', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 6, ['a'])
  await lab.apply(openEntries(100))
  const lines: string[] = [] // the workers' log lines, as the main thread receives them
  const agentLog: unknown[] = []
  const logger = pino({ level: 'info' }, { write: (l: string) => { agentLog.push(JSON.parse(l)) } })
  const snap = await billingSnapshot()
  const enforced = new Map<number, number | 'stopped'>() // what each worker reported it enforces
  const pool = await HttpWorkers.start({
    count: 2,
    proxyPort: lab.opts.proxyPort,
    bpffs: lab.opts.bpffs,
    denyResponse: '403',
    logLevel: 'debug',
    snapshot: snap,
    logger,
    writeLog: (b) => { lines.push(...Buffer.from(b).toString('utf8').split('\n').filter((l) => l !== '')) },
    restartMs: 50,
    onEnforced: (index, version) => { enforced.set(index, version) },
    onStopped: (index) => { enforced.set(index, 'stopped') }
  })
  t.teardown(async () => await pool.close())
  t.equal(pool.size, 2)
  const first = pool.threads.map((w) => w?.threadId)
  t.ok(first.every((id) => typeof id === 'number'), 'both threads run')
  for (let i = 0; i < 50 && lines.filter((l) => l.includes('worker listening')).length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 100))
  t.strictSame(lines.filter((l) => l.includes('worker listening')).map((l) => (JSON.parse(l) as { worker: number }).worker).sort(), [1, 2], 'each says so in its own log line, through the main thread')
  t.strictSame([...enforced].sort(), [[1, snap.version], [2, snap.version]], 'each reported the policy version it started with')

  await pool.threads[0]?.terminate()
  for (let i = 0; i < 100 && enforced.get(1) !== 'stopped'; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(enforced.get(1), 'stopped', 'the pool says when a worker stops')
  const edited = { ...await billingSnapshot({ checkout: [{ method: 'GET', path: '/only-this' }] }), version: snap.version + 41 }
  pool.update(edited)
  let again: number | undefined
  for (let i = 0; i < 100 && again === undefined; i++) {
    await new Promise((resolve) => setTimeout(resolve, 50))
    const id = pool.threads[0]?.threadId
    if (id !== undefined && id !== first[0]) again = id
  }
  t.ok(again !== undefined, 'a worker that died is started again')
  t.equal(pool.threads[1]?.threadId, first[1], 'the other one kept running')
  t.match(agentLog, [{ msg: /HTTP proxy worker exited; starting it again/, worker: 1 }], 'the death is logged')
  for (let i = 0; i < 100 && (enforced.get(1) !== edited.version || enforced.get(2) !== edited.version); i++) await new Promise((resolve) => setTimeout(resolve, 50))
  t.strictSame([...enforced].sort(), [[1, edited.version], [2, edited.version]], 'the one started again and the one that kept running both report the edited version once applied')

  await pool.close()
  t.ok(pool.threads.every((w) => w === null), 'close() ends every thread')
})
