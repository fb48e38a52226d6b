// The agent stopped keeps enforcing; restarted it reuses the pinned maps; a new build is
// swapped in without losing state; uninstall leaves no trace.
// Needs root and eBPF (CI runs as root): namespaces wdp3-*, veths wdp3*, pins under
// /sys/fs/bpf/wdp3, route table 2103; all removed in teardown.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createMapRef, objGet, RawMap } from 'bpf'
import { datapathLab, isRoot } from '../helpers/lab-fixture.js'
import { connect, startServer } from '../helpers/lab-net.js'
import { entry, openEntries } from '../helpers/lab-snapshot.js'
import { uninstall } from '../../redirect-bpf/src/index.js'

const TCP = 6
const IN = 0
const OUT = 1

function sh (cmd: string, args: string[]): string {
  try { return execFileSync(cmd, args, { encoding: 'utf8' }) } catch (err) { return String((err as { stdout?: string }).stdout ?? '') }
}
function mapId (path: string): number { return (JSON.parse(sh('bpftool', ['-j', 'map', 'show', 'pinned', path])) as { id: number }).id }
function progId (path: string): number { return (JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'pinned', path])) as { id: number }).id }

t.test('restart, upgrade and uninstall', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 3, ['a', 'b', 'c'])
  const [A, B, C] = [100, 101, 102]
  const s = await startServer(lab.ns('b'), 'tcp', 8080, 'b')
  t.teardown(s.stop)
  const u = await startServer(lab.ns('b'), 'udp', 5353, 'b')
  t.teardown(u.stop)
  const policy = [...openEntries(A), ...openEntries(C), entry(B, IN, 1000, TCP, 8080, 'allow'),
    entry(B, IN, 1000, 17, 5353, 'allow'), entry(B, OUT, 0, 0, 0, 'allow')]
  await lab.apply(policy)
  const bpffs = lab.opts.bpffs
  const ctId = mapId(`${bpffs}/l7p_ct`)
  const progBefore = progId(`${bpffs}/progs/from_workload`)

  await t.test('the agent stopped keeps enforcing', async (t) => {
    await lab.dp.close()
    const [ab, udp, cb] = await Promise.all([
      connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080),
      connect(lab.ns('a'), 'udp', lab.ip('b'), 5353),
      connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080, 1000)
    ])
    t.match(ab, { ok: true }, 'allowed still passes')
    t.strictSame(cb, { ok: false, error: 'timeout' }, 'denied still dropped')
    t.match(udp, { ok: true }, 'a UDP flow (60 s in CT) for the next check')
  })

  await t.test('restarted, it reuses the pinned maps and programs', async (t) => {
    const dp = await lab.reopen()
    t.equal(mapId(`${bpffs}/l7p_ct`), ctId, 'same CT map')
    t.equal(progId(`${bpffs}/progs/from_workload`), progBefore, 'same program')
    t.ok(dp.hasConnection(lab.ip('a')), 'CT entries survived (the UDP flow)')
    t.equal(dp.lookupIdentity(lab.ip('a')), 1000, 'ipcache survived')
    await lab.apply(policy)
    t.strictSame(await connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080, 1000), { ok: false, error: 'timeout' })
    t.ok(dp.counters().drop_policy >= 2, 'counters kept counting across the restart')
  })

  await t.test('a different build is loaded with the same maps and swapped in on every interface', async (t) => {
    await lab.dp.close()
    // pretend the pinned programs came from another build
    const cfg = new RawMap(createMapRef(objGet(`${bpffs}/l7p_config`), { transfer: true }))
    const v = cfg.get(Buffer.alloc(4))
    t.ok(v)
    if (v !== undefined) { v.writeBigUInt64LE(42n, 16); cfg.set(Buffer.alloc(4), v) }
    cfg.ref.close()
    await lab.reopen()
    const after = progId(`${bpffs}/progs/from_workload`)
    t.not(after, progBefore, 'new program')
    t.equal(mapId(`${bpffs}/l7p_ct`), ctId, 'same CT map')
    t.match(sh('tc', ['filter', 'show', 'dev', lab.eps[1].iface, 'ingress']), new RegExp(`id ${after} `), 'filter points at the new program')
    t.ok(!existsSync(`${bpffs}/progs_new`))
    t.match(await connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080), { ok: true })
    t.strictSame(await connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080, 1000), { ok: false, error: 'timeout' })
  })

  await t.test('an older build\'s counters (fewer slots) are replaced, its retired maps unpinned; the state is kept', async (t) => {
    await lab.dp.close()
    const counters = `${bpffs}/l7p_counters`
    execFileSync('rm', [counters])
    execFileSync('bpftool', ['map', 'create', counters, 'type', 'percpu_array', 'key', '4', 'value', '8', 'entries', '16', 'name', 'l7p_counters'])
    // l7p_udp_orig: the original destination of redirected UDP, until the DNS proxy read IP_ORIGDSTADDR
    const retired = `${bpffs}/l7p_udp_orig`
    execFileSync('bpftool', ['map', 'create', retired, 'type', 'lru_hash', 'key', '8', 'value', '8', 'entries', '16384', 'name', 'l7p_udp_orig'])
    const cfg = new RawMap(createMapRef(objGet(`${bpffs}/l7p_config`), { transfer: true }))
    const v = cfg.get(Buffer.alloc(4))
    if (v !== undefined) { v.writeBigUInt64LE(43n, 16); cfg.set(Buffer.alloc(4), v) }
    cfg.ref.close()
    const dp = await lab.reopen()
    t.equal((JSON.parse(sh('bpftool', ['-j', 'map', 'show', 'pinned', counters])) as { max_entries: number }).max_entries, 32, 'the new shape')
    t.notOk(existsSync(retired), 'the retired map\'s pin is gone')
    t.equal(mapId(`${bpffs}/l7p_ct`), ctId, 'same CT map')
    t.strictSame(await connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080, 1000), { ok: false, error: 'timeout' }, 'still enforcing')
    t.ok(dp.counters().drop_policy >= 1, 'and counting in the new map')
  })

  await t.test('uninstall leaves no filter, rule, route or pin', async (t) => {
    await lab.dp.close()
    await uninstall({ bpffs, routeTable: lab.opts.routeTable })
    for (const ep of lab.eps) {
      t.equal(sh('tc', ['filter', 'show', 'dev', ep.iface, 'ingress']).trim(), '', `no ingress filter on ${ep.iface}`)
      t.equal(sh('tc', ['filter', 'show', 'dev', ep.iface, 'egress']).trim(), '', `no egress filter on ${ep.iface}`)
      t.notMatch(sh('tc', ['qdisc', 'show', 'dev', ep.iface]), /clsact/, `no clsact on ${ep.iface}`)
    }
    t.notMatch(sh('ip', ['rule', 'show']), new RegExp(`lookup ${lab.opts.routeTable}\\b`), 'no ip rule')
    t.equal(sh('ip', ['route', 'show', 'table', String(lab.opts.routeTable)]).trim(), '', 'no route')
    t.notOk(existsSync(bpffs), 'no pins')
    t.match(await connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080), { ok: true }, 'nothing enforces any more')
    await uninstall({ bpffs, routeTable: lab.opts.routeTable }) // twice is fine
  })
})
