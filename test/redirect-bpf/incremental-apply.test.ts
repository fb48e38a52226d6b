// Applying a snapshot diff writes only what the diff names; the full sync (an apply without a
// diff, and the periodic one) reads the maps back and repairs drift and missed diffs.
// Needs root: netns wdp23-*, pins /sys/fs/bpf/wdp23, table 2123; removed in teardown.
import t from 'tap'
import { pino } from 'pino'
import { createMapRef, objGet, RawMap } from 'bpf'
import { datapathLab, eventually, isRoot } from '../helpers/lab-fixture.js'
import { entry, openEntries, snapshot } from '../helpers/lab-snapshot.js'
import { decodePolicyValue, encodePolicyKey, encodePolicyValue, SIZE, VERDICT, type PolicyKey } from '../../redirect-bpf/src/layout.js'
import type { KernelEntry, Snapshot, SnapshotDiff } from '../../policy-store/src/types.js'

const TCP = 6
const IN = 0

interface LogRecord { level: number, msg: string, mode?: string, why?: string, repairs?: number, policy?: { written: number, deleted: number, repairs?: number }, ipcache?: { written: number, deleted: number } }

t.test('incremental apply and full sync', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 23, ['a', 'b'])
  const records: LogRecord[] = []
  lab.opts.logger = pino({ level: 'debug' }, { write: (line: string) => { records.push(JSON.parse(line) as LogRecord) } })
  lab.opts.fullSyncIntervalMs = 0 // the periodic sync is started by hand below
  await lab.reopen()
  const policyMap = new RawMap(createMapRef(objGet(`${lab.opts.bpffs}/l7p_policy`), { transfer: true }))
  t.teardown(() => policyMap.ref.close())
  const key = (k: Omit<PolicyKey, 'portPrefix'>): Buffer => encodePolicyKey(Buffer.alloc(SIZE.policyKey), { ...k, portPrefix: 16 })
  const verdictAt = (k: Omit<PolicyKey, 'portPrefix'>): number | undefined => {
    const v = policyMap.get(key(k))
    return v === undefined ? undefined : decodePolicyValue(v).verdict
  }
  const applied = (): LogRecord[] => records.splice(0).filter((r) => r.mode !== undefined)

  const [A, B] = [100, 101]
  const base: KernelEntry[] = [...openEntries(A), entry(B, 1, 0, 0, 0, 'allow')]
  for (let i = 0; i < 500; i++) base.push(entry(B, IN, 3000 + i, TCP, 8080, 'allow'))
  let cur: Snapshot = snapshot(lab.eps, base)
  await lab.dp.apply(cur)
  t.match(applied(), [{ mode: 'full', why: 'snapshot', repairs: 0 }], 'the first apply is a full sync')

  /** The next snapshot, with the compiler's diff (or a hand-made one). */
  const next = (kernel: KernelEntry[], diff: Partial<SnapshotDiff>): { snap: Snapshot, diff: SnapshotDiff } => {
    const snap = { ...snapshot(lab.eps, kernel), endpoints: cur.endpoints, ipcache: cur.ipcache }
    return {
      snap,
      diff: { from: cur.version, to: snap.version, kernelAdded: [], kernelRemoved: [], ipcacheAdded: [], ipcacheRemoved: [], endpointsAdded: [], endpointsRemoved: [], ...diff }
    }
  }

  await t.test('a diff writes only its keys: drift elsewhere is left alone until a full sync', async (t) => {
    // drift by hand: a key no snapshot has, and an allow turned into a deny
    const stray = { endpointId: 999, direction: IN, protocol: TCP, identity: 4242, port: 1 }
    policyMap.set(key(stray), encodePolicyValue(Buffer.alloc(SIZE.policyValue), { verdict: VERDICT.ALLOW, portPrefix: 16, cookie: 0 }))
    const flipped = { endpointId: B, direction: IN, protocol: TCP, identity: 3007, port: 8080 }
    policyMap.set(key(flipped), encodePolicyValue(Buffer.alloc(SIZE.policyValue), { verdict: VERDICT.DENY, portPrefix: 16, cookie: 0 }))

    const deny = entry(B, IN, 7777, TCP, 443, 'deny')
    const { snap, diff } = next([...base, deny], { kernelAdded: [deny] })
    await lab.dp.apply(snap, diff)
    cur = snap
    t.match(applied(), [{ mode: 'diff', policy: { written: 1, deleted: 0 }, ipcache: { written: 0, deleted: 0 } }], 'one key written')
    t.equal(verdictAt({ endpointId: B, direction: IN, protocol: TCP, identity: 7777, port: 443 }), VERDICT.DENY, 'the new entry is in the kernel')
    t.equal(verdictAt(stray), VERDICT.ALLOW, 'the stray key survives: nothing else was read or written')
    t.equal(verdictAt(flipped), VERDICT.DENY, 'and so does the flipped one')

    await lab.dp.apply(cur)
    const [full] = applied()
    t.match(full, { mode: 'full', level: 40, repairs: 2, policy: { written: 1, deleted: 1 } }, 'a full sync repairs both and warns')
    t.equal(verdictAt(stray), undefined, 'stray key removed')
    t.equal(verdictAt(flipped), VERDICT.ALLOW, 'flipped key restored')
    t.equal(verdictAt({ endpointId: B, direction: IN, protocol: TCP, identity: 7777, port: 443 }), VERDICT.DENY, 'the applied diff stays')
  })

  await t.test('a removal and a verdict change through diffs', async (t) => {
    const old = cur.kernel.find((e) => e.remoteIdentity === 3010) as KernelEntry
    const changed = { ...old, verdict: 'redirect-http' as const }
    const gone = cur.kernel.find((e) => e.remoteIdentity === 3011) as KernelEntry
    const { snap, diff } = next(cur.kernel.filter((e) => e !== old && e !== gone).concat(changed), { kernelRemoved: [old, gone], kernelAdded: [changed] })
    await lab.dp.apply(snap, diff)
    cur = snap
    t.match(applied(), [{ mode: 'diff', policy: { written: 1, deleted: 1 } }], 'the changed key is overwritten, not deleted first')
    t.equal(verdictAt({ endpointId: B, direction: IN, protocol: TCP, identity: 3010, port: 8080 }), VERDICT.REDIRECT_HTTP)
    t.equal(verdictAt({ endpointId: B, direction: IN, protocol: TCP, identity: 3011, port: 8080 }), undefined)
  })

  await t.test('a missed diff is caught by the periodic full sync', async (t) => {
    // a datapath whose periodic sync runs often (the same pins); its first apply is a full sync
    lab.opts.fullSyncIntervalMs = 50
    await lab.reopen()
    await lab.dp.apply(cur)
    applied()
    const e1 = entry(B, IN, 8001, TCP, 9000, 'allow')
    const e2 = entry(B, IN, 8002, TCP, 9000, 'allow')
    // the snapshot has both, the diff names only one: the diff path writes what it is told
    const { snap, diff } = next([...cur.kernel, e1, e2], { kernelAdded: [e1] })
    await lab.dp.apply(snap, diff)
    cur = snap
    t.equal(verdictAt({ endpointId: B, direction: IN, protocol: TCP, identity: 8001, port: 9000 }), VERDICT.ALLOW)
    await eventually(() => records.some((r) => r.why === 'periodic' && (r.repairs ?? 0) > 0))
    t.match(records.find((r) => r.why === 'periodic' && (r.repairs ?? 0) > 0), { level: 40, repairs: 1, policy: { written: 1, deleted: 0 } },
      'the missing key is written, counted as a repair, and logged as a warning')
    t.equal(verdictAt({ endpointId: B, direction: IN, protocol: TCP, identity: 8002, port: 9000 }), VERDICT.ALLOW, 'the missed entry is in the kernel')
    lab.opts.fullSyncIntervalMs = 0
    await lab.reopen()
  })

  await t.test('a diff that does not start from the snapshot in the kernel is applied as a full sync', async (t) => {
    await lab.dp.apply(cur)
    applied()
    const e3 = entry(B, IN, 8004, TCP, 9000, 'allow')
    const e4 = entry(B, IN, 8005, TCP, 9000, 'allow')
    const skipped = next([...cur.kernel, e3], { kernelAdded: [e3] }) // never applied: the agent missed it
    cur = skipped.snap
    const { snap, diff } = next([...cur.kernel, e4], { kernelAdded: [e4] })
    await lab.dp.apply(snap, diff)
    cur = snap
    t.match(applied(), [{ mode: 'full', why: 'diff-not-from-kernel', policy: { written: 2 } }])
    t.equal(verdictAt({ endpointId: B, direction: IN, protocol: TCP, identity: 8004, port: 9000 }), VERDICT.ALLOW, 'the skipped snapshot\'s entry too')
  })
})
