// Needs root and the real kernel (namespaces, tc eBPF, bpf_sk_assign); CI runs as root.
// `warden run --http-workers 2`: `warden status` lists both HTTP proxies with the policy version
// each enforces, and after a policy edit (one of the HTTP rules, then one that adds an L4-only
// rule) both report the newly compiled version; /metrics has the same per worker. A worker stuck on an old version is shown degraded in test/agent/enforced-versions.test.ts
// (a fake clock; a real worker cannot be made to hang from outside).
// Its own lab: datapath lab 105 (netns wdp105-*, 198.18.121.0/24, table 2205, ports 17050-17052),
// the agent's files and API socket in a temp dir.
import t from 'tap'
import { get } from 'node:http'
import { agentLab, curlStatus, startHttpServer, type AgentLab, type Status } from '../helpers/agent-lab.js'
import { isRoot } from '../helpers/lab-fixture.js'
import { poll } from '../helpers/poll.js'
import { runCli } from '../helpers/cli.js'

const policy = (path: string, extra = ''): string => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-http, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET, path: "${path}"}]}}]
${extra}`

// an L4-only rule: new kernel entries, no new HTTP rule
const L4_RULE = `    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "9090", protocol: TCP}]}]
`

/** Every HTTP proxy running at the compiled version, and the node healthy. */
const converged = (s: { json: Status | null }): boolean => s.json !== null && s.json.healthy &&
  s.json.http.workers.length === 2 && s.json.http.workers.every((w) => w.running && w.policyVersion === s.json?.policy.compiled)

async function scrape (port: number): Promise<string> {
  return await new Promise((resolve, reject) => {
    get(`http://127.0.0.1:${port}/metrics`, (res) => { let b = ''; res.on('data', (d) => { b += String(d) }); res.on('end', () => resolve(b)) }).on('error', reject)
  })
}

t.test('warden status shows every HTTP proxy worker at the compiled policy version', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab: AgentLab = await agentLab(t, 105, ['client', 'server'], { 'server.yaml': policy('/.*') }, ['--http-workers', '2'])
  await startHttpServer(lab, lab.ns('server'), 8080)
  const url = `http://${lab.ip('server')}:8080/v1/x`

  const first = await poll(lab.status, converged)
  t.equal(first.code, 0, 'healthy: exit 0')
  const v1 = first.json?.policy.compiled ?? -1
  t.strictSame(first.json?.http.workers.map((w) => [w.worker, w.running, w.policyVersion, w.lagging]), [[0, true, v1, false], [1, true, v1, false]],
    '--json: the main thread\'s proxy and the worker thread, both at the compiled version')
  t.equal(first.json?.policy.httpProxy, v1)
  const text = await runCli(['status', '--api-socket', lab.sock])
  t.match(text.out, new RegExp(`worker 0 \\(main thread\\): running, policy version ${v1}\\n {2}worker 1: running, policy version ${v1}\\n`), 'the table lists both')
  t.equal(await curlStatus(lab.ns('client'), url), '200', 'the proxies are in the path: GET /v1/x allowed')

  // an edit of the HTTP rules: the workers get a new snapshot
  lab.writePolicy('server.yaml', policy('/v2/.*'))
  const second = await poll(lab.status, (s) => converged(s) && (s.json?.policy.compiled ?? 0) > v1)
  const v2 = second.json?.policy.compiled ?? -1
  t.ok(v2 > v1, `a new version compiled (${v1} -> ${v2})`)
  t.strictSame(second.json?.http.workers.map((w) => [w.worker, w.running, w.policyVersion]), [[0, true, v2], [1, true, v2]], 'both workers report the new version')
  t.equal(second.code, 0, 'healthy: exit 0')
  const denied = await Promise.all(Array.from({ length: 6 }, async () => await curlStatus(lab.ns('client'), url)))
  t.strictSame(denied, Array(6).fill('403'), 'and enforce it: GET /v1/x denied on every connection, whichever proxy took it')

  // an edit that adds no HTTP rule still moves every worker to the new version
  lab.writePolicy('server.yaml', policy('/v2/.*', L4_RULE))
  const third = await poll(lab.status, (s) => converged(s) && (s.json?.policy.compiled ?? 0) > v2)
  const v3 = third.json?.policy.compiled ?? -1
  t.strictSame(third.json?.http.workers.map((w) => [w.worker, w.running, w.policyVersion]), [[0, true, v3], [1, true, v3]], `an L4-only edit: both at ${v3} too`)

  const m = await scrape(lab.metricsPort)
  t.match(m, new RegExp(`^# TYPE warden_http_worker_policy_version gauge\\nwarden_http_worker_policy_version\\{worker="0"\\} ${v3}\\nwarden_http_worker_policy_version\\{worker="1"\\} ${v3}$`, 'm'), 'a metric per worker: its policy version')
  t.match(m, /^warden_http_worker_running\{worker="1"\} 1$/m, 'running')
  t.match(m, /^warden_http_worker_policy_behind_seconds\{worker="1"\} 0$/m, 'not behind')
})
