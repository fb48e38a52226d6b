// Other nodes' ipcache entries by prefix: a node address wins over a pod claiming it, then the
// first claim; each flush names exactly the prefixes whose winner changed, from the previous list.
import t from 'tap'
import { RemoteIpcache } from '../../cluster/src/remote-ipcache.js'
import { RESERVED, type IpcacheEntry } from '../../policy-store/src/index.js'

const e = (prefix: string, identity: number): IpcacheEntry => ({ prefix, identity, endpointId: 0 })
const show = (l: readonly IpcacheEntry[]): string[] => l.map((x) => `${x.prefix}=${x.identity}`).sort()

t.test('winners and the changes between flushes', async (t) => {
  const r = new RemoteIpcache()
  const start = r.current
  const pod = e('10.0.0.5/32', 5000)
  r.replace('ip/a', false, [], [pod])
  r.replace('ip/b', false, [], [e('10.0.0.6/32', 5001)])
  const f1 = r.flush()
  t.ok(f1)
  t.equal(f1?.changes.from, start, 'chained from the previous list')
  t.strictSame(show(f1?.ipcache ?? []), ['10.0.0.5/32=5000', '10.0.0.6/32=5001'])

  // a node record claiming the pod's address wins over it
  const node = e('10.0.0.5/32', RESERVED.REMOTE_NODE)
  r.replace('nodes/x', true, [], [node])
  const f2 = r.flush()
  t.equal(f2?.changes.from, f1?.ipcache)
  t.strictSame(f2?.changes.changed, [{ prefix: '10.0.0.5/32', entry: node }])
  // a second pod claim for the same address changes nothing
  r.replace('ip/c', false, [], [e('10.0.0.5/32', 7000)])
  t.equal(r.flush(), undefined, 'no winner changed')
  // the node goes: the first pod claim is back
  r.replace('nodes/x', true, [node], [])
  t.strictSame(r.flush()?.changes.changed, [{ prefix: '10.0.0.5/32', entry: pod }])
  // both pods go, one of them changes its address in the same flush
  r.replace('ip/a', false, [pod], [])
  r.replace('ip/c', false, [e('10.0.0.5/32', 7000)], [])
  r.replace('ip/b', false, [e('10.0.0.6/32', 5001)], [e('10.0.0.7/32', 5001)])
  const f3 = r.flush()
  t.strictSame(f3?.changes.changed.map((c) => [c.prefix, c.entry?.identity ?? null]).sort(), [['10.0.0.5/32', null], ['10.0.0.6/32', null], ['10.0.0.7/32', 5001]])
  t.strictSame(show(f3?.ipcache ?? []), ['10.0.0.7/32=5001'])
})
