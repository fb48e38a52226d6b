// The FQDN cache survives a restart (a new proxy instance on the same stateDir).
// Real dnsmasq on 127.0.53.13, loopback only.
import t from 'tap'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { REFRESH_DEBOUNCE_MS } from '../../../proxy/src/dns/state.js'
import { poll } from '../../helpers/poll.js'
import { lastLearned, makeSnapshot, query, startDnsmasq, startProxy } from '../../helpers/dns.js'

const EXPORTER = '127.0.53.24'
const NAME = 'api.github.com.'

t.test('learned IPs are restored and pushed to the kernel before the new proxy serves', async t => {
  const stateDir = t.testdir({})
  const dns = await startDnsmasq(t, { ip: '127.0.53.13', hosts: { 'api.github.com': ['198.18.53.10'] }, ttl: 60 })
  const snapshot = makeSnapshot({
    endpoints: [{ id: 7, name: 'data-exporter', ipv4: EXPORTER }],
    dns: [{ endpointId: 7, port: dns.port, matchPatterns: ['*'] }],
    fqdn: [{ matchName: 'api.github.com' }]
  })
  const first = await startProxy(t, { snapshot, upstream: dns, options: { stateDir } })
  await query(first.udp, 'api.github.com', { from: EXPORTER })
  const before = first.proxy.learned()
  await first.close()
  const saved: unknown = JSON.parse(await readFile(join(stateDir, 'dns-cache.json'), 'utf8'))
  t.match(saved, { version: 1, entries: [{ endpoint: 'default/data-exporter', name: NAME, ips: [{ ip: '198.18.53.10' }] }] })

  const second = await startProxy(t, { snapshot, upstream: dns, options: { stateDir } })
  t.strictSame(second.proxy.learned(), before, 'same names, IPs and expiry')
  t.equal(second.learnCalls.length, 1, 'pushed once at start')
  t.strictSame(lastLearned(second, NAME), ['198.18.53.10'])
  t.equal(await dns.queriesFor('api.github.com'), 1, 'no new lookup was needed')
})

t.test('a new IP is written at once; answers that only refresh expiry wait, and a clean stop writes them', async t => {
  const stateDir = t.testdir({})
  const file = join(stateDir, 'dns-cache.json')
  const dns = await startDnsmasq(t, { ip: '127.0.53.13', hosts: { 'api.github.com': ['198.18.53.10'], 'www.example.com': ['198.18.53.12'] }, ttl: 60 })
  const snapshot = makeSnapshot({
    endpoints: [{ id: 7, name: 'data-exporter', ipv4: EXPORTER }],
    dns: [{ endpointId: 7, port: dns.port, matchPatterns: ['*'] }],
    fqdn: [{ matchName: 'api.github.com' }]
  })
  const h = await startProxy(t, { snapshot, upstream: dns, options: { stateDir } })
  const expiry = async (name: string): Promise<number | undefined> => {
    let text: string
    try { text = await readFile(file, 'utf8') } catch { return undefined } // not written yet
    const saved = JSON.parse(text) as { entries: Array<{ name: string, ips: Array<{ expiresAt: number }> }> }
    return saved.entries.find(e => e.name === name)?.ips[0].expiresAt
  }
  // "At once" is the short debounce (200 ms) and the write, against the 10 s a refresh waits:
  // wait for the file well within the latter rather than a fixed time for the former.
  const soon = REFRESH_DEBOUNCE_MS / 2
  await query(h.udp, 'api.github.com', { from: EXPORTER })
  const first = await poll(async () => await expiry(NAME), (v) => v !== undefined, soon)
  t.ok(first !== undefined, 'the new IP is on disk within the short debounce (200 ms)')

  // A second of refreshes: the expiry in memory moves on, the file does not.
  for (let i = 0; i < 5; i++) { await sleep(200); await query(h.udp, 'api.github.com', { from: EXPORTER }) }
  await sleep(400)
  t.equal(await expiry(NAME), first, 'refresh-only answers are not written within the second')
  const inMemory = h.proxy.learned().find(n => n.name === NAME)?.expiresAt ?? 0
  t.ok(inMemory >= (first ?? 0) + 900, 'while the cache has the later expiry')

  // Something new brings the pending write forward.
  await query(h.udp, 'www.example.com', { from: EXPORTER })
  t.ok(await poll(async () => await expiry('www.example.com.'), (v) => v !== undefined, soon) !== undefined, 'a new name is written at once')
  const second = await expiry(NAME) ?? 0
  t.ok(second >= inMemory - 1000, 'and the write carries the refreshed expiry with it')

  await query(h.udp, 'api.github.com', { from: EXPORTER })
  const last = h.proxy.learned().find(n => n.name === NAME)?.expiresAt ?? 0
  await h.close()
  t.equal(await expiry(NAME), last, 'a clean stop writes the latest expiry')
})

t.test('at restart, expired IPs go unless a connection uses them (then they are zombies)', async t => {
  const stateDir = t.testdir({})
  const past = Date.now() - 1000
  await writeFile(join(stateDir, 'dns-cache.json'), JSON.stringify({
    version: 1,
    savedAt: past,
    entries: [{
      endpoint: 'default/data-exporter',
      name: NAME,
      ips: [
        { ip: '198.18.53.10', expiresAt: past, addedAt: past - 5000, zombie: false },
        { ip: '198.18.53.11', expiresAt: past, addedAt: past - 5000, zombie: false },
        { ip: 'not-an-ip', expiresAt: past, addedAt: past, zombie: false }
      ]
    }, { bogus: true }]
  }))
  const snapshot = makeSnapshot({ endpoints: [{ id: 7, name: 'data-exporter', ipv4: EXPORTER }], dns: [], fqdn: [{ matchName: 'api.github.com' }] })
  const h = await startProxy(t, {
    snapshot,
    upstream: { ip: '127.0.53.13', port: 9 },
    options: { stateDir },
    connections: ['198.18.53.10']
  })
  t.strictSame(h.proxy.learned().map(n => [n.name, n.ipv4]), [[NAME, ['198.18.53.10']]], 'only the IP in use survives')
  t.equal(h.proxy.metrics().zombies, 1)
  t.strictSame(lastLearned(h, NAME), ['198.18.53.10'], 'and the kernel got it at start')
  t.match(h.logs.find(l => l.msg === 'dns: restored the FQDN cache'), { restored: 2, skipped: 2 })
  t.match(h.logs.filter(l => l.msg === 'dns: ip expired').map(l => l.ip), ['198.18.53.11'])
})

t.test('a corrupt state file is logged and the proxy starts empty', async t => {
  const stateDir = t.testdir({ 'dns-cache.json': '{not json' })
  const snapshot = makeSnapshot({ endpoints: [], dns: [] })
  const h = await startProxy(t, { snapshot, upstream: { ip: '127.0.53.13', port: 9 }, options: { stateDir } })
  t.strictSame(h.proxy.learned(), [])
  t.match(h.logs.find(l => l.msg === 'dns: state not restored'), { err: { code: 'WARDEN_ERR_DNS_STATE' } })
})
