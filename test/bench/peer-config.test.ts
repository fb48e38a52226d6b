// The peers' configs are generated from the same policy as warden's: checks that HAProxy and nginx,
// started from them on loopback, allow and deny exactly what the policy says (Cilium semantics:
// full match, case-sensitive, query string included, 403 "Access denied\r\n").
// Needs /usr/sbin/haproxy and /usr/sbin/nginx (scripts/setup.sh installs them); no root needed.
import t from 'tap'
import { createServer } from 'node:http'
import { connect, createServer as netServer } from 'node:net'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Proc, waitForTcp } from '../../bench/procs.js'
import { haproxyConfig, nginxConfig } from '../../bench/peer-config.js'
import { classifyPattern, rulesFromManifests, rulesFromSnapshot, type BenchEndpoint, type PeerPolicy } from '../../bench/peer-rules.js'
import { benchEndpoints, policyFiles, REQUESTS, SCALE_IDENTITIES } from '../../bench/workloads.js'
import { labAddresses } from '../../bench/lab-topology.js'
import type { CompiledHttpRule, Endpoint, HttpPolicy, L7PortTable, Snapshot } from '../../policy-store/src/types.js'
import { l7Key } from '../../policy-store/src/types.js'

async function freePort (): Promise<number> {
  return await new Promise((resolve) => {
    const s = netServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })
}

/** Raw HTTP/1.1 over a socket: node:http would upper-case the method. */
async function send (port: number, method: string, path: string): Promise<{ status: number, body: string, type: string }> {
  return await new Promise((resolve, reject) => {
    const sock = connect({ host: '127.0.0.1', port }, () => {
      // write, not end: a half-closed client makes nginx abandon the request (499)
      sock.write(`${method} ${path} HTTP/1.1\r\nHost: billing\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`)
    })
    let raw = ''
    sock.setEncoding('latin1').on('data', (c: string) => { raw += c }).on('error', reject).on('close', () => {
      const [head, ...rest] = raw.split('\r\n\r\n')
      const lines = head.split('\r\n')
      const type = lines.find((l) => /^content-type:/i.test(l))?.replace(/^content-type:\s*/i, '') ?? ''
      resolve({ status: Number(lines[0].split(' ')[1]), body: rest.join('\r\n\r\n'), type })
    })
  })
}

t.test('the billing seed gives one rule for the lab: checkout may POST /api/v1/charge', async (t) => {
  const lab = labAddresses(0)
  const p = rulesFromManifests(Object.values(policyFiles('l7')), benchEndpoints(lab, 'l7'), 'billing-service', 8080)
  t.strictSame(p.rules, [{ group: 'id0', sources: [lab.clientIp], method: 'POST', path: '/api/v1/charge' }])
  const l4 = rulesFromManifests(Object.values(policyFiles('l4')), benchEndpoints(lab, 'l4'), 'billing-service', 8080)
  t.strictSame(l4.rules, [{ group: 'id0', sources: [lab.clientIp], method: null, path: null }])
})

t.test('the scale policy: 1,000 rules over 100 identities, the client is the last one', async (t) => {
  const lab = labAddresses(99)
  const p = rulesFromManifests(Object.values(policyFiles('scale')), benchEndpoints(lab, 'scale'), 'billing-service', 8080)
  t.equal(p.rules.length, 1000)
  t.equal(new Set(p.rules.map((r) => r.group)).size, SCALE_IDENTITIES)
  const last = p.rules[p.rules.length - 1]
  t.strictSame(last.sources, [lab.clientIp])
  t.equal(last.method, REQUESTS.scale.method)
  t.match(REQUESTS.scale.path, new RegExp(`^${last.path ?? ''}$`))
})

t.test('unsupported policy fields are refused, not dropped', async (t) => {
  const eps: BenchEndpoint[] = [{ name: 's', labels: { app: 's' }, ipv4: '10.0.0.1', interface: 'x' }]
  const text = 'apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {matchLabels: {app: s}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: c}}]\n    toPorts: [{ports: [{port: "80"}], rules: {http: [{method: GET, headers: ["X-A b"]}]}}]\n'
  eps.push({ name: 'c', labels: { app: 'c' }, ipv4: '10.0.0.2', interface: 'y' })
  t.throws(() => rulesFromManifests([text], eps, 's', 80), { code: 'WARDEN_ERR_BENCH_PEER_RULES' })
})

t.test('patterns: literal, prefix, regex', async (t) => {
  t.strictSame(classifyPattern('/api/v1/charge'), { kind: 'exact', value: '/api/v1/charge' })
  t.strictSame(classifyPattern('/api/v1/invoices/.*'), { kind: 'prefix', value: '/api/v1/invoices/' })
  t.strictSame(classifyPattern('GET|POST'), { kind: 'regex', value: 'GET|POST' })
  t.strictSame(classifyPattern('/a.b/.*'), { kind: 'regex', value: '/a.b/.*' })
})

t.test('rules from a store snapshot (the contract types)', async (t) => {
  const matcher = (source: string): CompiledHttpRule['method'] => ({ source, test: (v: string) => v === source })
  const ref = { file: 'p.yaml', line: 1, kind: 'CiliumNetworkPolicy' as const, policy: 'default/p', spec: 0, section: 'ingress' as const, index: 0 }
  const ep = (id: number, name: string, identity: number, ipv4: string): Endpoint => ({ id, name, namespace: 'default', labels: {}, identityLabels: [], identity, ipv4, interface: `if${id}`, ports: [], line: 1 })
  const policy: HttpPolicy = { allowAll: false, rules: [{ method: matcher('POST'), path: matcher('/api/v1/charge'), host: null, headers: [], rule: ref, httpIndex: 0 }] }
  const table: L7PortTable<HttpPolicy> = { endpointId: 1, direction: 0, protocol: 6, port: 8080, endPort: 8080, byIdentity: new Map([[300, policy]]), anyIdentity: null }
  const snap: Snapshot = {
    version: 1, createdAt: 0, identities: new Map(), ipcache: [], kernel: [], dns: new Map(), fqdnSelectors: [],
    endpoints: [ep(1, 'billing-service', 256, '10.0.0.1'), ep(2, 'checkout-a', 300, '10.0.0.2'), ep(3, 'checkout-b', 300, '10.0.0.3')],
    http: new Map([[l7Key(1, 0, 8080), table]])
  }
  t.strictSame(rulesFromSnapshot(snap, 'billing-service', 8080).rules, [{ group: 'id300', sources: ['10.0.0.2', '10.0.0.3'], method: 'POST', path: '/api/v1/charge' }])
  t.throws(() => rulesFromSnapshot(snap, 'billing-service', 9090), { code: 'WARDEN_ERR_BENCH_PEER_RULES' })
})

t.test('HAProxy and nginx enforce the generated rules like Cilium', async (t) => {
  const upstream = createServer((req, res) => { res.end(`ok ${req.method ?? ''} ${req.url ?? ''}`) })
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { upstream.closeAllConnections(); upstream.close() })
  const upstreamPort = (upstream.address() as { port: number }).port
  const policy: PeerPolicy = {
    port: upstreamPort,
    rules: [
      { group: 'id0', sources: ['127.0.0.1'], method: 'POST', path: '/api/v1/charge' },
      { group: 'id0', sources: ['127.0.0.1'], method: 'GET', path: '/api/v1/invoices/.*' },
      { group: 'id1', sources: ['127.0.0.2'], method: 'GET', path: '/healthz' }
    ]
  }
  const dir = t.testdir({})
  for (const kind of ['haproxy', 'nginx'] as const) {
    const port = await freePort()
    const where = { listenIp: '127.0.0.1', listenPort: port, upstreamIp: '127.0.0.1', upstreamPort, stateDir: dir }
    const conf = join(dir, `${kind}.conf`)
    writeFileSync(conf, kind === 'haproxy' ? haproxyConfig(policy, where) : nginxConfig(policy, where))
    const proc = new Proc(kind === 'haproxy' ? ['haproxy', '-db', '-f', conf] : ['nginx', '-c', conf])
    t.teardown(async () => { await proc.stop() })
    await waitForTcp('127.0.0.1', port, 10_000, proc)
    const cases: [string, string, number][] = [
      ['POST', '/api/v1/charge', 200],
      ['GET', '/api/v1/invoices/42', 200],
      ['POST', '/api/v1//charge', 200], // merged slashes, as Cilium's path normalisation
      ['POST', '/api/v1/refund', 403],
      ['GET', '/api/v1/charge', 403], // method mismatch
      // case-sensitive method (nginx's parser rejects lower-case methods before any rule: 400)
      ['post', '/api/v1/charge', kind === 'nginx' ? 400 : 403],
      ['POST', '/API/v1/charge', 403], // case-sensitive path
      ['POST', '/api/v1/charge?x=1', 403], // the query string is part of the matched path
      ['POST', '/api/v1/chargeX', 403], // anchored
      ['GET', '/healthz', 403] // another identity's rule
    ]
    for (const [method, path, want] of cases) {
      const r = await send(port, method, path)
      t.equal(r.status, want, `${kind}: ${method} ${path}`)
      if (want === 400) {
        t.notMatch(r.body, /^ok /, `${kind}: did not reach the upstream`)
      } else if (want === 403) {
        t.equal(r.body, 'Access denied\r\n', `${kind}: 403 body`)
        t.match(r.type, /^text\/plain/, `${kind}: 403 content-type`)
      } else {
        t.match(r.body, /^ok /, `${kind}: reached the upstream`)
      }
    }
  }
})
