// FQDN cache lifetimes through the proxy, against a real dnsmasq on 127.0.53.12 (loopback only):
// TTL expiry, zombies, an IP change in the server, min/max TTL, max IPs per name.
import t from 'tap'
import { lastLearned, makeSnapshot, query, startDnsmasq, startProxy, waitFor, type TestLike } from '../../helpers/dns.js'
import type { DnsProxyOptions } from '../../../proxy/src/dns/index.js'

const EXPORTER = '127.0.53.23'
const DNS_IP = '127.0.53.12'
const NAME = 'api.github.com.'

async function setup (t: TestLike, hosts: Record<string, string[]>, ttl: number, options: DnsProxyOptions = {}) {
  const dns = await startDnsmasq(t, { ip: DNS_IP, hosts, ttl })
  const snapshot = makeSnapshot({
    endpoints: [{ id: 7, name: 'data-exporter', ipv4: EXPORTER }],
    dns: [{ endpointId: 7, port: dns.port, matchPatterns: ['*'] }],
    fqdn: [{ matchName: 'api.github.com' }]
  })
  const h = await startProxy(t, { snapshot, upstream: dns, options })
  return { dns, h }
}

t.test('an IP is removed when its TTL passes, and learn() is told', async t => {
  const { h } = await setup(t, { 'api.github.com': ['198.18.53.10'] }, 1)
  const t0 = Date.now()
  await query(h.udp, 'api.github.com', { from: EXPORTER })
  t.strictSame(lastLearned(h, NAME), ['198.18.53.10'])
  t.ok(await waitFor(() => h.proxy.learned().length === 0, 3000), 'gone from the learned set')
  t.ok(Date.now() - t0 >= 950, 'not before its TTL')
  t.ok(await waitFor(() => lastLearned(h, NAME).length === 0), 'the kernel was told')
  t.match(h.logs.find(l => l.msg === 'dns: ip expired'), { name: NAME, ip: '198.18.53.10', endpoint: 'default/data-exporter' })
  t.match(h.proxy.metrics(), { expiredIps: 1, cachedIps: 0 })
})

t.test('an expired IP with a live connection stays as a zombie until the connection ends', async t => {
  const { h } = await setup(t, { 'api.github.com': ['198.18.53.10'] }, 1)
  h.connections.add('198.18.53.10')
  await query(h.udp, 'api.github.com', { from: EXPORTER })
  t.ok(await waitFor(() => h.proxy.metrics().zombies === 1, 3000), 'became a zombie')
  t.strictSame(h.proxy.learned().map(n => n.ipv4), [['198.18.53.10']], 'still allowed')
  const z = h.proxy.learned()[0]
  t.ok(z.expiresAt > Date.now(), 'reported as allowed into the future, not as already expired')
  t.ok(h.logs.some(l => l.msg === 'dns: ip zombie' && l.ip === '198.18.53.10'))
  await new Promise(resolve => setTimeout(resolve, 300))
  t.equal(h.proxy.learned().length, 1, 'kept while the connection lives')
  h.connections.delete('198.18.53.10')
  t.ok(await waitFor(() => h.proxy.learned().length === 0, 2000), 'removed once it ended')
  t.ok(await waitFor(() => lastLearned(h, NAME).length === 0), 'and the kernel told')
})

t.test('when the server changes the IP, the new one is allowed at once and the old one stops after its TTL', async t => {
  const { dns, h } = await setup(t, { 'api.github.com': ['198.18.53.10'] }, 1)
  await query(h.udp, 'api.github.com', { from: EXPORTER })
  await dns.setHosts({ 'api.github.com': ['198.18.53.11'] })
  const ans = await query(h.udp, 'api.github.com', { from: EXPORTER })
  t.strictSame(ans.answers.map(a => a.data), ['198.18.53.11'])
  t.strictSame(lastLearned(h, NAME), ['198.18.53.10', '198.18.53.11'], 'both allowed right after the second answer')
  t.ok(await waitFor(() => lastLearned(h, NAME).length === 0 || lastLearned(h, NAME).join() === '198.18.53.11', 3000))
  t.ok(h.logs.some(l => l.msg === 'dns: ip expired' && l.ip === '198.18.53.10'), 'the old IP expired')
})

t.test('minTtlSec is a floor, maxTtlSec a cap', async t => {
  await t.test('min', async t => {
    const { h } = await setup(t, { 'api.github.com': ['198.18.53.10'] }, 1, { minTtlSec: 30 })
    await query(h.udp, 'api.github.com', { from: EXPORTER })
    const e = h.proxy.learned()[0]
    t.ok(e.expiresAt - Date.now() > 25_000, 'lives min-ttl, not the 1 s TTL')
  })
  await t.test('max', async t => {
    const { h } = await setup(t, { 'api.github.com': ['198.18.53.10'] }, 3600, { maxTtlSec: 1 })
    await query(h.udp, 'api.github.com', { from: EXPORTER })
    t.ok(await waitFor(() => h.proxy.learned().length === 0, 3000), 'gone after max-ttl despite a TTL of 1 h')
  })
})

t.test('at most maxIpsPerName per name and endpoint; the oldest goes first', async t => {
  const { dns, h } = await setup(t, { 'api.github.com': ['198.18.53.10', '198.18.53.11'] }, 30, { maxIpsPerName: 2 })
  await query(h.udp, 'api.github.com', { from: EXPORTER })
  t.strictSame(lastLearned(h, NAME), ['198.18.53.10', '198.18.53.11'])
  await new Promise(resolve => setTimeout(resolve, 20)) // later answer, later expiry
  await dns.setHosts({ 'api.github.com': ['198.18.53.12'] })
  await query(h.udp, 'api.github.com', { from: EXPORTER })
  const ips = lastLearned(h, NAME)
  t.equal(ips.length, 2, 'capped at 2')
  t.ok(ips.includes('198.18.53.12'), 'the new IP is in')
  t.match(h.proxy.metrics(), { evictedIps: 1 })
  t.ok(h.logs.some(l => l.msg === 'dns: ip evicted'))
})

t.test('what learn() is told is a lease, renewed at half-time while the name is cached', async t => {
  const { h } = await setup(t, { 'api.github.com': ['198.18.53.10'] }, 30, { zombieGraceMs: 400 })
  await query(h.udp, 'api.github.com', { from: EXPORTER })
  const calls = h.learnCalls.length
  const pushed = h.learnCalls[calls - 1].find(n => n.name === NAME)
  t.ok(pushed !== undefined && pushed.expiresAt >= Date.now() + 25_000, 'at least the TTL')
  t.ok(await waitFor(() => h.learnCalls.length > calls, 2000), 'pushed again with nothing changed: the lease is renewed')
  t.strictSame(lastLearned(h, NAME), ['198.18.53.10'])
})

t.test('an IP refreshed by answers is pushed with its renewed expiry before the first one passes', async t => {
  const { h } = await setup(t, { 'api.github.com': ['198.18.53.10'] }, 1, { zombieGraceMs: 600 })
  const first = Date.now()
  for (let i = 0; i < 8; i++) { await query(h.udp, 'api.github.com', { from: EXPORTER }); await new Promise(resolve => setTimeout(resolve, 250)) }
  const last = h.learnCalls[h.learnCalls.length - 1].find(n => n.name === NAME)
  t.ok(last !== undefined && last.expiresAt > first + 2000, `the last push carries an expiry past the first answer's (${String((last?.expiresAt ?? 0) - first)} ms after it)`)
})
