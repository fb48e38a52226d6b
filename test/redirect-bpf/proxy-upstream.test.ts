// The proxies' upstream flows, packet by packet with BPF_PROG_TEST_RUN (nothing attached): a
// flow a proxy socket opens (mark 0x400) is tracked as a proxy upstream wherever it leaves (an
// endpoint's veth or an uplink); its replies, addressed to a workload, are marked for local
// delivery (the proxy's socket) and never passed on to the workload; a packet entering with the
// proxy's own direction of the tuple is dropped. Needs root; pins under /sys/fs/bpf/wdc-packets.
import t from 'tap'
import { isRoot } from '../helpers/lab-fixture.js'
import { openTestRunRig, TC_ACT_OK, TC_ACT_SHOT, type TestRunRig, type RunInput } from '../helpers/prog-test-run.js'
import { packet, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN } from '../helpers/packets.js'
import {
  CT_FROM_HOST, CT_PROXY_UPSTREAM, decodeCtEntry, encodeConfig, encodeCtKey, encodeEndpoint, encodeIpcacheKey, encodeIpcacheValue, REASONS, SIZE
} from '../../redirect-bpf/src/layout.js'

const MARK_PROXY = 0x400
const MARK_TO_PROXY = 0x200
const MARK_MASK = 0xf00
/** A, the client, is an endpoint of this node; its veth is not where the tests run. */
const A = { id: 200, identity: 2000, ip: '198.19.142.10', ifindex: 7777 }
/** B, a server, is an endpoint of this node on ifindex 1 when a test says so. */
const B = { id: 201, identity: 2001, ip: '198.19.142.11', ifindex: 1 }
const REMOTE = '198.19.143.10'

function setup (rig: TestRunRig, bOnIfindex1: boolean): void {
  rig.clear()
  rig.maps.config.set(Buffer.alloc(4), encodeConfig(Buffer.alloc(SIZE.config), {
    proxyPort: 0, dnsProxyPort: 0, routeTable: 0, flags: 0, features: 0, progTag: 0n
  }))
  for (const ep of bOnIfindex1 ? [A, B] : [A]) {
    const k = Buffer.alloc(4)
    k.writeUInt32LE(ep.ifindex, 0)
    rig.maps.endpoints.set(k, encodeEndpoint(Buffer.alloc(SIZE.endpoint), { identity: ep.identity, ipv4: ep.ip, endpointId: ep.id }))
  }
  for (const [prefix, identity, endpointId] of [['0.0.0.0/0', 2, 0], [`${A.ip}/32`, A.identity, A.id], [`${B.ip}/32`, B.identity, B.id]] as const) {
    rig.maps.ipcache.set(encodeIpcacheKey(Buffer.alloc(SIZE.ipcacheKey), prefix), encodeIpcacheValue(Buffer.alloc(SIZE.ipcacheValue), { identity, endpointId }))
  }
}

t.test('proxy upstream flows', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const rig = await openTestRunRig('/sys/fs/bpf/wdc-packets')
  t.teardown(() => rig.close())

  const run = (prog: 'from_workload' | 'to_workload', input: RunInput): { retval: number, mark: number, counted: Record<string, number> } => {
    const before = rig.counters()
    const r = rig.run(prog, input)
    const after = rig.counters()
    const counted: Record<string, number> = {}
    for (const name of REASONS) if (after[name] !== before[name]) counted[name] = after[name] - before[name]
    rig.events()
    return { retval: r.retval, mark: r.mark, counted }
  }
  const ct = (k: { saddr: string, daddr: string, sport: number, dport: number, proto: number }): ReturnType<typeof decodeCtEntry> | undefined => {
    const v = rig.maps.ct.get(encodeCtKey(Buffer.alloc(SIZE.ctKey), k))
    return v === undefined ? undefined : decodeCtEntry(v)
  }

  for (const [proto, name] of [[PROTO_TCP, 'TCP'], [PROTO_UDP, 'UDP']] as const) {
    t.test(`${name}: leaving through an uplink (client A's address kept), the replies coming back there`, async (t) => {
      setup(rig, false) // ifindex 1 is the uplink
      const out = run('to_workload', { frame: packet({ saddr: A.ip, daddr: REMOTE, proto, sport: 41000, dport: 80, flags: TCP_SYN }), ifindex: 1, ingressIfindex: 0, mark: MARK_PROXY })
      t.equal(out.retval, TC_ACT_OK, 'the proxy\'s first packet leaves')
      const e = ct({ saddr: A.ip, daddr: REMOTE, sport: 41000, dport: 80, proto })
      t.equal(((e?.flags ?? 0) & (CT_PROXY_UPSTREAM | CT_FROM_HOST)), CT_PROXY_UPSTREAM | CT_FROM_HOST, 'tracked as a proxy upstream')
      t.equal(e?.srcIdentity, A.identity, 'with the client\'s identity')

      const back = run('from_workload', { frame: packet({ saddr: REMOTE, daddr: A.ip, proto, sport: 80, dport: 41000, flags: TCP_SYN | TCP_ACK }), ifindex: 1, ingressIfindex: 1 })
      t.equal(back.retval, TC_ACT_OK)
      t.equal(back.mark & MARK_MASK, MARK_TO_PROXY, 'the reply is delivered on this host (the proxy\'s socket), not forwarded to A')
      t.strictSame(back.counted, { ct_pass: 1 }, 'as a tracked flow, without a policy lookup')

      // workload A itself sending with the proxy's tuple (ifindex 1 now A's veth)
      const k = Buffer.alloc(4)
      k.writeUInt32LE(1, 0)
      rig.maps.endpoints.set(k, encodeEndpoint(Buffer.alloc(SIZE.endpoint), { identity: A.identity, ipv4: A.ip, endpointId: A.id }))
      const spoof = run('from_workload', { frame: packet({ saddr: A.ip, daddr: REMOTE, proto, sport: 41000, dport: 80, flags: TCP_ACK }), ifindex: 1, ingressIfindex: 1 })
      t.equal(spoof.retval, TC_ACT_SHOT, 'a workload sending with the proxy\'s direction of the tuple is dropped (it would join the proxy\'s connection unjudged)')
      t.strictSame(spoof.counted, { drop_spoofed: 1 })
    })
  }

  t.test('to a local endpoint: tracked on its veth; its replies go to the proxy', async (t) => {
    setup(rig, true) // ifindex 1 is B's veth
    const syn = run('to_workload', { frame: packet({ saddr: A.ip, daddr: B.ip, proto: PROTO_TCP, sport: 41001, dport: 8080, flags: TCP_SYN }), ifindex: 1, ingressIfindex: 0, mark: MARK_PROXY })
    t.equal(syn.retval, TC_ACT_OK)
    t.strictSame(syn.counted, { new_from_host: 1 }, 'allowed: the client\'s connection was judged when it entered')
    const ack = run('to_workload', { frame: packet({ saddr: A.ip, daddr: B.ip, proto: PROTO_TCP, sport: 41001, dport: 8080, flags: TCP_ACK }), ifindex: 1, ingressIfindex: 0, mark: MARK_PROXY })
    t.strictSame(ack.counted, {}, 'the proxy\'s later segments pass without conntrack')
    const back = run('from_workload', { frame: packet({ saddr: B.ip, daddr: A.ip, proto: PROTO_TCP, sport: 8080, dport: 41001, flags: TCP_ACK }), ifindex: 1, ingressIfindex: 1 })
    t.equal(back.mark & MARK_MASK, MARK_TO_PROXY, 'B\'s reply to A\'s address is delivered on this host, not to A')
  })

  t.test('a host process\'s flow (no proxy mark) is not a proxy upstream', async (t) => {
    setup(rig, true)
    run('to_workload', { frame: packet({ saddr: '198.19.142.1', daddr: B.ip, proto: PROTO_TCP, sport: 41002, dport: 8080, flags: TCP_SYN }), ifindex: 1, ingressIfindex: 0 })
    const e = ct({ saddr: '198.19.142.1', daddr: B.ip, sport: 41002, dport: 8080, proto: PROTO_TCP })
    t.equal(e?.flags, CT_FROM_HOST, 'tracked as from the host only')
    const back = run('from_workload', { frame: packet({ saddr: B.ip, daddr: '198.19.142.1', proto: PROTO_TCP, sport: 8080, dport: 41002, flags: TCP_ACK }), ifindex: 1, ingressIfindex: 1 })
    t.not(back.mark & MARK_MASK, MARK_TO_PROXY, 'its reply takes the normal path')
    t.strictSame(back.counted, { ct_pass: 1 })
  })
})
