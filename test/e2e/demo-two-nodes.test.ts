// Needs root (namespaces, tc eBPF, etcd); CI runs as root.
// `warden demo --nodes 2`: the seed's checks across two nodes sharing identities through etcd,
// and node a's access log naming the client pod of node b.
import t from 'tap'
import { runTwoNodeDemo, teardownTwoNodes, TWO_NODE_DEMO } from '../../demo/two-nodes.js'

t.teardown(async () => { await teardownTwoNodes() })

t.test('the two-node demo passes every check', async (t) => {
  const lines: string[] = []
  const { results, ok } = await runTwoNodeDemo(TWO_NODE_DEMO, { print: (s) => lines.push(s) })
  for (const r of results) t.ok(r.pass, `${r.name}: expected ${r.expected}, observed ${r.observed}`)
  t.ok(ok, 'the demo reports success')
  t.match(lines.join('\n'), /node a's access log, the request from node b/, 'it prints node a\'s access-log line')
})
