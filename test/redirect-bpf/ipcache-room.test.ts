// Which entries a full ipcache holds (pure: encoded keys and values, no kernel).
import t from 'tap'
import { admitIpcache, learnedBy } from '../../redirect-bpf/src/ipcache-room.js'
import { encodeIpcacheKey, encodeIpcacheValue, SIZE } from '../../redirect-bpf/src/layout.js'

const LOCAL = 1 << 24
// 10.9.9.9 is there only because a DNS answer gave it; 10.1.2.0/24 is a rule's (not learnedOnly)
const learned = learnedBy([{ prefix: '10.9.9.9/32', identity: LOCAL + 2, endpointId: 0, learnedOnly: true }, { prefix: '10.1.2.0/24', identity: LOCAL + 3, endpointId: 0 }])

function enc (prefix: string, identity: number, endpointId = 0): [string, string] {
  return [encodeIpcacheKey(Buffer.alloc(SIZE.ipcacheKey), prefix).toString('latin1'),
    encodeIpcacheValue(Buffer.alloc(SIZE.ipcacheValue), { identity, endpointId }).toString('latin1')]
}
function prefixes (m: ReadonlyMap<string, string>): string[] {
  return [...m.keys()].map((k) => { const b = Buffer.from(k, 'latin1'); return `${b.subarray(4).join('.')}/${b.readUInt32LE(0)}` }).sort()
}

const world = enc('0.0.0.0/0', 2)
const ep = enc('10.0.0.5/32', 1000, 7)
const node = enc('192.0.2.9/32', 6)
const broad = enc('10.1.0.0/16', LOCAL + 1) // a CIDR rule
const except = enc('10.1.2.0/24', LOCAL + 3) // its except
const pod1 = enc('10.2.0.1/32', 3000)
const pod2 = enc('10.2.0.2/32', 3000)
const fqdn = enc('10.9.9.9/32', LOCAL + 2)

t.test('everything fits: the wanted map itself', async (t) => {
  const want = new Map([world, ep, pod1])
  const r = admitIpcache(want, 3, new Map(), learned)
  t.equal(r.keep, want)
  t.strictSame(r.leftOut, { local: 0, remoteNodes: 0, cidr: 0, remotePods: 0, fqdn: 0 })
})

t.test('learned addresses go first, then pods; CIDR prefixes and local entries stay', async (t) => {
  const want = new Map([fqdn, pod1, pod2, except, broad, node, ep, world])
  const r = admitIpcache(want, 6, new Map(), learned)
  t.strictSame(prefixes(r.keep), ['0.0.0.0/0', '10.0.0.5/32', '10.1.0.0/16', '10.1.2.0/24', '10.2.0.1/32', '192.0.2.9/32'])
  t.strictSame(r.leftOut, { local: 0, remoteNodes: 0, cidr: 0, remotePods: 1, fqdn: 1 })
})

t.test('an except is never left out while the prefix it is cut from stays', async (t) => {
  const want = new Map([broad, except, world])
  const r = admitIpcache(want, 2, new Map(), learned)
  t.strictSame(prefixes(r.keep), ['0.0.0.0/0', '10.1.2.0/24'])
  t.equal(r.leftOut.cidr, 1)
})

t.test('within the rank that is cut, what the kernel holds stays', async (t) => {
  const want = new Map([world, pod1, pod2])
  const r = admitIpcache(want, 2, new Map([world, pod2]), learned)
  t.strictSame(prefixes(r.keep), ['0.0.0.0/0', '10.2.0.2/32'])
})
