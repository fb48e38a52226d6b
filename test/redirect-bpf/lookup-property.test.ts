// The kernel's policy lookup against lookupKernel, the TypeScript mirror that `warden trace`
// uses: random kernel entries (with the compiler's invariants) and random packets run through
// from_workload with BPF_PROG_TEST_RUN; the program's verdict must be the mirror's.
// Needs root; pins under /sys/fs/bpf/wkt-property, removed in teardown.
import t from 'tap'
import fc from 'fast-check'
import { isRoot } from '../helpers/lab-fixture.js'
import { openTestRunRig, TC_ACT_OK, TC_ACT_SHOT, type TestRunRig } from '../helpers/prog-test-run.js'
import { ICMP_PORT_BASE } from '../../policy-store/src/types.js'
import { packet, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP } from '../helpers/packets.js'
import { compilePolicy } from '../../redirect-bpf/src/policy.js'
import { encodeConfig, encodeCtKey, encodeEndpoint, encodeIpcacheKey, encodeIpcacheValue, SIZE } from '../../redirect-bpf/src/layout.js'
import { lookupKernel } from '../../policy-store/src/index.js'
import type { Direction, KernelEntry, ProtocolNumber, Verdict } from '../../policy-store/src/types.js'

const EP = { id: 100, identity: 1000, ip: '198.18.41.10' }
/** Peers: identity -> an address the ipcache gives that identity (world by the /0 entry). */
const PEERS: ReadonlyArray<{ identity: number, ip: string }> = [
  { identity: 2, ip: '203.0.113.9' },
  { identity: 300, ip: '10.41.0.1' },
  { identity: 301, ip: '10.41.0.2' },
  { identity: 302, ip: '10.41.0.3' }
]
const IDENTITIES = [0, 2, 300, 301, 302]
const PROTOS: ProtocolNumber[] = [0, PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_ICMP] as ProtocolNumber[]
const VERDICTS: Verdict[] = ['allow', 'deny', 'redirect-http', 'redirect-dns']
/**
 * Ports are drawn near a few values so that ranges meet, nest and touch packets' ports; 256 |
 * type are the ports ICMP types are looked up by (echo reply 0, unreachable 3, echo 8, timestamp 13).
 */
const PORT_ANCHORS = [1, 53, 80, 443, 1024, 8080, 32768, 65535, 256, 259, 264, 269]

const portArb = fc.oneof(
  fc.integer({ min: 1, max: 65535 }),
  fc.tuple(fc.constantFrom(...PORT_ANCHORS), fc.integer({ min: -3, max: 3 })).map(([a, d]) => Math.min(65535, Math.max(1, a + d)))
)

const entryArb = fc.record({
  direction: fc.constantFrom<Direction>(0, 1),
  remoteIdentity: fc.constantFrom(...IDENTITIES),
  protocol: fc.constantFrom(...PROTOS),
  anyPort: fc.boolean(),
  port: portArb,
  span: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: 40000 })),
  verdict: fc.constantFrom(...VERDICTS)
}).map(({ direction, remoteIdentity, protocol, anyPort, port, span, verdict }): KernelEntry => {
  const any = protocol === 0 || anyPort // protocol ANY only with port ANY (types.ts)
  return {
    endpointId: EP.id, direction, remoteIdentity, protocol,
    port: any ? 0 : port, endPort: any ? 0 : Math.min(65535, port + span), verdict
  }
})

/**
 * Keep the compiler's invariant (resolve.ts): the entries of one (direction, identity, protocol)
 * level never overlap, so a first match and a longest-prefix match are the same entry.
 */
function disjoint (entries: KernelEntry[]): KernelEntry[] {
  const out: KernelEntry[] = []
  for (const e of entries) {
    const clash = out.some((o) => o.direction === e.direction && o.remoteIdentity === e.remoteIdentity && o.protocol === e.protocol &&
      (o.port === 0 || e.port === 0 ? o.port === e.port : o.port <= e.endPort && e.port <= o.endPort))
    if (!clash) out.push(e)
  }
  return out
}

const packetArb = fc.record({
  direction: fc.constantFrom<Direction>(0, 1),
  peer: fc.integer({ min: 0, max: PEERS.length - 1 }),
  proto: fc.constantFrom(PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_ICMP, 47),
  /** An entry's edge (index into the policy's ports) or any port. */
  pick: fc.nat(),
  edge: fc.integer({ min: -1, max: 1 }),
  port: fc.integer({ min: 1, max: 65535 }),
  useEdge: fc.boolean()
})

/** What from_workload must do under a verdict of the mirror (undefined: no entry). */
function expected (v: Verdict | undefined, proto: number): { retval: number, reason: string } {
  if (v === undefined) return { retval: TC_ACT_SHOT, reason: 'drop_policy' }
  if (v === 'deny') return { retval: TC_ACT_SHOT, reason: 'drop_policy_deny' }
  if (v === 'allow') return { retval: TC_ACT_OK, reason: 'new_allowed' }
  // a redirect: TCP and UDP go to a proxy socket, which a test run cannot assign (see
  // packets.test.ts), so they end in drop_no_socket; other protocols have no proxy
  return { retval: TC_ACT_SHOT, reason: proto === PROTO_TCP || proto === PROTO_UDP ? 'drop_no_socket' : 'drop_unsupported_l4' }
}

function load (rig: TestRunRig, kernel: KernelEntry[]): void {
  for (const k of [...rig.maps.policy.keys()]) rig.maps.policy.delete(k)
  for (const [k, v] of compilePolicy(kernel)) rig.maps.policy.set(Buffer.from(k, 'latin1'), Buffer.from(v, 'latin1'))
}

t.test('the program\'s verdict is lookupKernel\'s on random policies and packets', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const rig = await openTestRunRig('/sys/fs/bpf/wkt-property')
  t.teardown(() => rig.close())
  rig.clear()
  rig.maps.config.set(Buffer.alloc(4), encodeConfig(Buffer.alloc(SIZE.config), { proxyPort: 0, dnsProxyPort: 0, routeTable: 0, flags: 0, features: 0, progTag: 0n }))
  const ipc = (prefix: string, identity: number, endpointId: number): void => {
    rig.maps.ipcache.set(encodeIpcacheKey(Buffer.alloc(SIZE.ipcacheKey), prefix), encodeIpcacheValue(Buffer.alloc(SIZE.ipcacheValue), { identity, endpointId }))
  }
  ipc('0.0.0.0/0', 2, 0)
  ipc(`${EP.ip}/32`, EP.identity, EP.id)
  for (const p of PEERS) if (p.identity !== 2) ipc(`${p.ip}/32`, p.identity, 0)
  // egress: the endpoint sends on ifindex 1; ingress: the packet arrives on ifindex 1 as an uplink
  const ifKey = Buffer.alloc(4)
  ifKey.writeUInt32LE(1, 0)
  const epValue = encodeEndpoint(Buffer.alloc(SIZE.endpoint), { identity: EP.identity, ipv4: EP.ip, endpointId: EP.id })
  const ctKey = Buffer.alloc(SIZE.ctKey)
  let sport = 1024
  let runs = 0

  fc.assert(fc.property(fc.array(entryArb, { maxLength: 24 }), fc.array(packetArb, { minLength: 1, maxLength: 24 }), (raw, packets) => {
    const kernel = disjoint(raw)
    load(rig, kernel)
    const edges = [...new Set(kernel.flatMap((e) => e.port === 0 ? [] : [e.port, e.endPort]))]
    for (const p of packets) {
      const peer = PEERS[p.peer]
      const hasPorts = p.proto !== PROTO_ICMP && p.proto !== 47
      let dport = p.useEdge && edges.length > 0 ? edges[p.pick % edges.length] + p.edge : p.port
      dport = Math.min(65535, Math.max(1, dport))
      sport = sport >= 65000 ? 1024 : sport + 1
      const egress = p.direction === 1
      if (egress) rig.maps.endpoints.set(ifKey, epValue)
      else rig.maps.endpoints.delete(ifKey)
      const [saddr, daddr] = egress ? [EP.ip, peer.ip] : [peer.ip, EP.ip]
      const before = rig.counters()
      // ICMP: a type among echo reply/request, unreachable and timestamp, picked by the port
      const icmpType = [0, 8, 3, 13][dport % 4]
      const r = rig.run('from_workload', { frame: packet({ saddr, daddr, proto: p.proto, sport, dport, icmpId: sport, flags: p.proto === PROTO_ICMP ? icmpType : undefined }) })
      const after = rig.counters()
      const counted = Object.keys(after).filter((k) => after[k] !== before[k])
      // the program looks ICMP up by type (ICMP_PORT_BASE | type), other protocols without a
      // port: the mirror with port 0
      const lport = hasPorts ? dport : p.proto === PROTO_ICMP ? ICMP_PORT_BASE | icmpType : 0
      const v = lookupKernel(kernel, EP.id, p.direction, peer.identity, p.proto, lport)?.verdict
      const want = expected(v, p.proto)
      if (r.retval !== want.retval || counted.length !== 1 || counted[0] !== want.reason) {
        throw new Error(`mirror says ${v ?? 'no entry'} (${want.reason}), program returned ${r.retval} counting ${counted.join(',')} ` +
          `for ${egress ? 'egress' : 'ingress'} proto ${p.proto} port ${dport} peer ${peer.identity}`)
      }
      if (want.reason === 'new_allowed') {
        // forget the flow, so that a later packet with the same tuple is looked up again
        // (ICMP echo: the id as both ports; other ICMP types: their policy port as the
        // destination port; a protocol without ports: none)
        const echo = icmpType === 0 || icmpType === 8
        const [cs, cd] = hasPorts ? [sport, dport] : p.proto === PROTO_ICMP ? (echo ? [sport, sport] : [0, lport]) : [0, 0]
        encodeCtKey(ctKey, { saddr, daddr, sport: cs, dport: cd, proto: p.proto })
        if (!rig.maps.ct.delete(ctKey)) throw new Error(`allowed proto ${p.proto} port ${dport} but not tracked`)
      }
      runs++
    }
    rig.events() // drain the ring buffer
  }), { numRuns: 1000 })
  t.ok(runs > 1000, `${runs} packets agreed with the mirror`)
})
