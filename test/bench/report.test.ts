// Medians, the status check, ratios, the table, the chart, the latency histogram and wrk parsing.
import t from 'tap'
import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { addRatios, median, summarise, type BenchResults, type RoundResult } from '../../bench/results.js'
import { markdownTable, svgChart, withTable, TABLE_START, TABLE_END, BENCH_DOC } from '../../bench/report.js'
import { LatencyHistogram } from '../../bench/load-client.js'
import { parseWrk } from '../../bench/drivers.js'

const round = (r: Partial<RoundResult>): RoundResult => ({
  round: 1, requests: 1000, duration_s: 1, rps: 1000, p50_us: 100, p99_us: 300, p999_us: 500,
  proxy_cpu_s: 0.5, upstream_cpu_s: 0.2, client_cpu_s: 0.4, machine_cpu_s: 1.2, status: { 200: 1000 }, errors: 0, timeouts: 0, ...r
})

t.test('median of odd and even counts', async (t) => {
  t.equal(median([3, 1, 2]), 2)
  t.equal(median([4, 1, 3, 2]), 2.5)
  t.ok(Number.isNaN(median([])))
})

t.test('summarise takes each figure\'s median and computes per-core rates', async (t) => {
  const s = summarise('x', [round({ rps: 900, requests: 900, proxy_cpu_s: 0.3 }), round({ rps: 1000 }), round({ rps: 1200, requests: 1200, proxy_cpu_s: 0.4 })], 200, true)
  t.equal(s.rps, 1000)
  t.equal(s.proxy_cpu, 0.4)
  t.equal(s.rps_per_core, 3000) // per round: 900/0.3, 1000/0.5, 1200/0.4 -> median 3000
  t.equal(s.error, undefined)
  t.equal(s.status_ok, 1)
})

t.test('wrong answers are flagged, not ranked', async (t) => {
  const s = summarise('warden-l7', [round({ status: { 403: 1000 } })], 200, true)
  t.match(s.error, /only 0\.0% of answers were 200/)
  const none = summarise('warden-l7', [round({ status: {}, requests: 0 })], 200, true)
  t.equal(none.error, 'no responses')
  const direct = summarise('direct', [round({ proxy_cpu_s: 0 })], 200, false)
  t.equal(direct.proxy_cpu, 0)
  t.equal(direct.rps_per_core, null)
  t.equal(direct.error, undefined)
})

t.test('ratios to direct (req/s) and to haproxy-l7 (per core)', async (t) => {
  const rows = [
    { ...summarise('direct', [round({ rps: 2000, requests: 2000 })], 200, false) },
    { ...summarise('haproxy-l7', [round({ rps: 1000, requests: 1000, proxy_cpu_s: 0.5 })], 200, true) },
    { ...summarise('warden-l7', [round({ rps: 500, requests: 500, proxy_cpu_s: 0.5 })], 200, true) },
    { name: 'warden-l4', skipped: 'agent not ready' }
  ]
  addRatios(rows)
  t.equal(rows[2].vs_direct, 0.25)
  t.equal(rows[2].vs_haproxy_per_core, 0.5)
  t.equal(rows[1].vs_haproxy_per_core, 1)
  t.equal(rows[0].vs_haproxy_per_core, null)
  t.equal(rows[3].vs_direct, undefined)
  // machine CPU per request: 1.2 s over 2000, 1000 and 500 requests
  t.strictSame(rows.slice(0, 3).map((r) => r.machine_us_per_req), [600, 1200, 2400])
  t.strictSame(rows.slice(0, 3).map((r) => r.vs_direct_machine), [1, 0.5, 0.25])
})

const results = (): BenchResults => {
  const scenarios = [
    summarise('direct', [round({ rps: 2000 })], 200, false),
    summarise('haproxy-l7', [round({})], 200, true),
    { name: 'warden-l7', skipped: 'warden agent: exited (2) before it was ready: warden run: not implemented yet' }
  ]
  addRatios(scenarios)
  return {
    schema: 1, date: '2026-01-01T00:00:00.000Z', commit: 'a'.repeat(40), dirty: false,
    machine: { cpu: 'Test CPU', cores: 2, kernel: '6.18', node: 'v20', haproxy: 'HAProxy 2.6', nginx: 'nginx/1.22' },
    knobs: { connections: 64, pipelining: 1, duration_s: 10, warmup_s: 1, rounds: 3 },
    notes: [],
    scenarios
  }
}

t.test('the Markdown table has one row per scenario and says why one was skipped', async (t) => {
  const md = markdownTable(results())
  const rows = md.split('\n').filter((l) => l.startsWith('| ') && !l.startsWith('| scenario'))
  t.equal(rows.length, 3)
  t.match(rows[0], /^\| direct \| 2,000 \|/)
  t.match(rows[1], /^\| haproxy-l7 \| 1,000 \| 100 µs \| 300 µs \| 500 µs \| 0\.50 \| 2,000 \| 0\.50× \| 1200\.0 µs \(1\.00×\) \| 1\.00× \|/)
  t.match(rows[2], /skipped: warden agent: exited \(2\)/)
})

t.test('the SVG chart: a bar per measured scenario, "skipped" for the others', async (t) => {
  const svg = svgChart(results())
  t.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/)
  t.equal((svg.match(/<rect x=/g) ?? []).length, 2)
  t.match(svg, />skipped</)
  t.match(svg, /<\/svg>\n$/)
})

t.test('the table goes between the markers, and nowhere without them', async (t) => {
  const doc = `# x\n## Benchmarks\n${TABLE_START}\nold\n${TABLE_END}\nafter\n`
  const out = withTable(doc, 'NEW\n')
  t.equal(out, `# x\n## Benchmarks\n${TABLE_START}\nNEW\n${TABLE_END}\nafter\n`)
  t.throws(() => withTable('# no markers\n', 'NEW\n'))
})

t.test('`npm run bench -- --readme` has a table to replace in the benchmarks document', async (t) => {
  const doc = await readFile(join(dirname(fileURLToPath(import.meta.url)), '..', '..', BENCH_DOC), 'utf8')
  t.equal(doc.split(TABLE_START).length, 2, 'one start marker')
  t.equal(doc.split(TABLE_END).length, 2, 'one end marker')
  t.ok(doc.indexOf(TABLE_START) < doc.indexOf(TABLE_END), 'start before end')
})

t.test('latency histogram percentiles (1 µs buckets, overflow beyond 1 s)', async (t) => {
  const h = new LatencyHistogram()
  t.equal(h.percentile(0.5), 0)
  for (let i = 1; i <= 1000; i++) h.record(i)
  t.equal(h.percentile(0.5), 500)
  t.equal(h.percentile(0.99), 990)
  t.equal(h.percentile(0.999), 999)
  h.record(2_500_000)
  t.equal(h.percentile(1), 2_500_000)
})

t.test('wrk output parsing', async (t) => {
  const out = `Running 2s test @ http://x\n  1 threads and 8 connections\n  Latency Distribution\n     50%  210.00us\n     75%  1.20ms\n     90%  2.00ms\n     99%    1.50ms\n  12345 requests in 2.00s, 1.2MB read\nRequests/sec:   6172.50\nTransfer/sec:    600KB\n`
  t.strictSame(parseWrk(out), { rps: 6173, p50_us: 210, p99_us: 1500 })
})
