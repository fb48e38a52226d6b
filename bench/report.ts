/**
 * Renders a results file as a Markdown table and an SVG chart (bars: requests per proxy
 * CPU-second; whiskers: latency p50 to p99, tick at p99.9). Also a CLI that regenerates both from
 * a JSON file: `node dist/bench/report.js bench/results/latest.json [--readme docs/benchmarks.md]`.
 */
import { readFile, writeFile } from 'node:fs/promises'
import type { BenchResults, ScenarioResult } from './results.js'

const fmtInt = (n: number | null | undefined): string => n === null || n === undefined ? '–' : Math.round(n).toLocaleString('en-US')
const fmtUs = (n: number | undefined): string => n === undefined ? '–' : n >= 1000 ? `${(n / 1000).toFixed(2)} ms` : `${n} µs`
const fmtX = (n: number | null | undefined): string => n === null || n === undefined ? '–' : `${n.toFixed(2)}×`

const fmtMachine = (s: ScenarioResult): string => s.machine_us_per_req === undefined || Number.isNaN(s.machine_us_per_req)
  ? '–'
  : `${s.machine_us_per_req.toFixed(1)} µs (${fmtX(s.vs_direct_machine)})`

export function markdownTable (res: BenchResults): string {
  const k = res.knobs
  const lines = [
    `Commit \`${res.commit.slice(0, 12)}\`${res.dirty ? ' (dirty)' : ''}, ${res.date}; ${String(res.machine.cpu)} ×${String(res.machine.cores)}, Linux ${String(res.machine.kernel)}, Node ${String(res.machine.node)}, ${String(res.machine.haproxy)}, ${String(res.machine.nginx)}.`,
    `autocannon ${String(k.connections)} connections, pipelining ${String(k.pipelining)}, ${String(k.duration_s)} s per run after ${String(k.warmup_s)} s warmup, ${String(k.rounds)} interleaved round(s); medians.`,
    '"machine CPU per req" is the whole machine\'s busy CPU per request (load generator and upstream included), with direct\'s divided by it in brackets (above 1 = cheaper than direct).',
    '"other load" is CPU used by anything but the proxy, the upstream and the load generator during the runs (noise).',
    '',
    '| scenario | req/s | p50 | p99 | p99.9 | proxy CPU (cores) | req per proxy CPU-s | vs direct (req/s) | machine CPU per req (vs direct) | vs haproxy-l7 (per core) | other load (cores) | note |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|'
  ]
  for (const s of res.scenarios) {
    if (s.skipped !== undefined) {
      lines.push(`| ${s.name} | – | – | – | – | – | – | – | – | – | – | skipped: ${oneLine(s.skipped)} |`)
      continue
    }
    const note = s.error !== undefined ? `error: ${oneLine(s.error)}` : s.wrk !== undefined && 'rps' in s.wrk ? `wrk: ${fmtInt(s.wrk.rps)} req/s` : ''
    lines.push(`| ${s.name} | ${fmtInt(s.rps)} | ${fmtUs(s.p50_us)} | ${fmtUs(s.p99_us)} | ${fmtUs(s.p999_us)} | ${s.proxy_cpu?.toFixed(2) ?? '–'} | ${fmtInt(s.rps_per_core)} | ${fmtX(s.vs_direct)} | ${fmtMachine(s)} | ${fmtX(s.vs_haproxy_per_core)} | ${s.foreign_cpu?.toFixed(2) ?? '–'} | ${note} |`)
  }
  return lines.join('\n') + '\n'
}

function oneLine (s: string): string {
  const first = s.split('\n').find((l) => l.trim() !== '') ?? s
  return first.replace(/\|/g, '\\|').slice(0, 140)
}

function esc (s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}

/** Horizontal bars for requests per proxy CPU-second (req/s for `direct`), whiskers for latency. */
export function svgChart (res: BenchResults): string {
  const rows = res.scenarios
  const rowH = 30
  const top = 50
  const labelW = 150
  const barW = 380
  const gap = 40
  const latW = 260
  const width = labelW + barW + gap + latW + 30
  const height = top + rows.length * rowH + 40
  const barValue = (s: ScenarioResult): number => s.skipped !== undefined ? 0 : (typeof s.rps_per_core === 'number' ? s.rps_per_core : s.rps ?? 0)
  const maxBar = Math.max(1, ...rows.map(barValue))
  const maxLat = Math.max(1, ...rows.map((s) => s.skipped !== undefined ? 0 : s.p999_us ?? s.p99_us ?? 0))
  const x0 = labelW
  const l0 = labelW + barW + gap
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${x0}" y="20" font-weight="bold">requests per proxy CPU-second (direct: req/s)</text>`,
    `<text x="${l0}" y="20" font-weight="bold">latency: p50–p99 (tick: p99.9)</text>`,
    `<text x="${l0}" y="36" fill="#555">0 … ${esc(fmtUs(maxLat))}</text>`,
    `<text x="${x0}" y="36" fill="#555">0 … ${esc(fmtInt(maxBar))}</text>`
  ]
  rows.forEach((s, i) => {
    const y = top + i * rowH
    const cy = y + rowH / 2
    out.push(`<text x="${labelW - 8}" y="${cy + 4}" text-anchor="end">${esc(s.name)}</text>`)
    if (s.skipped !== undefined) {
      out.push(`<text x="${x0 + 4}" y="${cy + 4}" fill="#999">skipped</text>`)
      return
    }
    const v = barValue(s)
    const w = Math.max(1, (v / maxBar) * barW)
    const color = s.error !== undefined ? '#d62728' : s.name.startsWith('warden') ? '#1f77b4' : s.name === 'direct' ? '#7f7f7f' : '#ff7f0e'
    out.push(`<rect x="${x0}" y="${y + 6}" width="${w.toFixed(1)}" height="${rowH - 12}" fill="${color}"/>`)
    out.push(`<text x="${x0 + w + 4}" y="${cy + 4}">${esc(fmtInt(v))}</text>`)
    const sx = (us: number): number => l0 + (us / maxLat) * latW
    if (s.p50_us !== undefined && s.p99_us !== undefined) {
      out.push(`<line x1="${sx(s.p50_us).toFixed(1)}" y1="${cy}" x2="${sx(s.p99_us).toFixed(1)}" y2="${cy}" stroke="black" stroke-width="2"/>`)
      out.push(`<circle cx="${sx(s.p50_us).toFixed(1)}" cy="${cy}" r="3"/>`)
      out.push(`<line x1="${sx(s.p99_us).toFixed(1)}" y1="${cy - 6}" x2="${sx(s.p99_us).toFixed(1)}" y2="${cy + 6}" stroke="black" stroke-width="2"/>`)
      if (s.p999_us !== undefined) out.push(`<line x1="${sx(s.p999_us).toFixed(1)}" y1="${cy - 4}" x2="${sx(s.p999_us).toFixed(1)}" y2="${cy + 4}" stroke="#888"/>`)
    }
  })
  out.push(`<text x="${x0}" y="${height - 12}" fill="#555">${esc(`commit ${res.commit.slice(0, 12)} · ${res.date} · ${String(res.machine.cpu)} ×${String(res.machine.cores)}`)}</text>`)
  out.push('</svg>')
  return out.join('\n') + '\n'
}

/** The document whose table `npm run bench -- --readme` replaces (relative to the repository root). */
export const BENCH_DOC = 'docs/benchmarks.md'
export const TABLE_START = '<!-- bench:table:start -->'
export const TABLE_END = '<!-- bench:table:end -->'

/** Replaces the text between the table markers with the table; the document must have them. */
export function withTable (doc: string, table: string): string {
  const a = doc.indexOf(TABLE_START)
  const b = doc.indexOf(TABLE_END)
  if (a < 0 || b < a) throw new Error(`no ${TABLE_START} … ${TABLE_END} markers`)
  return doc.slice(0, a + TABLE_START.length) + '\n' + table + doc.slice(b)
}

if (process.argv[1] !== undefined && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  const [file, flag, readmePath] = process.argv.slice(2)
  if (file === undefined) {
    console.error('usage: node dist/bench/report.js RESULTS.json [--readme docs/benchmarks.md]')
    process.exit(1)
  }
  const res = JSON.parse(await readFile(file, 'utf8')) as BenchResults
  const base = file.replace(/\.json$/, '')
  await writeFile(`${base}.md`, markdownTable(res))
  await writeFile(`${base}.svg`, svgChart(res))
  if (flag === '--readme' && readmePath !== undefined) await writeFile(readmePath, withTable(await readFile(readmePath, 'utf8'), markdownTable(res)))
  console.log(markdownTable(res))
}
