// L3/L4 enforcement in the kernel between lab namespaces.
// Needs root and a kernel with eBPF (CI runs as root): creates namespaces wdp1-*, veths
// wdp1*, pins under /sys/fs/bpf/wdp1, route table 2101; all removed in teardown.
import t from 'tap'
import { datapathLab, eventually, isRoot } from '../helpers/lab-fixture.js'
import { connect, startServer } from '../helpers/lab-net.js'
import { entry, openEntries } from '../helpers/lab-snapshot.js'
import type { FlowEvent } from '../../redirect-bpf/src/index.js'

const TCP = 6
const IN = 0
const OUT = 1

t.test('kernel enforcement', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 1, ['a', 'b', 'c'])
  const [A, B, C] = [100, 101, 102]
  const [idA, , idC] = [1000, 1001, 1002]
  const flows: FlowEvent[] = []
  lab.dp.onFlow((ev) => flows.push(ev))
  for (const n of ['a', 'b', 'c']) {
    for (const port of [8080, 9090]) {
      const s = await startServer(lab.ns(n), 'tcp', port, n)
      t.teardown(s.stop)
    }
    const u = await startServer(lab.ns(n), 'udp', 5353, n)
    t.teardown(u.stop)
  }
  const open = [...openEntries(A), ...openEntries(B), ...openEntries(C)]

  await t.test('with no policy selecting them, connections work both ways', async (t) => {
    await lab.apply(open)
    const [ab, ba, cb] = await Promise.all([
      connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080),
      connect(lab.ns('b'), 'tcp', lab.ip('a'), 8080),
      connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080)
    ])
    t.match(ab, { ok: true, reply: { from: 'b', remote: new RegExp(`^${lab.ip('a')}:`) } })
    t.match(ba, { ok: true, reply: { from: 'a' } })
    t.match(cb, { ok: true, reply: { from: 'b' } })
    const udp = await connect(lab.ns('a'), 'udp', lab.ip('c'), 5353)
    t.match(udp, { ok: true, reply: { from: 'c' } })
  })

  await t.test('default deny once a policy selects the endpoint; a drop times out, it is not refused', async (t) => {
    // b: ingress only from a on TCP 8080; egress open
    await lab.apply([...openEntries(A), ...openEntries(C), entry(B, IN, idA, TCP, 8080, 'allow'), entry(B, OUT, 0, 0, 0, 'allow')])
    const [ab, ab2, cb, au] = await Promise.all([
      connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080),
      connect(lab.ns('a'), 'tcp', lab.ip('b'), 9090, 1000),
      connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080, 1000),
      connect(lab.ns('a'), 'udp', lab.ip('b'), 5353, 1000)
    ])
    t.match(ab, { ok: true, reply: { from: 'b' } }, 'the allowed port and peer')
    t.strictSame(ab2, { ok: false, error: 'timeout' }, 'another port: dropped')
    t.strictSame(cb, { ok: false, error: 'timeout' }, 'another peer: dropped')
    t.strictSame(au, { ok: false, error: 'timeout' }, 'another protocol: dropped')
    await eventually(() => flows.some((f) => f.verdict === 'dropped' && f.srcIp === lab.ip('c') && f.dstPort === 8080))
    const drop = flows.find((f) => f.verdict === 'dropped' && f.srcIp === lab.ip('c') && f.dstPort === 8080)
    t.match(drop, { reason: 'drop_policy', endpointId: B, direction: 'ingress', srcIdentity: idC, protocol: TCP }, 'the drop is an event')
    t.ok(lab.dp.counters().drop_policy >= 3, 'and counted')
  })

  await t.test('replies pass where the other side has default deny', async (t) => {
    // a may only send to b:8080; b has no egress allow at all and no ingress from anyone but a
    await lab.apply([
      entry(A, OUT, 1001, TCP, 8080, 'allow'),
      entry(B, IN, idA, TCP, 8080, 'allow'),
      ...openEntries(C)
    ])
    const [ab, ba] = await Promise.all([
      connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080),
      connect(lab.ns('b'), 'tcp', lab.ip('a'), 8080, 1000)
    ])
    t.match(ab, { ok: true, reply: { from: 'b' } }, 'request and reply pass')
    t.strictSame(ba, { ok: false, error: 'timeout' }, 'but b cannot open a connection to a')
    t.ok(lab.dp.hasConnection(lab.ip('b')), 'the flow is in CT')
  })

  await t.test('deny rules win over allows', async (t) => {
    await lab.apply([
      ...openEntries(A), ...openEntries(C),
      entry(B, IN, 0, 0, 0, 'allow'), entry(B, OUT, 0, 0, 0, 'allow'),
      entry(B, IN, idA, TCP, 8080, 'deny')
    ])
    const [ab, ab9, cb] = await Promise.all([
      connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080, 1000),
      connect(lab.ns('a'), 'tcp', lab.ip('b'), 9090),
      connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080)
    ])
    t.strictSame(ab, { ok: false, error: 'timeout' }, 'denied peer and port')
    t.match(ab9, { ok: true }, 'same peer, other port')
    t.match(cb, { ok: true }, 'other peer, same port')
    await eventually(() => flows.some((f) => f.reason === 'drop_policy_deny' && f.srcIp === lab.ip('a')))
    t.ok(flows.some((f) => f.reason === 'drop_policy_deny' && f.srcIp === lab.ip('a')), 'reason is the deny rule')
  })

  await t.test('port ranges: an endPort range is enforced whole and only', async (t) => {
    await lab.apply([...openEntries(A), ...openEntries(C), entry(B, IN, 0, TCP, 8000, 'allow', 8999), entry(B, OUT, 0, 0, 0, 'allow')])
    const [in8080, out9090] = await Promise.all([
      connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080),
      connect(lab.ns('a'), 'tcp', lab.ip('b'), 9090, 1000)
    ])
    t.match(in8080, { ok: true })
    t.strictSame(out9090, { ok: false, error: 'timeout' })
  })

  await t.test('an edited policy takes effect on new connections within 100 ms', async (t) => {
    await lab.apply(open)
    t.match(await connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080), { ok: true })
    const t0 = performance.now()
    await lab.apply([...openEntries(A), ...openEntries(C), entry(B, IN, idA, TCP, 8080, 'allow'), entry(B, OUT, 0, 0, 0, 'allow')])
    const ms = performance.now() - t0
    t.ok(ms < 100, `applied in ${ms.toFixed(1)} ms`)
    t.strictSame(await connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080, 1000), { ok: false, error: 'timeout' }, 'c is cut off')
    await lab.apply(open)
    t.match(await connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080), { ok: true }, 'and let back in')
  })

  await t.test('the ipcache answers identity lookups; unknown addresses are world', async (t) => {
    t.equal(lab.dp.lookupIdentity(lab.ip('a')), idA)
    t.equal(lab.dp.lookupIdentity('192.0.2.1'), 2)
  })
})
