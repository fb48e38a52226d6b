// The control plane between the policy store and the kernel, with a fake store and a fake
// datapath (no root): ordering, edits during an apply, incremental vs full applies, failures,
// retries and the DNS proxy's waiters.
import t from 'tap'
import type { LearnedName, Snapshot, SnapshotDiff } from '../../policy-store/src/index.js'
import { ControlPlane, type KernelPort, type SnapshotSource } from '../../agent/control-plane.js'

function snap (version: number): Snapshot {
  return {
    version,
    createdAt: 0,
    endpoints: [],
    identities: new Map(),
    ipcache: [],
    kernel: [],
    http: new Map(),
    dns: new Map(),
    fqdnSelectors: []
  }
}

function diff (from: number, to: number): SnapshotDiff {
  return { from, to, kernelAdded: [], kernelRemoved: [], ipcacheAdded: [], ipcacheRemoved: [], endpointsAdded: [], endpointsRemoved: [] }
}

class FakeStore implements SnapshotSource {
  snapshot = snap(1)
  listeners = new Set<(s: Snapshot, d: SnapshotDiff) => void>()
  learned: readonly LearnedName[] = []
  current (): Snapshot { return this.snapshot }
  onSnapshot (fn: (s: Snapshot, d: SnapshotDiff) => void): () => void {
    this.listeners.add(fn)
    return () => { this.listeners.delete(fn) }
  }

  /** A new snapshot, as a policy edit would make it. */
  edit (): Snapshot {
    const prev = this.snapshot
    this.snapshot = snap(prev.version + 1)
    for (const fn of this.listeners) fn(this.snapshot, diff(prev.version, this.snapshot.version))
    return this.snapshot
  }

  setLearnedNames (names: readonly LearnedName[]): Snapshot {
    this.learned = names
    return this.edit()
  }
}

interface Apply { version: number, incremental: boolean }

/** Records applies; each may be held (a deferred) or made to fail. */
class FakeDatapath implements KernelPort {
  applies: Apply[] = []
  failures: Array<(a: Apply) => boolean> = []
  holds: Array<{ version: number, release: () => void }> = []
  holdVersions = new Set<number>()
  lookups = 0
  kernelVersion = 0

  async apply (s: Snapshot, d?: SnapshotDiff): Promise<void> {
    const a = { version: s.version, incremental: d !== undefined }
    this.applies.push(a)
    if (this.holdVersions.has(s.version)) {
      this.holdVersions.delete(s.version)
      await new Promise<void>((resolve) => this.holds.push({ version: s.version, release: resolve }))
    }
    const i = this.failures.findIndex((f) => f(a))
    if (i >= 0) {
      this.failures.splice(i, 1)
      throw new Error(`apply of v${s.version} failed`)
    }
    if (d !== undefined && d.from !== this.kernelVersion) throw new Error(`diff from v${d.from} applied onto v${this.kernelVersion}`)
    this.kernelVersion = s.version
  }

  lookupIdentity (_ip: string): number { this.lookups++; return 1000 }
}

const silent = { info () {}, error () {} }
const tick = async (): Promise<void> => { for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve)) }

t.test('an edit that lands during the first apply reaches the kernel after it', async (t) => {
  const store = new FakeStore()
  const dp = new FakeDatapath()
  dp.holdVersions.add(1)
  const starting = ControlPlane.start({ store, datapath: dp, logger: silent })
  await tick()
  store.edit() // v2, compiled while v1 is being applied
  dp.holds[0].release()
  const cp = await starting
  t.teardown(async () => await cp.close())
  await cp.whenEnforced(2)
  t.strictSame(dp.applies, [{ version: 1, incremental: false }, { version: 2, incremental: true }])
  t.equal(cp.active().version, 2, 'the proxies enforce the edit')
})

t.test('snapshots reach the kernel one at a time, in order, each once', async (t) => {
  const store = new FakeStore()
  const dp = new FakeDatapath()
  const cp = await ControlPlane.start({ store, datapath: dp, logger: silent })
  t.teardown(async () => await cp.close())
  dp.holdVersions.add(2)
  store.edit()
  await tick()
  store.edit()
  store.edit()
  t.equal(dp.applies.length, 2, 'v3 waits while v2 is being applied')
  t.equal(cp.active().version, 1, 'the proxies keep v1 until the kernel has v2')
  dp.holds[0].release()
  await cp.whenEnforced(4)
  t.strictSame(dp.applies.map((a) => a.version), [1, 2, 3, 4])
  t.ok(dp.applies.slice(1).every((a) => a.incremental), 'each edit applied as its diff')
})

t.test('the proxies see a snapshot only once the kernel has it', async (t) => {
  const store = new FakeStore()
  const dp = new FakeDatapath()
  const cp = await ControlPlane.start({ store, datapath: dp, logger: silent })
  t.teardown(async () => await cp.close())
  const seen: Array<{ version: number, kernel: number }> = []
  cp.onActive((s) => seen.push({ version: s.version, kernel: dp.kernelVersion }))
  store.edit()
  await cp.whenEnforced(2)
  t.strictSame(seen, [{ version: 2, kernel: 2 }])
})

t.test('a failed incremental apply is retried as a full one; the next diff applies onto it', async (t) => {
  const store = new FakeStore()
  const dp = new FakeDatapath()
  const cp = await ControlPlane.start({ store, datapath: dp, logger: silent })
  t.teardown(async () => await cp.close())
  dp.failures.push((a) => a.version === 2 && a.incremental)
  store.edit()
  await cp.whenEnforced(2)
  t.equal(cp.active().version, 2)
  store.edit()
  await cp.whenEnforced(3)
  t.strictSame(dp.applies, [
    { version: 1, incremental: false },
    { version: 2, incremental: true },
    { version: 2, incremental: false },
    { version: 3, incremental: true }
  ])
})

t.test('when the full retry fails too: the old snapshot stays, waiters are released, the next apply is full', async (t) => {
  const store = new FakeStore()
  const dp = new FakeDatapath()
  const cp = await ControlPlane.start({ store, datapath: dp, logger: silent, retryMs: 60_000 })
  t.teardown(async () => await cp.close())
  dp.failures.push((a) => a.version === 2, (a) => a.version === 2)
  store.edit()
  await cp.whenEnforced(2) // released although v2 never made it
  t.equal(cp.active().version, 1, 'the proxies keep enforcing v1')
  store.edit() // its diff is from v2, which the kernel never got
  await cp.whenEnforced(3)
  t.strictSame(dp.applies.slice(3), [{ version: 3, incremental: false }], 'a full apply: the kernel content was unknown')
  t.equal(cp.active().version, 3)
})

t.test('with no new snapshot, a failed apply is retried with backoff until it succeeds', async (t) => {
  const store = new FakeStore()
  const dp = new FakeDatapath()
  const cp = await ControlPlane.start({ store, datapath: dp, logger: silent, retryMs: 5, retryMaxMs: 20 })
  t.teardown(async () => await cp.close())
  dp.failures.push((a) => a.version === 2, (a) => a.version === 2, (a) => a.version === 2)
  store.edit()
  for (let i = 0; i < 200 && cp.active().version !== 2; i++) await new Promise((resolve) => setTimeout(resolve, 5))
  t.equal(cp.active().version, 2, 'in force after the retries')
  t.strictSame(dp.applies.map((a) => a.version), [1, 2, 2, 2, 2], 'incremental, full, then retries until one succeeded')
})

t.test('a first apply that fails fails the start and leaves no subscription', async (t) => {
  const store = new FakeStore()
  const dp = new FakeDatapath()
  dp.failures.push(() => true)
  await t.rejects(ControlPlane.start({ store, datapath: dp, logger: silent }), /apply of v1 failed/)
  t.equal(store.listeners.size, 0)
})

t.test('learn() resolves once the kernel has the learned names', async (t) => {
  const store = new FakeStore()
  const dp = new FakeDatapath()
  const cp = await ControlPlane.start({ store, datapath: dp, logger: silent })
  t.teardown(async () => await cp.close())
  dp.holdVersions.add(2)
  let done = false
  const learning = cp.learn([]).then(() => { done = true })
  await tick()
  t.notOk(done, 'held while the kernel does not have them')
  dp.holds[0].release()
  await learning
  t.equal(dp.kernelVersion, 2)
})

t.test('identities are looked up once per address per snapshot', async (t) => {
  const store = new FakeStore()
  const dp = new FakeDatapath()
  const cp = await ControlPlane.start({ store, datapath: dp, logger: silent })
  t.teardown(async () => await cp.close())
  cp.lookupIdentity('10.0.0.1')
  cp.lookupIdentity('10.0.0.1')
  t.equal(dp.lookups, 1)
  store.edit()
  await cp.whenEnforced(2)
  cp.lookupIdentity('10.0.0.1')
  t.equal(dp.lookups, 2, 'asked again after the ipcache may have changed')
})

t.test('close releases waiters and takes no more snapshots', async (t) => {
  const store = new FakeStore()
  const dp = new FakeDatapath()
  const cp = await ControlPlane.start({ store, datapath: dp, logger: silent })
  dp.holdVersions.add(2)
  store.edit()
  await tick()
  const waiting = cp.whenEnforced(3)
  const closing = cp.close()
  dp.holds[0].release()
  await closing
  await waiting
  store.edit()
  await tick()
  t.strictSame(dp.applies.map((a) => a.version), [1, 2])
  t.equal(store.listeners.size, 0)
})
