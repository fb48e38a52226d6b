// Conntrack garbage collection: expired entries are deleted (the LRU map would otherwise keep
// them and, when full, evict an idle live connection instead); live ones and an entry re-created
// for the same tuple stay.
// Needs root and eBPF (CI runs as root): namespaces wdp13-*, veths wdp13*, pins under
// /sys/fs/bpf/wdp13, route table 2113; all removed in teardown.
import t from 'tap'
import { createMapRef, objGet, RawMap } from 'bpf'
import { datapathLab, isRoot } from '../helpers/lab-fixture.js'
import { connect, startServer } from '../helpers/lab-net.js'
import { openEntries } from '../helpers/lab-snapshot.js'
import { decodeCtEntry, encodeCtEntry, encodeCtKey, SIZE } from '../../redirect-bpf/src/layout.js'
import { monotonicNowNs } from '../../redirect-bpf/src/events.js'

t.test('expired conntrack entries are deleted, live ones kept', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 13, ['a', 'b'])
  await lab.apply([...openEntries(100), ...openEntries(101)])
  const s = await startServer(lab.ns('b'), 'udp', 5353, 'b')
  t.teardown(s.stop)
  t.match(await connect(lab.ns('a'), 'udp', lab.ip('b'), 5353), { ok: true }, 'a real flow (60 s in conntrack)')

  const ct = new RawMap(createMapRef(objGet(`${lab.opts.bpffs}/l7p_ct`), { transfer: true }))
  t.teardown(() => ct.ref.close())
  const realKeys = [...ct.keys()].map((k) => k.toString('hex'))
  t.ok(realKeys.length >= 1)
  const now = monotonicNowNs()
  const key = (port: number): Buffer => encodeCtKey(Buffer.alloc(SIZE.ctKey), { saddr: '198.18.29.10', daddr: '198.18.29.11', sport: port, dport: 80, proto: 6 })
  const entry = (expires: bigint): Buffer => encodeCtEntry(Buffer.alloc(SIZE.ctEntry), { expires, srcIdentity: 1000, dstIdentity: 1001, endpointId: 100, flags: 0 })
  for (const port of [1001, 1002, 1003]) ct.set(key(port), entry(now - 1_000_000_000n))
  ct.set(key(2000), entry(now + 60_000_000_000n))

  const before = lab.dp.counters().ct_gc_deleted
  t.equal(lab.dp.collectCt(), 3, 'the three expired entries')
  for (const port of [1001, 1002, 1003]) t.equal(ct.get(key(port)), undefined, `expired ${port} gone`)
  t.ok(ct.get(key(2000)) !== undefined, 'the live entry stays')
  for (const k of realKeys) t.ok(ct.get(Buffer.from(k, 'hex')) !== undefined, 'the real flow stays')
  t.equal(lab.dp.counters().ct_gc_deleted - before, 3, 'counted')
  t.equal(lab.dp.collectCt(), 0, 'nothing more to delete')
  t.ok(decodeCtEntry(ct.get(key(2000)) as Buffer).expires > now, 'untouched')
})
