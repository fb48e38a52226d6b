// The kernel ipcache is sized by configuration: a pinned ipcache of another size (an older
// build's, or the size changed) is replaced by one of the configured size holding every entry,
// while the attached programs keep enforcing; a size too small for what is enforced is refused.
// Needs root and eBPF (CI runs as root): namespaces wdp80-*, veths wdp80*, pins under
// /sys/fs/bpf/wdp80, route table 2180; all removed in teardown.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createMapRef, objGet, RawMap } from 'bpf'
import { datapathLab, isRoot } from '../helpers/lab-fixture.js'
import { connect, startServer, type ConnectResult } from '../helpers/lab-net.js'
import { entry, openEntries, snapshot } from '../helpers/lab-snapshot.js'

const TCP = 6
const IN = 0
const OUT = 1
/** Other nodes' pods, as a cluster would add them: 10.80.0.0 and up, identity 3000. */
const REMOTE = 20000

interface MapInfo { id: number, max_entries: number }
function mapInfo (path: string): MapInfo {
  return JSON.parse(execFileSync('bpftool', ['-j', 'map', 'show', 'pinned', path], { encoding: 'utf8' })) as MapInfo
}
function countEntries (path: string): number {
  const ref = createMapRef(objGet(path), { transfer: true })
  let n = 0
  try { for (const _ of new RawMap(ref).keys()) n++ } finally { ref.close() }
  return n
}
function remote (i: number): { prefix: string, identity: number } {
  return { prefix: `10.80.${i >> 8}.${i & 255}/32`, identity: 3000 }
}

t.test('the ipcache is resized without a gap in enforcement', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 80, ['a', 'b', 'c'])
  const [A, B, C] = [100, 101, 102]
  const s = await startServer(lab.ns('b'), 'tcp', 8080, 'b')
  t.teardown(s.stop)
  // b admits a (identity 1000) on 8080; c (1002) is dropped. A source missing from the ipcache
  // would be `world`, and dropped too: an allowed connection proves a's entry was there.
  const policy = [...openEntries(A), ...openEntries(C), entry(B, IN, 1000, TCP, 8080, 'allow'), entry(B, OUT, 0, 0, 0, 'allow')]
  const extra = Array.from({ length: REMOTE }, (_, i) => remote(i))
  const pin = `${lab.opts.bpffs}/l7p_ipcache`
  const entries = REMOTE + lab.eps.length + 1 // and the snapshot's 0.0.0.0/0 -> world

  await t.test('an older build\'s 65,536-entry ipcache, filled', async (t) => {
    lab.opts.ipcacheMaxEntries = 65536
    await lab.reopen()
    await lab.dp.apply(snapshot(lab.eps, policy, extra))
    t.equal(mapInfo(pin).max_entries, 65536)
    t.equal(countEntries(pin), entries)
    t.match(await connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080), { ok: true })
  })

  await t.test('opened with the default size: a new map with every entry, traffic enforced throughout', async (t) => {
    const before = mapInfo(pin).id
    await lab.dp.close()
    delete lab.opts.ipcacheMaxEntries
    // connections from a (allowed) and c (dropped) while the map is swapped under the filters
    let swapping = true
    const allowed: ConnectResult[] = []
    const denied: ConnectResult[] = []
    const traffic = (async () => {
      while (swapping) {
        const [ab, cb] = await Promise.all([
          connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080),
          connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080, 500)
        ])
        allowed.push(ab)
        denied.push(cb)
      }
    })()
    try {
      await lab.reopen()
    } finally {
      swapping = false
      await traffic
    }
    const after = mapInfo(pin)
    t.equal(after.max_entries, 512000, 'the pinned ipcache has the configured size')
    t.not(after.id, before, 'it is a new map')
    t.notOk(existsSync(`${lab.opts.bpffs}/l7p_ipcache_new`), 'the temporary pin is gone')
    t.equal(countEntries(pin), entries, 'every entry was copied')
    t.equal(lab.dp.lookupIdentity('10.80.78.31'), 3000, 'a remote entry kept its identity')
    t.equal(lab.dp.lookupIdentity(lab.ip('a')), 1000, 'a local endpoint kept its identity')
    t.ok(allowed.length > 0, 'traffic ran during the swap')
    t.strictSame(allowed.filter((r) => !r.ok), [], 'every allowed connection passed across the swap')
    t.ok(denied.every((r) => !r.ok), 'every denied connection was dropped across the swap')
    const prog = JSON.parse(execFileSync('bpftool', ['-j', 'prog', 'show', 'pinned', `${lab.opts.bpffs}/progs/from_workload`], { encoding: 'utf8' })) as { map_ids: number[] }
    t.ok(prog.map_ids.includes(after.id), 'the programs use the new map')
    t.notOk(prog.map_ids.includes(before), 'and no longer the old one')
    await lab.dp.apply(snapshot(lab.eps, policy, extra))
    t.match(await connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080), { ok: true }, 'allowed after the first apply')
    t.strictSame(await connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080, 1000), { ok: false, error: 'timeout' }, 'denied after it')
  })

  await t.test('a size smaller than the entries to keep is refused, nothing changed', async (t) => {
    const before = mapInfo(pin)
    await lab.dp.close()
    lab.opts.ipcacheMaxEntries = 16384
    await t.rejects(lab.reopen(), { code: 'WARDEN_ERR_IPCACHE_SIZE' })
    t.strictSame(mapInfo(pin), before, 'the pinned ipcache is untouched')
    t.notOk(existsSync(`${lab.opts.bpffs}/l7p_ipcache_new`))
    t.match(await connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080), { ok: true }, 'still enforced by the pinned programs')
    delete lab.opts.ipcacheMaxEntries
    await lab.reopen()
    t.equal(mapInfo(pin).id, before.id, 'the same size again reuses the map')
  })
})
