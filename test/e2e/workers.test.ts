// Needs root and the real kernel (namespaces, tc eBPF, bpf_sk_assign); CI runs as root.
// `warden run --http-workers 3`: three HTTP proxies (the main thread's and two worker threads)
// share the transparent port; the kernel spreads connections over them, every one enforces the
// current policy, their access lines come out whole on the agent's stdout and their counters add up.
import t from 'tap'
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { get } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { poll } from '../helpers/poll.js'
import { DemoSession, DEFAULT_DEMO, repoRoot, teardown, type DemoConfig } from '../../demo/session.js'
import { runChecks } from '../../demo/demo.js'
import { completeLines } from '../../demo/log-lines.js'

const policies = mkdtempSync(join(tmpdir(), 'warden-e2e-workers-'))
cpSync(join(repoRoot(), 'demo', 'policies'), policies, { recursive: true })
const billingFile = join(policies, 'billing-policy.yaml')
const billing = readFileSync(billingFile, 'utf8')

const cfg: DemoConfig = {
  ...DEFAULT_DEMO,
  workDir: '/run/warden-e2e-workers',
  nsPrefix: 'wdw-',
  ifPrefix: 'wdw-',
  subnet: '198.19.40',
  bpffs: '/sys/fs/bpf/wdt-workers',
  routeTable: 2330,
  proxyPort: 17030,
  dnsProxyPort: 17130,
  metricsPort: 17230,
  policies,
  agentArgs: ['--http-workers', '3']
}

t.teardown(async () => {
  await teardown(cfg)
  rmSync(policies, { recursive: true, force: true })
})

const CONNECTIONS = 30

/** POST /api/v1/charge from checkout, each on a connection of its own; the status codes. */
async function charges (s: DemoSession): Promise<string[]> {
  const url = 'http://billing-service:8080/api/v1/charge'
  // -o pairs with one URL each
  const r = await s.exec('checkout-service', ['curl', '-s', '-X', 'POST', '-H', 'Connection: close',
    '-w', '%{http_code}\\n', '--connect-timeout', '2', '--max-time', '4', ...Array.from({ length: CONNECTIONS }, () => ['-o', '/dev/null', url]).flat()])
  return r.stdout.trim().split('\n')
}

interface Line { msg?: string, worker?: number, module?: string, status?: number, [k: string]: unknown }

async function metrics (): Promise<string> {
  return await new Promise((resolve, reject) => {
    get(`http://127.0.0.1:${cfg.metricsPort}/metrics`, (res) => {
      let body = ''
      res.on('data', (d) => { body += String(d) })
      res.on('end', () => resolve(body))
    }).on('error', reject)
  })
}

t.test('three HTTP proxies on one transparent port', async (t) => {
  const s = await DemoSession.open(cfg)

  const results = await runChecks(s)
  t.ok(results.length > 0 && results.every((r) => r.pass), `the seed's checks pass: ${results.filter((r) => !r.pass).map((r) => r.name).join(', ') || 'all'}`)

  const before = s.agentLog().length
  t.strictSame(await charges(s), Array<string>(CONNECTIONS).fill('404'), `${CONNECTIONS} connections, each allowed (nginx answers 404)`)
  // The access log goes in 100 ms batches from each worker, then the main thread's: wait until
  // the file holds a line per request (whole lines only: the last one may be being written).
  const complete = (): string[] => {
    const text = s.agentLog().slice(before)
    return completeLines(text).filter((l) => l !== '')
  }
  const isAccess = (l: string): boolean => {
    try { const o = JSON.parse(l) as Line; return o.module === 'http-proxy' && o.status === 404 } catch { return false }
  }
  const lines = await poll(complete, (ls) => ls.filter(isAccess).length >= CONNECTIONS)
  let whole = 0
  const parsed: Line[] = []
  for (const l of lines) {
    try { parsed.push(JSON.parse(l) as Line); whole++ } catch { /* counted below */ }
  }
  t.equal(whole, lines.length, 'every line on stdout is one whole JSON object')
  const access = parsed.filter((l) => l.module === 'http-proxy' && l.status === 404)
  t.equal(access.length, CONNECTIONS, 'one access line per request')
  t.strictSame([...new Set(access.map((l) => l.worker))].sort(), [0, 1, 2], 'the kernel spread the connections over all three proxies')

  // Rule 1 now allows another path: every proxy must deny the charge from its next request on.
  writeFileSync(billingFile, billing.replace('path: "/api/v1/charge"', 'path: "/api/v1/invoices"'))
  const deadline = Date.now() + 10_000
  let got = await charges(s)
  while (got.some((c) => c !== '403') && Date.now() < deadline) { await sleep(200); got = await charges(s) }
  t.strictSame(got, Array<string>(CONNECTIONS).fill('403'), 'after the edit, every connection is denied (no proxy keeps the old policy)')
  writeFileSync(billingFile, billing)

  // Workers report their counters every second, each on its own clock.
  const total = (text: string): number => Number(/^warden_http_requests_total (\d+)$/m.exec(text)?.[1] ?? NaN)
  const scraped = await poll(metrics, (text) => total(text) >= 2 * CONNECTIONS)
  const m = /^warden_http_requests_total (\d+)$/m.exec(scraped)
  t.ok(m !== null && Number(m[1]) >= 2 * CONNECTIONS, `warden_http_requests_total counts every proxy's requests (${m?.[1] ?? 'missing'})`)
  const rss = /^# TYPE warden_process_resident_memory_bytes gauge\nwarden_process_resident_memory_bytes (\d+)$/m.exec(scraped)
  t.ok(rss !== null && Number(rss[1]) > 10 * 1024 * 1024, `the agent's resident memory is a gauge (${rss?.[1] ?? 'missing'})`)
  t.match(scraped, /^# TYPE warden_event_loop_delay_p99_seconds gauge\nwarden_event_loop_delay_p99_seconds [0-9.e-]+$/m, 'and how late its event loop runs')
  t.match(scraped, /^warden_log_dropped_total 0$/m, 'no log line dropped')
})
