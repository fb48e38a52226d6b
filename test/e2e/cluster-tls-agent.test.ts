// Needs root and the real kernel (namespaces, tc eBPF), and `etcd`, `etcdctl` and `openssl`; CI
// runs as root. `warden run --kvstore etcd --kvstore-opt etcd.config=FILE` against an etcd that
// serves TLS only, requires a client certificate and has authentication on: the agent publishes
// its pods and takes another node's into its kernel ipcache; restarted with a wrong password or a
// wrong CA it keeps enforcing the state it persisted, logs the reason with its own code, retries,
// and connects once the operator fixes etcd's side -- and no log line holds the password.
// Own lab names: netns/interfaces wdtk-, subnet 198.19.224.0/24 (node address 198.19.232.1),
// bpffs wdtk-agent, table 3000, ports 17900-17902, etcd 23842.
import t from 'tap'
import { writeFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { stringify } from 'yaml'
import { DemoSession, DEFAULT_DEMO, teardown, type DemoConfig } from '../../demo/session.js'
import { openIpcacheReader } from '../../redirect-bpf/src/index.js'
import { resolveKvstoreTarget, loadTlsMaterial } from '../../cluster/src/etcd-config.js'
import { formatIpcacheValue, formatNodeValue, ipcacheKey, nodeKey, parseIpcacheValue } from '../../cluster/src/keys.js'
import { Kv } from '../../cluster/src/kv.js'
import { RESERVED } from '../../policy-store/src/index.js'
import { runCli } from '../helpers/cli.js'
import { startTlsEtcd } from '../helpers/etcd-tls.js'
import { charge, metric as metricOf, poll } from '../helpers/poll.js'
import { completeLines } from '../../demo/log-lines.js'

const PASSWORD = 'wdtk-agent-Pa55word'
const ROOT_PASSWORD = 'wdtk-root-Pa55word'
const WRONG = 'wdtk-wrong-Pa55word'

const cfg: DemoConfig = {
  ...DEFAULT_DEMO,
  workDir: '/run/warden-e2e-wdtk',
  nsPrefix: 'wdtk-',
  ifPrefix: 'wdtk-',
  subnet: '198.19.224',
  bpffs: '/sys/fs/bpf/wdtk-agent',
  routeTable: 3000,
  proxyPort: 17900,
  dnsProxyPort: 17901,
  metricsPort: 17902
}

const until = poll
const metric = async (name: string): Promise<number> => await metricOf(cfg.metricsPort, name)

/**
 * The agent's log lines (pino JSON) since `from`: whole lines only, as the file is read while
 * the agent writes it and a line may be there in part.
 */
function lines (s: DemoSession, from: number): Array<Record<string, unknown>> {
  const log = s.agentLog().slice(from)
  return completeLines(log).filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>)
}

t.test('an agent on a TLS etcd with a client certificate and a password', { skip: process.getuid?.() !== 0 ? 'needs root' : false }, async (t) => {
  const e = await startTlsEtcd(t, 23842, { rootPassword: ROOT_PASSWORD, user: 'warden', password: PASSWORD })
  const config = (over: Record<string, unknown>): Record<string, unknown> => ({
    endpoints: [e.etcd.url], 'trusted-ca-file': e.pki.ca.cert, 'cert-file': e.pki.client.cert, 'key-file': e.pki.client.key, username: 'warden', password: PASSWORD, ...over
  })
  const configFile = await e.writeConfig('etcd.config', config({}))
  cfg.agentArgs = ['--kvstore', 'etcd', '--kvstore-opt', `etcd.config=${configFile}`, '--node-name', 'node-a', '--node-ip', '198.19.232.1', '--kvstore-lease-ttl', '4']
  t.teardown(async () => await teardown(cfg))
  const s = await DemoSession.open(cfg)
  const target = resolveKvstoreTarget('etcd', [`etcd.config=${configFile}`])
  const kv = new Kv(target.urls, 2000, { tls: loadTlsMaterial(target.tls ?? {}, configFile), auth: target.auth })
  t.teardown(() => kv.close())
  const ipcache = openIpcacheReader(cfg.bpffs)
  t.teardown(() => ipcache.close())

  // Over TLS, as user `warden`: this node's pods are published, another node's reach the kernel.
  const billing = s.endpointAddress('billing-service')
  const published = await until(async () => (await kv.get(ipcacheKey(billing))).value, (v) => v !== null)
  t.ok(published !== null, 'billing-service\'s ipcache entry is in etcd')
  t.equal(parseIpcacheValue(ipcacheKey(billing), published as string).identity, ipcache.lookupIdentity(billing), 'with the identity the kernel uses')
  t.equal(await metric('warden_kvstore_connected'), 1)
  const checkout = ipcache.lookupIdentity(s.endpointAddress('checkout-service'))
  await kv.put(nodeKey('default', 'node-b'), formatNodeValue({ name: 'node-b', cluster: 'default', ipv4: ['198.19.232.2'], podCidr: '198.19.233.0/24' }))
  await kv.put(ipcacheKey('198.19.233.5'), formatIpcacheValue({ ip: '198.19.233.5', hostIP: '198.19.232.2', identity: checkout, namespace: 'default', pod: 'checkout-2', cluster: 'default', node: 'node-b', endpointId: 7 }))
  t.equal(await until(() => ipcache.lookupIdentity('198.19.233.5'), (v) => v === checkout), checkout, 'node-b\'s pod is in the kernel with its identity')
  t.equal(await until(() => ipcache.lookupIdentity('198.19.232.2'), (v) => v === RESERVED.REMOTE_NODE), RESERVED.REMOTE_NODE, 'node-b\'s address is remote-node')
  t.equal(await charge(s), '404', 'L7 policy enforced (checkout may POST /api/v1/charge)')

  // Each broken configuration: the agent restarts from its persisted state, keeps enforcing,
  // says why with its code, retries; fixing etcd's side connects it without a restart.
  const cases = [
    { name: 'a wrong password', over: { password: WRONG }, code: 'WARDEN_ERR_KVSTORE_AUTH', reason: 'authentication-failed', counter: 'warden_kvstore_auth_failures_total', fix: async () => await e.etcdctl(['user', 'passwd', 'warden', '--interactive=false'], WRONG + '\n') },
    { name: 'a wrong CA', over: { password: WRONG, 'trusted-ca-file': e.otherCa.cert }, code: 'WARDEN_ERR_KVSTORE_TLS', reason: 'server-certificate-untrusted', counter: 'warden_kvstore_tls_failures_total', fix: undefined }
  ]
  for (const c of cases) {
    await sleep(1500) // the cluster state is persisted 1 s after a change (and at a clean stop)
    await s.stopAgent()
    writeFileSync(configFile, stringify(config(c.over)), { mode: 0o600 })
    const from = s.agentLog().length
    await s.startAgent()
    const line = await until(() => lines(s, from).find((l) => l.code === c.code), (l) => l !== undefined)
    t.equal(line?.reason, c.reason, `${c.name}: logged with ${c.code} and the reason`)
    t.match(String(line?.msg), c.code === 'WARDEN_ERR_KVSTORE_AUTH' ? /^kvstore authentication failed/ : /^kvstore TLS handshake failed/, `${c.name}: the line says what failed`)
    t.ok(await until(async () => await metric(c.counter), (v) => v >= 2) >= 2, `${c.name}: retried, counted`)
    t.equal(await metric('warden_kvstore_connected'), 0, `${c.name}: not connected`)
    t.equal(ipcache.lookupIdentity('198.19.233.5'), checkout, `${c.name}: the remote pod it persisted stays enforced`)
    t.equal(await charge(s), '404', `${c.name}: policy still enforced`)
    const st = await runCli(['status', '--json', '--api-socket', s.apiSocket])
    t.equal(st.code, 1, `${c.name}: warden status reports the node degraded`)
    t.equal((JSON.parse(st.out) as { cluster?: { lastError?: { code?: string } } }).cluster?.lastError?.code, c.code, `${c.name}: and why`)
    if (c.fix !== undefined) {
      await c.fix()
      t.equal(await until(async () => await metric('warden_kvstore_connected'), (v) => v === 1), 1, `${c.name}: fixed in etcd, the retrying agent connects`)
    }
  }
  await s.stopAgent()
  for (const p of [PASSWORD, WRONG, ROOT_PASSWORD]) t.notOk(s.agentLog().includes(p), 'no password in the agent\'s log')
})
