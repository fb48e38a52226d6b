// DNS proxy over UDP against a real dnsmasq on 127.0.53.11 (no root needed; loopback only).
// Client "endpoints" send from 127.0.53.21 (exporter) and 127.0.53.22 (other).
import t from 'tap'
import * as dgram from 'node:dgram'
import { once } from 'node:events'
import dnsPacket from 'dns-packet'
import type pino from 'pino'
import { aRecords, lastLearned, makeSnapshot, query, startDnsmasq, startProxy, waitFor, type TestLike } from '../../helpers/dns.js'

const EXPORTER = '127.0.53.21'
const OTHER = '127.0.53.22'
const DNS_IP = '127.0.53.11'

async function setup (t: TestLike, dnsRule: { matchPatterns?: string[], matchNames?: string[] }, options = {}, loggerOptions?: pino.LoggerOptions) {
  const dns = await startDnsmasq(t, {
    ip: DNS_IP,
    hosts: { 'api.github.com': ['198.18.53.10'], 'www.google.com': ['198.18.53.20'], 'lb.github.com': ['198.18.53.30'] },
    cnames: [['alias.github.com', 'lb.github.com']]
  })
  const snapshot = makeSnapshot({
    endpoints: [{ id: 7, name: 'data-exporter', ipv4: EXPORTER }, { id: 8, name: 'other', ipv4: OTHER }],
    dns: [{ endpointId: 7, port: dns.port, ...dnsRule }],
    fqdn: [{ matchName: 'api.github.com' }, { matchPattern: '*.github.com' }]
  })
  const h = await startProxy(t, { snapshot, upstream: dns, options, loggerOptions })
  return { dns, h }
}

t.test('an allowed name is answered by the server and its IPs are learned', async t => {
  const { dns, h } = await setup(t, { matchPatterns: ['*'] })
  const ans = await query(h.udp, 'API.GitHub.com', { from: EXPORTER })
  t.equal(ans.rcode, 'NOERROR')
  t.strictSame(aRecords(ans), ['198.18.53.10'])
  t.equal(await dns.queriesFor('API.GitHub.com'), 1, 'dnsmasq saw the query')
  t.strictSame(lastLearned(h, 'api.github.com.'), ['198.18.53.10'], 'learn() got the IP before the answer came back')
  const learned = h.proxy.learned().find(n => n.name === 'api.github.com.')
  t.ok(learned !== undefined && learned.expiresAt > Date.now() + 50_000, 'expires after the TTL (60 s)')
  const line = h.logs.find(l => l.msg === 'dns query' && l.name === 'api.github.com.')
  t.match(line, { endpoint: 'default/data-exporter', endpointId: 7, qtype: 'A', verdict: 'allowed', rcode: 'NOERROR', answer: ['198.18.53.10'], ttl: 60, rule: 'test.yaml:1' })
  t.ok(h.logs.some(l => l.msg === 'dns: ip learned' && l.ip === '198.18.53.10'), 'one line per IP added')
  t.match(h.proxy.metrics(), { queries: 1, allowed: 1, forwarded: 1, answered: 1, learnedIps: 1, cachedIps: 1 })
})

t.test("the answered query's line is byte for byte the line pino writes for it", async t => {
  // The proxy writes this line by concatenation (log-line.ts) when the logger allows it; an
  // identity streamWrite hook makes it take pino's own path instead, with the same output.
  const queries: Array<[string, string]> = [['api.github.com', 'A'], ['alias.github.com', 'A'], ['API.GitHub.com', 'AAAA'], ['nowhere.github.com', 'A'], ['api.github.com', 'TXT']]
  const lineSets: string[][] = []
  for (const loggerOptions of [undefined, { hooks: { streamWrite: (s: string) => s } }]) {
    const { h } = await setup(t, { matchPatterns: ['*.github.com'] }, {}, loggerOptions)
    for (const [name, type] of queries) await query(h.udp, name, { from: EXPORTER, type })
    // The client's port, dnsmasq's port, the clock and the duration differ between the runs.
    lineSets.push(h.lines.filter(l => l.includes('"msg":"dns query"'))
      .map(l => l.replace(/"time":\d+/, '"time":0').replace(/"src":"127\.0\.53\.21:\d+"/, '"src":"-"').replace(/"server":"127\.0\.53\.11:\d+"/, '"server":"-"').replace(/"ms":\d+/, '"ms":0')))
    await h.close()
  }
  t.equal(lineSets[0].length, queries.length, 'one line per query')
  t.strictSame(lineSets[0], lineSets[1])
  t.match(lineSets[0][1], /"answer":\["198\.18\.53\.30"\],"ttl":\d+,"cname":\["lb\.github\.com\."\]/)
  t.match(lineSets[0][3], /"rcode":"REFUSED","answer":\[\],"ms":0,"msg"/, 'an answer without records (dnsmasq refuses names it has not)')
})

t.test('a denied name gets REFUSED and is never forwarded', async t => {
  const { dns, h } = await setup(t, { matchNames: ['api.github.com'] })
  const ans = await query(h.udp, 'www.google.com', { from: EXPORTER })
  t.equal(ans.rcode, 'REFUSED')
  t.equal(ans.answers.length, 0)
  t.strictSame(ans.questions, [{ name: 'www.google.com', type: 'A', class: 'IN' }], 'the question is echoed')
  // The allowed name afterwards proves dnsmasq logs queries, so the 0 below means something.
  t.equal((await query(h.udp, 'api.github.com.', { from: EXPORTER })).rcode, 'NOERROR')
  t.equal(await dns.queriesFor('api.github.com'), 1)
  t.equal(await dns.queriesFor('www.google.com'), 0, 'dnsmasq never saw the denied query')
  t.match(h.proxy.metrics(), { refused: 1, forwarded: 1 })
  t.match(h.logs.find(l => l.name === 'www.google.com.'), { verdict: 'denied', reason: 'no-rule-matches', rcode: 'REFUSED' })
  t.strictSame(lastLearned(h, 'www.google.com.'), [])
})

t.test('an endpoint without DNS rules on that port, or an unknown source, gets REFUSED', async t => {
  const { dns, h } = await setup(t, { matchPatterns: ['*'] })
  t.equal((await query(h.udp, 'api.github.com', { from: OTHER })).rcode, 'REFUSED', 'no table for endpoint 8: fail closed')
  t.equal((await query(h.udp, 'api.github.com', { from: '127.0.53.99' })).rcode, 'REFUSED', 'not an endpoint')
  t.equal(await dns.queriesFor('api.github.com'), 0)
  t.match(h.logs.filter(l => l.verdict === 'denied').map(l => l.reason), ['no-dns-table', 'unknown-endpoint'])
})

t.test('each query finds its endpoint in the current snapshot, also when the same client asks again', async t => {
  const { dns, h } = await setup(t, { matchPatterns: ['*'] })
  t.equal((await query(h.udp, 'api.github.com', { from: EXPORTER })).rcode, 'NOERROR')
  // The same address is now another endpoint (id 8, no DNS rules), then no endpoint at all.
  h.setSnapshot(makeSnapshot({ endpoints: [{ id: 8, name: 'other', ipv4: EXPORTER }], dns: [{ endpointId: 7, port: dns.port, matchPatterns: ['*'] }] }))
  t.equal((await query(h.udp, 'api.github.com', { from: EXPORTER })).rcode, 'REFUSED', 'no table for endpoint 8')
  h.setSnapshot(makeSnapshot({ endpoints: [], dns: [{ endpointId: 7, port: dns.port, matchPatterns: ['*'] }] }))
  t.equal((await query(h.udp, 'api.github.com', { from: EXPORTER })).rcode, 'REFUSED', 'not an endpoint')
  t.match(h.logs.filter(l => l.verdict === 'denied').map(l => [l.reason, l.endpoint]), [['no-dns-table', 'default/other'], ['unknown-endpoint', undefined]])
  t.equal(await dns.queriesFor('api.github.com'), 1, 'only the first was forwarded')
})

t.test('rejectCode nxdomain answers NXDOMAIN instead', async t => {
  const { h } = await setup(t, { matchNames: ['api.github.com'] }, { rejectCode: 'nxdomain' })
  t.equal((await query(h.udp, 'www.google.com', { from: EXPORTER })).rcode, 'NXDOMAIN')
})

t.test('a CNAME chain is followed; chain names are learned only where the DNS rules allow them', async t => {
  await t.test('pattern allows both names', async t => {
    const { h } = await setup(t, { matchPatterns: ['*.github.com'] })
    const ans = await query(h.udp, 'alias.github.com', { from: EXPORTER })
    t.strictSame(ans.answers.map(a => [a.type, a.name, a.data]), [['CNAME', 'alias.github.com', 'lb.github.com'], ['A', 'lb.github.com', '198.18.53.30']])
    t.strictSame(lastLearned(h, 'alias.github.com.'), ['198.18.53.30'], 'the IPs belong to the queried name')
    t.strictSame(lastLearned(h, 'lb.github.com.'), ['198.18.53.30'], 'and to the CNAME target')
    t.match(h.logs.find(l => l.msg === 'dns query' && l.name === 'alias.github.com.'), { cname: ['lb.github.com.'], answer: ['198.18.53.30'] })
  })
  await t.test('matchName allows only the alias', async t => {
    const { h } = await setup(t, { matchNames: ['alias.github.com'] })
    await query(h.udp, 'alias.github.com', { from: EXPORTER })
    t.strictSame(lastLearned(h, 'alias.github.com.'), ['198.18.53.30'])
    t.strictSame(h.proxy.learned().map(n => n.name), ['alias.github.com.'], 'lb.github.com. is not learned: the endpoint may not ask for it')
  })
})

t.test('answers for names no toFQDNs selector matches are not held', async t => {
  // A held answer would take holdMaxMs (3 s) since learn() never resolves.
  const { h } = await setup(t, { matchPatterns: ['*'] }, { holdMaxMs: 3000 })
  h.setLearnDelay(Infinity)
  const t0 = Date.now()
  const ans = await query(h.udp, 'www.google.com', { from: EXPORTER, timeoutMs: 5000 })
  t.equal(ans.rcode, 'NOERROR')
  t.ok(Date.now() - t0 < 1500, `answered without waiting for the kernel (${Date.now() - t0} ms)`)
  t.equal(h.proxy.metrics().held, 0)
  t.equal(h.learnCalls.length, 0, 'nothing to push')
  t.strictSame(h.proxy.learned().map(n => n.name), ['www.google.com.'], 'but cached, for selectors added later')
})

t.test('the answer is held until learn() resolves, at most holdMaxMs', async t => {
  await t.test('learn takes 60 ms', async t => {
    const { h } = await setup(t, { matchPatterns: ['*'] })
    h.setLearnDelay(60)
    const t0 = Date.now()
    await query(h.udp, 'api.github.com', { from: EXPORTER })
    t.ok(Date.now() - t0 >= 55, `held ${Date.now() - t0} ms`)
    t.match(h.proxy.metrics(), { held: 1, holdTimeouts: 0 })
  })
  await t.test('learn never resolves', async t => {
    const { h } = await setup(t, { matchPatterns: ['*'] }, { holdMaxMs: 100 })
    h.setLearnDelay(Infinity)
    const t0 = Date.now()
    const ans = await query(h.udp, 'api.github.com', { from: EXPORTER })
    const took = Date.now() - t0
    t.strictSame(aRecords(ans), ['198.18.53.10'])
    t.ok(took >= 95 && took < 1000, `released after the hold limit (${took} ms)`)
    t.match(h.proxy.metrics(), { held: 1, holdTimeouts: 1 })
  })
})

t.test('queries without an answer time out silently and are logged', async t => {
  // The "server" is a UDP port where nothing listens.
  const snapshot = makeSnapshot({ endpoints: [{ id: 7, name: 'data-exporter', ipv4: EXPORTER }], dns: [{ endpointId: 7, port: 9, matchPatterns: ['*'] }] })
  const h = await startProxy(t, { snapshot, upstream: { ip: '127.0.53.11', port: 9 }, options: { upstreamTimeoutMs: 200 } })
  await t.rejects(query(h.udp, 'api.github.com', { from: EXPORTER, timeoutMs: 600 }))
  t.ok(await waitFor(() => h.proxy.metrics().upstreamTimeouts === 1))
  t.equal(h.proxy.metrics().inFlight, 0, 'nothing left in flight')
  t.match(h.logs.find(l => l.reason === 'upstream-timeout'), { name: 'api.github.com.', verdict: 'allowed' })
})

t.test('upstream socket pools are bounded: beyond 64 busy servers a query gets SERVFAIL, and idle pools make room', async t => {
  const dns = await startDnsmasq(t, { ip: DNS_IP, hosts: { 'api.github.com': ['198.18.53.10'] } })
  // 64 "servers" that never answer, on 127.0.53.18.
  const silent: dgram.Socket[] = []
  for (let i = 0; i < 64; i++) {
    const s = dgram.createSocket('udp4')
    s.bind(0, '127.0.53.18')
    await once(s, 'listening')
    silent.push(s)
  }
  t.teardown(() => { for (const s of silent) s.close() })
  const ports = silent.map(s => s.address().port)
  const snapshot = makeSnapshot({
    endpoints: [{ id: 7, name: 'data-exporter', ipv4: EXPORTER }],
    dns: [...ports, dns.port].map(port => ({ endpointId: 7, port, matchPatterns: ['*'] }))
  })
  let upstream: { ip: string, port: number } = dns
  // The proxy's clock stands still until the test moves it, so nothing times out early.
  let clock = Date.now()
  const h = await startProxy(t, { snapshot, get upstream () { return upstream }, options: { upstreamSockets: 1, upstreamTimeoutMs: 1000, now: () => clock } })
  const sender = dgram.createSocket('udp4')
  sender.bind(0, EXPORTER)
  await once(sender, 'listening')
  t.teardown(() => sender.close())
  for (const port of ports) {
    upstream = { ip: '127.0.53.18', port }
    // The proxy reads the original destination when the datagram arrives: wait for it.
    const before = h.proxy.metrics().forwarded
    sender.send(dnsPacket.encode({ type: 'query', id: 1, questions: [{ type: 'A', name: 'api.github.com' }] }), h.udp.port, h.udp.ip)
    t.ok(await waitFor(() => h.proxy.metrics().forwarded === before + 1), `forwarded to server ${port}`)
  }
  upstream = dns
  t.equal((await query(h.udp, 'api.github.com', { from: EXPORTER })).rcode, 'SERVFAIL', 'a 65th server while 64 have queries in flight')
  t.match(h.proxy.metrics(), { overload: 1 })
  t.equal(await dns.queriesFor('api.github.com'), 0, 'not forwarded')
  clock += 1000
  t.ok(await waitFor(() => h.proxy.metrics().upstreamTimeouts === 64), 'the silent servers time out')
  t.strictSame(aRecords(await query(h.udp, 'api.github.com', { from: EXPORTER })), ['198.18.53.10'], 'then an idle pool is closed for the new server')
})

t.test('a server that went away and came back is asked again on every upstream socket', async t => {
  // Queries to a closed port draw ICMP port unreachable, a pending error on the pool's
  // connected sockets. libuv stops watching a socket with a pending error; the proxy must
  // watch it again, or the sockets that met the closed port never hear an answer again.
  const { dns, h } = await setup(t, { matchPatterns: ['*'] })
  t.equal((await query(h.udp, 'api.github.com', { from: EXPORTER })).rcode, 'NOERROR', 'answered before')
  await dns.stop()
  const lost = await Promise.allSettled(Array.from({ length: 24 }, () => query(h.udp, 'api.github.com', { from: EXPORTER, timeoutMs: 300 })))
  t.ok(lost.every(r => r.status === 'rejected'), 'no answer while the server is gone')
  await waitFor(() => h.proxy.metrics().upstreamErrors > 0)
  t.ok(h.proxy.metrics().upstreamErrors > 0, `the ICMP errors are counted (${h.proxy.metrics().upstreamErrors})`)
  await startDnsmasq(t, { ip: DNS_IP, port: dns.port, hosts: { 'api.github.com': ['198.18.53.10'] } })
  let answered = 0
  for (let i = 0; i < 40; i++) {
    const a = await query(h.udp, 'api.github.com', { from: EXPORTER, timeoutMs: 1000 }).catch(() => null)
    if (a?.rcode === 'NOERROR') answered++
  }
  t.equal(answered, 40, 'every query answered again, whichever socket it went out on')
})

t.test('a query whose original destination is the proxy port was not redirected: dropped on both transports', async t => {
  // proxyPort is the listeners' port; here the "original destination" is made to be it.
  const { dns, h } = await setup(t, { matchPatterns: ['*'] })
  const self = await startProxy(t, {
    snapshot: makeSnapshot({ endpoints: [{ id: 7, name: 'data-exporter', ipv4: EXPORTER }], dns: [{ endpointId: 7, port: dns.port, matchPatterns: ['*'] }], fqdn: [] }),
    upstream: dns,
    options: { proxyPort: dns.port }
  })
  t.equal((await query(h.udp, 'api.github.com', { from: EXPORTER })).rcode, 'NOERROR', 'the same query through a proxy without the option')
  const asked = await dns.queriesFor('api.github.com')
  await t.rejects(query(self.udp, 'api.github.com', { from: EXPORTER, timeoutMs: 500 }), 'no answer over UDP')
  await t.rejects(query(self.tcp, 'api.github.com', { from: EXPORTER, tcp: true, timeoutMs: 500 }), 'the TCP connection is closed unanswered')
  t.equal(self.proxy.metrics().dropped, 2)
  t.equal(self.proxy.metrics().forwarded, 0)
  t.equal(await dns.queriesFor('api.github.com'), asked, 'nothing reached the server')
  t.match(self.logs.filter(l => l.verdict === 'dropped').map(l => l.transport), ['udp', 'tcp'])
})
