// Audit mode in the tc programs, packet by packet with BPF_PROG_TEST_RUN (nothing attached): a
// new flow policy would drop passes when the deciding endpoint audits, tracked as audited, with one
// AUDIT event carrying the would-be drop reason and an audit counter (not a drop counter); the
// other end's policy still applies. Needs root; pins under /sys/fs/bpf/wdo-audit-packets.
import t from 'tap'
import { isRoot } from '../helpers/lab-fixture.js'
import { openTestRunRig, TC_ACT_OK, TC_ACT_SHOT, type TestRunRig } from '../helpers/prog-test-run.js'
import { packet, PROTO_TCP } from '../helpers/packets.js'
import { entry } from '../helpers/lab-snapshot.js'
import { compilePolicy } from '../../redirect-bpf/src/policy.js'
import {
  CT_AUDIT, decodeCtEntry, encodeConfig, encodeCtKey, encodeEndpoint, encodeIpcacheKey, encodeIpcacheValue, EP_AUDIT, REASONS, SIZE, VERDICT
} from '../../redirect-bpf/src/layout.js'
import type { KernelEntry } from '../../policy-store/src/types.js'

const IN = 0
const OUT = 1
const A = { id: 100, identity: 1000, ip: '198.19.177.10', ifindex: 1 }
const B = { id: 101, identity: 1001, ip: '198.19.177.11', ifindex: 9999 }
const WORLD_IP = '203.0.113.7'
const WORLD = 2

function setup (rig: TestRunRig, kernel: KernelEntry[], audit: { a?: boolean, b?: boolean }): void {
  rig.clear()
  rig.maps.config.set(Buffer.alloc(4), encodeConfig(Buffer.alloc(SIZE.config), { proxyPort: 0, dnsProxyPort: 0, routeTable: 0, flags: 0, features: 0, progTag: 0n }))
  const flags = (on?: boolean): number => on === true ? EP_AUDIT : 0
  for (const [ep, on] of [[A, audit.a], [B, audit.b]] as const) {
    const k = Buffer.alloc(4)
    k.writeUInt32LE(ep.ifindex, 0)
    rig.maps.endpoints.set(k, encodeEndpoint(Buffer.alloc(SIZE.endpoint), { identity: ep.identity, ipv4: ep.ip, endpointId: ep.id, flags: flags(on) }))
    rig.maps.ipcache.set(encodeIpcacheKey(Buffer.alloc(SIZE.ipcacheKey), `${ep.ip}/32`), encodeIpcacheValue(Buffer.alloc(SIZE.ipcacheValue), { identity: ep.identity, endpointId: ep.id, flags: flags(on) }))
  }
  rig.maps.ipcache.set(encodeIpcacheKey(Buffer.alloc(SIZE.ipcacheKey), '0.0.0.0/0'), encodeIpcacheValue(Buffer.alloc(SIZE.ipcacheValue), { identity: WORLD, endpointId: 0 }))
  for (const [k, v] of compilePolicy(kernel)) rig.maps.policy.set(Buffer.from(k, 'latin1'), Buffer.from(v, 'latin1'))
}

function delta (before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {}
  for (const r of REASONS) if (after[r] !== before[r]) out[r] = after[r] - before[r]
  return out
}

t.test('audit mode in the kernel', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const rig = await openTestRunRig('/sys/fs/bpf/wdo-audit-packets')
  t.teardown(() => rig.close())
  const run = (prog: 'from_workload' | 'to_workload', frame: Buffer, ingressIfindex?: number) => {
    const c0 = rig.counters()
    rig.events()
    const r = rig.run(prog, { frame, ingressIfindex })
    return { ...r, counted: delta(c0, rig.counters()), events: rig.events() }
  }
  const ct = (saddr: string, daddr: string, dport: number) => {
    const v = rig.maps.ct.get(encodeCtKey(Buffer.alloc(SIZE.ctKey), { saddr, daddr, sport: 40000, dport, proto: PROTO_TCP }))
    return v === undefined ? undefined : decodeCtEntry(v)
  }
  // A may send to the world on 443 only (egress enforced); B admits A on 8080 only
  const kernel = [entry(A.id, OUT, WORLD, PROTO_TCP, 443, 'allow'), entry(A.id, OUT, B.identity, PROTO_TCP, 8080, 'allow'),
    entry(A.id, OUT, WORLD, PROTO_TCP, 22, 'deny'), entry(A.id, IN, 0, 0, 0, 'allow'),
    entry(B.id, IN, A.identity, PROTO_TCP, 8080, 'allow'), entry(B.id, OUT, 0, 0, 0, 'allow')]

  t.test('the source audits: its egress default deny passes, reported and counted as audit', async (t) => {
    setup(rig, kernel, { a: true })
    const r = run('from_workload', packet({ saddr: A.ip, daddr: WORLD_IP, proto: PROTO_TCP, sport: 40000, dport: 80 }))
    t.equal(r.retval, TC_ACT_OK, 'let through')
    t.strictSame(r.counted, { audit_policy: 1 }, 'an audit counter, no drop counter, no new_allowed')
    t.match(r.events, [{ verdict: VERDICT.AUDIT, reason: REASONS.indexOf('drop_policy'), endpointId: A.id, direction: OUT, dport: 80 }])
    t.equal(r.events.length, 1)
    t.equal(((ct(A.ip, WORLD_IP, 80)?.flags ?? 0) & CT_AUDIT), CT_AUDIT, 'tracked as audited')
    const d = run('from_workload', packet({ saddr: A.ip, daddr: WORLD_IP, proto: PROTO_TCP, sport: 40000, dport: 22 }))
    t.equal(d.retval, TC_ACT_OK, 'a deny entry is audited too')
    t.strictSame(d.counted, { audit_policy_deny: 1 })
    t.match(d.events, [{ verdict: VERDICT.AUDIT, reason: REASONS.indexOf('drop_policy_deny') }])
  })

  t.test('enforcing (flag off): the same packets are dropped', async (t) => {
    setup(rig, kernel, {})
    const r = run('from_workload', packet({ saddr: A.ip, daddr: WORLD_IP, proto: PROTO_TCP, sport: 40000, dport: 80 }))
    t.equal(r.retval, TC_ACT_SHOT)
    t.strictSame(r.counted, { drop_policy: 1 })
    t.match(r.events, [{ verdict: VERDICT.DENY }])
  })

  t.test('the destination audits: its ingress passes; the source\'s own policy still applies', async (t) => {
    setup(rig, [...kernel, entry(A.id, OUT, B.identity, PROTO_TCP, 9090, 'allow')], { b: true })
    const r = run('from_workload', packet({ saddr: A.ip, daddr: B.ip, proto: PROTO_TCP, sport: 40000, dport: 9090 }))
    t.equal(r.retval, TC_ACT_OK, 'B\'s ingress would drop 9090: audited')
    t.match(r.events, [{ verdict: VERDICT.AUDIT, reason: REASONS.indexOf('drop_policy'), endpointId: B.id, direction: IN }])
    const egress = run('from_workload', packet({ saddr: A.ip, daddr: B.ip, proto: PROTO_TCP, sport: 40000, dport: 7070 }))
    t.equal(egress.retval, TC_ACT_SHOT, 'A does not audit: its egress drop stands')
    t.match(egress.events, [{ verdict: VERDICT.DENY, endpointId: A.id, direction: OUT }])
  })

  t.test('to_workload: an auditing endpoint\'s ingress from a forwarded packet', async (t) => {
    setup(rig, kernel, { b: true })
    rig.maps.endpoints.delete(Buffer.from([1, 0, 0, 0]))
    const k = Buffer.alloc(4)
    k.writeUInt32LE(1, 0)
    rig.maps.endpoints.set(k, encodeEndpoint(Buffer.alloc(SIZE.endpoint), { identity: B.identity, ipv4: B.ip, endpointId: B.id, flags: EP_AUDIT }))
    const r = run('to_workload', packet({ saddr: WORLD_IP, daddr: B.ip, proto: PROTO_TCP, sport: 40000, dport: 22 }), 5)
    t.equal(r.retval, TC_ACT_OK)
    t.strictSame(r.counted, { audit_policy: 1 })
    t.match(r.events, [{ verdict: VERDICT.AUDIT, reason: REASONS.indexOf('drop_policy'), endpointId: B.id, direction: IN, srcIdentity: WORLD }])
    t.equal(((ct(WORLD_IP, B.ip, 22)?.flags ?? 0) & CT_AUDIT), CT_AUDIT)
  })
})
