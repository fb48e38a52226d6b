// Which upstream connections keep the client's address: all of them with an uplink, else only
// those to an endpoint of this node (whose veth sees the replies); the endpoints follow the snapshot.
import t from 'tap'
import { upstreamSource } from '../../agent/upstream-source.js'
import type { Snapshot } from '../../policy-store/src/types.js'

const snap = (...ips: string[]): Snapshot => ({ endpoints: ips.map((ipv4) => ({ ipv4 })) }) as unknown as Snapshot

t.test('with an uplink: always the client', async (t) => {
  const f = upstreamSource(true, () => snap())
  t.equal(f('10.0.0.2', { ip: '192.0.2.1', port: 80 }), '10.0.0.2')
})

t.test('without: the client for a local endpoint, the node otherwise', async (t) => {
  let current = snap('10.0.0.10')
  const f = upstreamSource(false, () => current)
  t.equal(f('10.0.0.2', { ip: '10.0.0.10', port: 8080 }), '10.0.0.2', 'a local endpoint')
  t.equal(f('10.0.0.2', { ip: '192.0.2.1', port: 80 }), undefined, 'anything else')
  current = snap('10.0.0.11')
  t.equal(f('10.0.0.2', { ip: '10.0.0.10', port: 8080 }), undefined, 'an endpoint removed by a new snapshot')
  t.equal(f('10.0.0.2', { ip: '10.0.0.11', port: 8080 }), '10.0.0.2', 'one added')
})
