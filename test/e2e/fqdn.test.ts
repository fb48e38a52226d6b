// Needs root and the real kernel (namespaces, tc eBPF, bpf_sk_assign); CI runs as root.
// toFQDNs end to end: the DNS proxy on the real redirect, a real dnsmasq that is authoritative
// only, and the seed's egress policy unchanged. Addresses move in the DNS server, TTLs run out,
// a live connection outlives its address's TTL, and the agent restarts without losing what it
// learned.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import * as dgram from 'node:dgram'
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { poll } from '../helpers/poll.js'
import { DemoSession, DEFAULT_DEMO, internetAddress, repoRoot, teardown, type DemoConfig } from '../../demo/session.js'

const TTL = 6 // seconds: the lab DNS server's answers

// checkout-service may only ask for api.github.com (and reach it on 443); other names: REFUSED.
const RESTRICTED_DNS = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: checkout-dns-restricted
spec:
  endpointSelector:
    matchLabels: {app: checkout-service}
  egress:
  - toEndpoints:
    - matchLabels:
        k8s:io.kubernetes.pod.namespace: kube-system
        k8s:k8s-app: kube-dns
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchName: api.github.com
  - toFQDNs:
    - matchName: api.github.com
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
`

const policies = mkdtempSync(join(tmpdir(), 'warden-e2e-fqdn-'))
cpSync(join(repoRoot(), 'demo', 'policies', 'egress-fqdn-policy.yaml'), join(policies, 'egress-fqdn-policy.yaml'))
writeFileSync(join(policies, 'checkout-dns-restricted.yaml'), RESTRICTED_DNS)

const cfg: DemoConfig = {
  ...DEFAULT_DEMO,
  workDir: '/run/warden-e2e-fqdn',
  nsPrefix: 'wdf-',
  ifPrefix: 'wdf-',
  subnet: '198.19.20',
  bpffs: '/sys/fs/bpf/wdt-fqdn',
  routeTable: 2310,
  proxyPort: 17010,
  dnsProxyPort: 17110,
  metricsPort: 17210,
  policies,
  dnsTtl: TTL
}

t.teardown(async () => {
  await teardown(cfg)
  rmSync(policies, { recursive: true, force: true })
})

const gh1 = internetAddress(cfg, 'inet-github')
const gh2 = internetAddress(cfg, 'inet-github2')

/** HTTPS HEAD to api.github.com, resolved by DNS or pinned to `ip` (no lookup). */
async function head (s: DemoSession, from: string, ip?: string): Promise<string> {
  const pin = ip === undefined ? [] : ['--resolve', `api.github.com:443:${ip}`]
  const r = await s.exec(from, ['curl', '-s', '-I', 'https://api.github.com', '--cacert', s.githubCa,
    '--connect-timeout', '2', '--max-time', '5', ...pin])
  if (r.code === 28) return 'timeout'
  if (r.code === 6) {
    // The name did not resolve: show what the DNS proxy decided, for whoever reads the failure
    // (after the agent's log flush interval, 100 ms, so its lines are in the file).
    await sleep(500)
    const dns = s.agentLog().split('\n').filter((l) => /dns query|dns-proxy|learn/i.test(l)).slice(-12)
    console.error(`curl could not resolve api.github.com from ${from}; the agent's last DNS lines:\n${dns.join('\n')}`)
  }
  if (r.code !== 0) return `curl exit ${r.code}`
  return r.stdout.split('\n')[0].trim()
}

/** Resolve `name` with the workload's resolver settings; prints the addresses or the error code. */
async function resolve4 (s: DemoSession, from: string, name: string): Promise<string> {
  const js = `const r=new (require('dns').Resolver)();r.setServers(['${s.kubeDns}']);` +
    `r.resolve4('${name}',(e,a)=>console.log(e?e.code:a.join(',')))`
  const r = await s.exec(from, [process.execPath, '-e', js])
  return r.stdout.trim()
}

/** The policy version the agent's log last said is in the kernel (-1 before any). */
function kernelVersion (log: string): number {
  let v = -1
  for (const m of log.matchAll(/"policyVersion":(\d+)[^\n]*snapshot in the kernel/g)) v = Number(m[1])
  return v
}

async function eventually (what: () => Promise<string>, want: string, ms: number): Promise<string> {
  const deadline = Date.now() + ms
  let got = await what()
  while (got !== want && Date.now() < deadline) {
    await sleep(500)
    got = await what()
  }
  return got
}

t.test('toFQDNs through the DNS proxy and the kernel', async (t) => {
  const s = await DemoSession.open(cfg)

  t.equal(await head(s, 'data-exporter'), 'HTTP/2 404', 'the exporter reaches api.github.com:443 after resolving it')
  const google = await s.exec('data-exporter', ['curl', '-s', '-I', '-k', 'https://www.google.com', '--connect-timeout', '3', '--max-time', '5'])
  t.equal(google.code, 28, 'www.google.com resolves but its address is dropped in the kernel (timeout)')

  t.equal(await resolve4(s, 'checkout-service', 'api.github.com'), gh1, 'an allowed name is answered')
  t.equal(await resolve4(s, 'checkout-service', 'www.google.com'), 'EREFUSED', 'a name the DNS rules do not allow is REFUSED')
  t.equal(await head(s, 'checkout-service', internetAddress(cfg, 'inet-google')), 'timeout',
    'a refused name teaches nothing: its address stays dropped')

  // Restart: the kernel keeps enforcing while the agent is down, and the restarted agent keeps
  // what it learned (no new lookup needed).
  t.equal(await head(s, 'data-exporter'), 'HTTP/2 404', 'fresh lookup before the restart')
  await s.stopAgent()
  t.equal(await head(s, 'data-exporter', gh1), 'HTTP/2 404', 'with the agent stopped, the learned address still works (kernel state)')
  await s.startAgent()
  t.equal(await head(s, 'data-exporter', gh1), 'HTTP/2 404', 'after the restart, the learned address works without a new lookup')

  // A live connection to gh1 that stays idle past gh1's TTL, then talks.
  const holdMs = (TTL + 4) * 1000
  const holder = s.exec('data-exporter', [process.execPath, '-e',
    `const c=require('net').connect(443,'${gh1}');c.on('connect',()=>setTimeout(()=>c.write('GET / HTTP/1.0\\r\\n\\r\\n'),${holdMs}));` +
    'c.once("data",d=>{console.log(d.toString().split("\\r\\n")[0]);c.destroy()});c.on("error",e=>console.log("ERR "+e.code))'], holdMs + 10_000)

  // The name moves to gh2. gh2 is not allowed until the workload looks the name up again.
  s.setDnsRecords([{ name: 'api.github.com', ipv4: gh2 }, { name: 'www.google.com', ipv4: internetAddress(cfg, 'inet-google') }])
  await sleep(200)
  t.equal(await head(s, 'data-exporter', gh2), 'timeout', 'the new address is dropped before anyone resolved it')
  t.equal(await eventually(async () => await resolve4(s, 'data-exporter', 'api.github.com'), gh2, 5000), gh2, 'the DNS server now answers the new address')
  t.equal(await head(s, 'data-exporter'), 'HTTP/2 404', 'after the lookup the new address works at once')

  t.equal((await holder).stdout.trim(), 'HTTP/1.1 400 Bad Request', 'the live connection to the old address outlived its TTL')

  // Once no connection uses it, the old address goes. Probe it only once: a successful probe
  // would itself be a live connection that keeps the zombie allowed (as in Cilium). A closed
  // TCP connection stays in conntrack for 10 s (CT_LIFETIME_CLOSE), then the DNS cache's 1 s GC.
  await sleep(13_000)
  t.equal(await head(s, 'data-exporter', gh1), 'timeout', 'the old address is dropped once its TTL ran out and its connections ended')
  t.equal(await head(s, 'data-exporter', gh2), 'timeout', 'so is the new one, unused past its TTL')
  t.equal(await head(s, 'data-exporter'), 'HTTP/2 404', 'a fresh lookup allows the current address again')

  const log = s.agentLog()
  t.match(log, /"name":"www\.google\.com\."[^\n]*REFUSED|REFUSED[^\n]*"name":"www\.google\.com\."|www\.google\.com[^\n]*refused/i, 'the refusal is logged with the name')

  // A query sent straight to the DNS proxy port (a host process, a scan) was not redirected:
  // there is no server to ask. It is dropped, and no reply socket is bound on that address and
  // port (one would take the port's traffic away from the listener).
  const direct = dgram.createSocket('udp4')
  t.teardown(() => direct.close())
  const answered = new Promise<boolean>((resolve) => {
    direct.once('message', () => resolve(true))
    setTimeout(() => resolve(false), 1000)
  })
  direct.send(Buffer.from('123401000001000000000000036170690667697468756203636f6d0000010001', 'hex'), cfg.dnsProxyPort, '127.0.0.1')
  t.equal(await answered, false, 'no answer')
  const sockets = execFileSync('ss', ['-Huan', `sport = :${cfg.dnsProxyPort}`], { encoding: 'utf8' }).trim().split('\n').filter((l) => l !== '')
  t.equal(sockets.length, 1, `only the listener holds the port (${sockets.join(' | ')})`)
  const dropped = /"verdict":"dropped","reason":"no-original-destination"/
  t.match(await poll(() => s.agentLog(), (l) => dropped.test(l)), dropped, 'the drop is logged')
  t.equal(await resolve4(s, 'data-exporter', 'api.github.com'), gh2, 'workloads still resolve through the proxy')

  // An address the workload keeps resolving stays allowed past its first TTL, also across a
  // policy edit (a recompile judges the learned names' expiry: it must be the renewed one).
  for (let i = 0; i < 5; i++) {
    t.equal(await resolve4(s, 'data-exporter', 'api.github.com'), gh2, `lookup ${i + 1} of a workload that keeps resolving`)
    await sleep(2000)
  }
  // The startup's snapshot line matches too: wait for one newer than the last before the edit.
  const from = s.agentLog().length
  const before = kernelVersion(s.agentLog())
  writeFileSync(join(policies, 'unrelated.yaml'), RESTRICTED_DNS.replace('checkout-dns-restricted', 'unrelated').replace('app: checkout-service', 'app: nobody'))
  const applied = await poll(() => kernelVersion(s.agentLog().slice(from)), (v) => v > before)
  t.ok(applied > before, `the edit was applied (kernel at policy version ${applied}, was ${before})`)
  t.equal(await head(s, 'data-exporter', gh2), 'HTTP/2 404', 'after the edit, past the first TTL, the address still works without a new lookup')
})
