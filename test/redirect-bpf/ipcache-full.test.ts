// A full kernel ipcache never stops an apply: the entries that do not fit are left out in a
// fixed order (learned addresses first, then other nodes' pods; this node's endpoints last),
// counted, and the policy and endpoint maps are written and new interfaces attached anyway.
// Needs root and eBPF (CI runs as root): namespaces wdp100-*, veths wdp100*, pins under
// /sys/fs/bpf/wdp100, route table 2200; all removed in teardown.
import t from 'tap'
import { createMapRef, objGet, RawMap } from 'bpf'
import { datapathLab, isRoot } from '../helpers/lab-fixture.js'
import { connect, startServer } from '../helpers/lab-net.js'
import { endpoint, entry, openEntries, snapshot, type EpSpec } from '../helpers/lab-snapshot.js'
import { IPCACHE_MIN_ENTRIES } from '../../redirect-bpf/src/index.js'
import type { Snapshot } from '../../policy-store/src/types.js'

const TCP = 6
const IN = 0
const OUT = 1
const MAX = IPCACHE_MIN_ENTRIES
const CIDR_ID = (1 << 24) + 7
const FQDN_ID = (1 << 24) + 8
const LEARNED = 50

function countEntries (path: string): number {
  const ref = createMapRef(objGet(path), { transfer: true })
  let n = 0
  try { for (const _ of new RawMap(ref).keys()) n++ } finally { ref.close() }
  return n
}

/** Other nodes' pods (identity 3000), a CIDR prefix of the policy, addresses learned from DNS. */
function extra (pods: number): Array<{ prefix: string, identity: number, learnedOnly?: true }> {
  return [
    ...Array.from({ length: pods }, (_, i) => ({ prefix: `10.100.${i >> 8}.${i & 255}/32`, identity: 3000 })),
    { prefix: '10.250.0.0/16', identity: CIDR_ID },
    ...Array.from({ length: LEARNED }, (_, i) => ({ prefix: `10.251.0.${i + 1}/32`, identity: FQDN_ID, learnedOnly: true as const }))
  ]
}

function withIdentities (s: Snapshot): Snapshot {
  return { ...s, identities: new Map([[CIDR_ID, ['cidr:10.250.0.0/16', 'reserved:world']], [FQDN_ID, ['cidr:10.251.0.1/32', 'fqdn:example.com', 'reserved:world']]]) }
}

t.test('a full ipcache leaves entries out in order and never stops an apply', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 100, ['a', 'b', 'c'])
  const [A, B, C] = [100, 101, 102]
  const [epA, epB, epC] = lab.eps as [EpSpec, EpSpec, EpSpec]
  lab.opts.ipcacheMaxEntries = MAX
  await lab.reopen()
  const pin = `${lab.opts.bpffs}/l7p_ipcache`
  for (const name of ['a', 'b']) {
    const s = await startServer(lab.ns(name), 'tcp', 8080, name)
    t.teardown(s.stop)
  }
  // b admits a (1000) and c (1002) on 8080; a admits anyone
  const base = [...openEntries(A), entry(B, IN, 1000, TCP, 8080, 'allow'), entry(B, IN, 1002, TCP, 8080, 'allow'), entry(B, OUT, 0, 0, 0, 'allow')]
  // the map is filled by other nodes' pods alone, then overflowed by the rest
  const pods = MAX
  const s1 = withIdentities(snapshot([epA, epB], base, extra(pods)))
  const wanted1 = s1.ipcache.length

  await t.test('the first apply holds what fits, in order', async (t) => {
    await lab.dp.apply(s1)
    t.equal(countEntries(pin), MAX, 'the ipcache is full')
    t.equal(lab.dp.counters().ipcache_left_out, wanted1 - MAX, 'what did not fit is counted')
    t.equal(lab.dp.lookupIdentity(lab.ip('a')), 1000, 'this node\'s endpoints are kept')
    t.equal(lab.dp.lookupIdentity('10.250.3.4'), CIDR_ID, 'the policy\'s CIDR prefix is kept')
    t.equal(lab.dp.lookupIdentity('10.251.0.1'), 2, 'an address learned from DNS is left out first (world)')
    t.match(await connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080), { ok: true }, 'a reaches b')
  })

  await t.test('a diff adding an endpoint attaches it and enforces its policy', async (t) => {
    // c may reach b only; a's ingress is open, so only c's own (attached) filter drops c -> a
    const kernel = [...base, entry(C, OUT, 1001, TCP, 8080, 'allow'), entry(C, IN, 0, 0, 0, 'allow')]
    const s2 = withIdentities(snapshot([epA, epB, epC], kernel, extra(pods)))
    const ipC = s2.ipcache.find((e) => e.endpointId === C)
    await lab.dp.apply(s2, {
      from: s1.version,
      to: s2.version,
      kernelAdded: kernel.filter((e) => e.endpointId === C),
      kernelRemoved: [],
      ipcacheAdded: ipC === undefined ? [] : [ipC],
      ipcacheRemoved: [],
      endpointsAdded: [endpoint(epC)],
      endpointsRemoved: []
    })
    t.equal(lab.dp.lookupIdentity(lab.ip('c')), 1002, 'the new endpoint\'s entry pushed a remote pod out')
    t.equal(countEntries(pin), MAX)
    t.equal(lab.dp.counters().ipcache_left_out, wanted1 + 1 - MAX)
    t.match(await connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080), { ok: true }, 'c reaches b: b knows c\'s identity')
    t.strictSame(await connect(lab.ns('c'), 'tcp', lab.ip('a'), 8080, 1000), { ok: false, error: 'timeout' }, 'c -> a is dropped by c\'s own filter')
  })

  await t.test('with room again, the entries left out come back', async (t) => {
    await lab.dp.apply(withIdentities(snapshot([epA, epB, epC], base, extra(pods - 1000))))
    t.equal(lab.dp.counters().ipcache_left_out, 0)
    t.equal(lab.dp.lookupIdentity('10.251.0.1'), FQDN_ID, 'the learned address is back')
  })
})
