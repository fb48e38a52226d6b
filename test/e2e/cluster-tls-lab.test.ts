// Needs root (namespaces, tc eBPF, a bpffs mount), `etcd`, `etcdctl` and `openssl`; CI runs as root.
// A cluster lab whose etcd serves TLS only, requires a client certificate and has authentication
// on (`etcd: {tls: true, auth: true}` in the cluster file): the lab writes the agents'
// etcd.config, each node's agent joins with `--kvstore etcd --kvstore-opt etcd.config=FILE`, and
// the seed's billing policy is enforced at node a for clients on node b, with the identities the
// agents share through that etcd -- also after etcd is restored from an empty data directory
// (the lab sets its users up again; the agents authenticate anew and republish).
// Own names: netns wdtl-, underlay 198.19.238.0/24, pods 198.19.239.0/24, etcd 23844,
// ports 17910-17911, route table 3010, work directory /run/warden-test-wdtl.
import t from 'tap'
import { cpSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs'
import { execFile } from 'node:child_process'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { bpffsRoot, clusterDown, clusterUp, etcdConfigFile, kvstoreArgs, parseClusterSpec, podNs, restartEtcd } from '../../lab/cluster.js'
import { NodeAgent } from '../../lab/cluster-agents.js'
import { startBilling, stop, type Started } from '../../demo/services.js'
import { repoRoot } from '../../demo/session.js'
import { openIpcacheReader } from '../../redirect-bpf/src/index.js'
import { poll } from '../helpers/poll.js'

const spec = parseClusterSpec(`
prefix: wdtl-
workDir: /run/warden-test-wdtl
underlay: 198.19.238.0/24
etcd: {ip: 198.19.238.2, clientPort: 23844, peerPort: 23845, tls: true, auth: true}
nodes:
  - name: a
    ip: 198.19.238.11
    podCIDR: 198.19.239.0/25
    endpoints:
      - {name: billing-service, labels: {app: billing-service, class: sensitive}, ipv4: 198.19.239.10, interface: lxc-billing}
  - name: b
    ip: 198.19.238.12
    podCIDR: 198.19.239.128/25
    endpoints:
      - {name: checkout-service, labels: {app: checkout-service}, ipv4: 198.19.239.140, interface: lxc-checkout}
      - {name: auditing-service, labels: {app: auditing-service}, ipv4: 198.19.239.141, interface: lxc-auditing}
`)

const policies = mkdtempSync(join(tmpdir(), 'wdtl-policies-'))
cpSync(join(repoRoot(), 'demo', 'policies', 'billing-policy.yaml'), join(policies, 'billing-policy.yaml'))

const agents = spec.nodes.map((n) => new NodeAgent(spec, n.name, {
  policies,
  args: ['--proxy-port', '17910', '--dns-proxy-port', '17911', '--route-table', '3010',
    ...kvstoreArgs(spec), '--node-name', n.name, '--node-ip', n.ip, '--pod-cidr', n.podCidr, '--kvstore-lease-ttl', '3']
}))
let billing: Started | undefined

t.teardown(async () => {
  for (const a of agents) await a.stop()
  if (billing !== undefined) await stop(billing)
  await clusterDown(spec)
  rmSync(policies, { recursive: true, force: true })
})

async function curl (from: string, args: string[]): Promise<string> {
  return await new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', podNs(spec, 'b', from), 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--connect-timeout', '2', '--max-time', '4', ...args],
      { timeout: 10_000 }, (err, stdout) => {
        const code = (err as { code?: unknown } | null)?.code
        resolve(code === 28 ? 'timeout' : String(stdout).trim())
      })
  })
}
const charge = async (from: string): Promise<string> => await curl(from, ['-X', 'POST', 'http://billing-service:8080/api/v1/charge'])
const invoices = async (from: string): Promise<string> => await curl(from, ['http://billing-service:8080/api/v1/invoices/123'])

async function until<T> (what: () => Promise<T> | T, ok: (v: T) => boolean, ms = 20_000): Promise<T> {
  return await poll(what, ok, ms, 200)
}

function identityAt (node: string, ip: string): number {
  const r = openIpcacheReader(join(bpffsRoot(spec), node))
  try { return r.lookupIdentity(ip) } finally { r.close() }
}

t.test('a cluster lab on a TLS etcd with a client certificate and a password', { skip: process.getuid?.() !== 0 ? 'needs root' : false }, async (t) => {
  await clusterDown(spec)
  await clusterUp(spec)
  const config = readFileSync(etcdConfigFile(spec), 'utf8')
  t.match(config, /^endpoints:\n {2}- https:\/\/198\.19\.238\.2:23844\n/, 'the lab wrote the agents\' etcd.config with the https endpoint')
  t.match(config, /trusted-ca-file: .*\ncert-file: .*\nkey-file: .*\nusername: warden\npassword: \S+/, 'with the CA, the client certificate and the user')
  t.equal(statSync(etcdConfigFile(spec)).mode & 0o777, 0o600, 'readable by root only')
  const password = /password: (\S+)/.exec(config)?.[1] ?? ''

  billing = startBilling(spec.workDir, podNs(spec, 'a', 'billing-service'))
  for (const a of agents) await a.start()
  t.equal(await until(async () => await charge('checkout-service'), (v) => v === '404'), '404', 'checkout (node b) may POST a charge to billing (node a)')
  t.equal(await invoices('checkout-service'), '403', 'checkout may not GET invoices: 403 from node a\'s proxy')
  t.equal(await invoices('auditing-service'), '404', 'auditing may GET invoices')
  t.equal(await charge('auditing-service'), '403', 'auditing may not POST a charge')
  const checkout = identityAt('b', '198.19.239.140')
  t.equal(identityAt('a', '198.19.239.140'), checkout, 'node a knows checkout by the identity node b gave it')

  for (const a of agents) t.notOk(/WARDEN_ERR_KVSTORE_(AUTH|TLS)/.test(a.log()), `node ${a.node}: never refused`)

  // etcd restored empty: the lab creates its users again; the agents log in anew and republish.
  // Until the users are back, a new etcd has authentication off: an agent that asks then is told
  // so (auth-not-enabled), and retries.
  const from = agents.map((a) => a.log().length)
  await restartEtcd(spec, true)
  for (const [i, a] of agents.entries()) t.ok(await until(() => /kvstore reconnected: state relisted/.test(a.log().slice(from[i])), (v) => v), `node ${a.node}: reconnected after the empty restore`)
  t.equal(await until(async () => await charge('checkout-service'), (v) => v === '404'), '404', 'still enforced with the shared identities')
  t.equal(await charge('auditing-service'), '403')
  for (const [i, a] of agents.entries()) {
    t.notOk(a.log().includes(password), `node ${a.node}: the password is in no log line`)
    const refusals = a.log().slice(from[i]).split('\n').filter((l) => /WARDEN_ERR_KVSTORE_(AUTH|TLS)/.test(l))
    t.ok(refusals.every((l) => l.includes('"reason":"auth-not-enabled"')), `node ${a.node}: refused at most while the restored etcd had no users: ${refusals.join(' | ')}`)
  }
})
