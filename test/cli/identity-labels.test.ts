// `warden check` and `warden trace` count the same labels toward identities as the agent when
// given the agent's --identity-labels: a policy on pod-template-hash (a label Cilium's default
// list leaves out) matches only when the patterns include it.
import t from 'tap'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { runCli as run } from '../helpers/cli.js'


t.test('trace with and without the agent\'s identity label patterns', async (t) => {
  const dir = t.testdir({})
  const policies = join(dir, 'policies')
  mkdirSync(policies)
  writeFileSync(join(policies, 'b.yaml'), `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a, pod-template-hash: h1}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
  const endpoints = join(dir, 'endpoints.yaml')
  writeFileSync(endpoints, `endpoints:
  - {name: a, labels: {app: a, pod-template-hash: h1}, ipv4: 198.18.90.10, interface: wt-a}
  - {name: b, labels: {app: b}, ipv4: 198.18.90.11, interface: wt-b}
`)
  const trace = ['trace', '--policies', policies, '--endpoints', endpoints, '--from', 'a', '--to', 'b', '--port', '80', '--json']
  const byDefault = await run(trace)
  t.equal(byDefault.code, 0)
  t.match(JSON.parse(byDefault.out), { verdict: 'denied' }, 'by default pod-template-hash does not count: the selector never matches')
  // the default list's !pod-template-hash wins a tie with an inclusion of the same length (as in
  // Cilium): the agent would be given the list to use instead
  const included = await run([...trace, '--identity-labels', 'app pod-template-hash', '--identity-labels-replace'])
  t.equal(included.code, 0)
  t.match(JSON.parse(included.out), { verdict: 'allowed' }, 'with the patterns that include it, it matches')
  const checked = await run(['check', '--policies', policies, '--endpoints', endpoints, '--identity-labels', 'app pod-template-hash', '--identity-labels-replace'])
  t.equal(checked.code, 0)
  t.match(checked.out, /^ok: /)
  const bad = await run([...trace, '--identity-labels', 'app(('])
  t.equal(bad.code, 2, 'a pattern that does not parse is a usage error')
})
