/**
 * `warden demo`: the seed's two patterns, end to end, on this machine.
 *
 * A lab of network namespaces stands in for the pods of the seed's manifests, real servers play
 * the services (nginx, dnsmasq), `warden run` enforces the seed's two policies unchanged, and every
 * verification the seed describes runs with curl from inside the workloads (demo/session.ts).
 * Everything is torn down at the end, on Ctrl-C and on failure, unless --keep.
 */
import { resolve } from 'node:path'
import { DemoSession, repoRoot, type DemoConfig, type Exec } from './session.js'

export { DEFAULT_DEMO, teardown, type DemoConfig } from './session.js'

export interface CheckResult {
  name: string
  command: string
  expected: string
  observed: string
  pass: boolean
  /** Where warden (like Cilium) differs from what the seed document says. */
  note?: string
}

function describe (r: Exec): string {
  if (r.code === 28) return 'timed out (curl exit 28)'
  if (r.code === 56) return 'connection reset (curl exit 56)'
  if (r.code === 7) return 'connection refused (curl exit 7)'
  const out = r.stdout.trim().split('\n').map((l) => l.trim()).filter((l) => l !== '')
  if (r.code !== 0) return `curl exit ${r.code} ${out.join(' ')}`.trim()
  return out.slice(0, 2).join(' ')
}

export interface CheckSpec {
  name: string
  from: string
  curl: string[]
  expected: string
  ok (r: Exec): boolean
  note?: string
}

export function demoChecks (cfg: DemoConfig, githubCa: string): CheckSpec[] {
  const code = ['-s', '-o', '/dev/null', '-w', '%{http_code}']
  const l7Denied = cfg.denyResponse === '403'
    ? { expected: '403 Access denied', ok: (r: Exec) => r.code === 0 && /Access denied/.test(r.stdout) && /403$/.test(r.stdout.trim()) }
    : { expected: 'connection reset', ok: (r: Exec) => r.code === 56 }
  const seedNote = 'seed says "times out"; Cilium (and warden) deny an L4-allowed peer at L7 with ' +
    (cfg.denyResponse === '403' ? '403 Access denied' : 'a reset (--deny-response reset)')
  const ca = githubCa
  return [
    {
      name: 'checkout POST /api/v1/charge',
      from: 'checkout-service',
      curl: [...code, '-X', 'POST', 'http://billing-service:8080/api/v1/charge', '--max-time', '5'],
      expected: '404 (allowed; nginx has no such page)',
      ok: (r) => r.code === 0 && r.stdout.trim() === '404'
    },
    {
      name: 'checkout GET /api/v1/invoices/123',
      from: 'checkout-service',
      curl: ['-s', '-w', '\n%{http_code}', '-X', 'GET', 'http://billing-service:8080/api/v1/invoices/123', '--max-time', '5'],
      ...l7Denied,
      note: seedNote
    },
    {
      name: 'auditing GET /api/v1/invoices/123',
      from: 'auditing-service',
      curl: [...code, '-X', 'GET', 'http://billing-service:8080/api/v1/invoices/123', '--max-time', '5'],
      expected: '404 (allowed)',
      ok: (r) => r.code === 0 && r.stdout.trim() === '404'
    },
    {
      name: 'auditing POST /api/v1/charge',
      from: 'auditing-service',
      curl: ['-s', '-w', '\n%{http_code}', '-X', 'POST', 'http://billing-service:8080/api/v1/charge', '--max-time', '5'],
      ...l7Denied,
      note: seedNote
    },
    {
      name: 'monitoring GET /healthz',
      from: 'prometheus',
      curl: [...code, 'http://billing-service:8080/healthz', '--max-time', '5'],
      expected: '200 (allowed)',
      ok: (r) => r.code === 0 && r.stdout.trim() === '200'
    },
    {
      name: 'data-exporter to billing-service:8080',
      from: 'data-exporter',
      curl: [...code, 'http://billing-service:8080/healthz', '--connect-timeout', '3', '--max-time', '5'],
      expected: 'timed out (no rule allows it at L4: dropped in the kernel)',
      ok: (r) => r.code === 28
    },
    {
      name: 'data-exporter HEAD https://api.github.com',
      from: 'data-exporter',
      curl: ['-s', '-I', 'https://api.github.com', '--connect-timeout', '5', '--max-time', '8', '--cacert', ca],
      expected: 'HTTP/2 404 (connection made to the name toFQDNs allows)',
      ok: (r) => r.code === 0 && /^HTTP\/2 404/.test(r.stdout.trim())
    },
    {
      name: 'data-exporter HEAD https://www.google.com',
      from: 'data-exporter',
      curl: ['-s', '-I', 'https://www.google.com', '--connect-timeout', '5', '--max-time', '8', '-k'],
      expected: 'timed out (resolved through the DNS proxy, but no toFQDNs rule allows it)',
      ok: (r) => r.code === 28
    }
  ]
}

export interface DemoRun { results: CheckResult[], ok: boolean }

/** What the checks need of a session: the one-node demo's or the two-node demo's (two-nodes.ts). */
export interface CheckSession {
  readonly cfg: DemoConfig
  readonly githubCa: string
  exec: (from: string, argv: string[]) => Promise<Exec>
  ns: (name: string) => string
}

/** Run every check of `demoChecks` in an open session. */
export async function runChecks (s: CheckSession, isInterrupted: () => boolean = () => false): Promise<CheckResult[]> {
  const results: CheckResult[] = []
  for (const c of demoChecks(s.cfg, s.githubCa)) {
    if (isInterrupted()) throw new Error('interrupted')
    const r = await s.exec(c.from, ['curl', ...c.curl])
    results.push({
      name: c.name,
      command: `ip netns exec ${s.ns(c.from)} curl ${c.curl.map((a) => (/[\s%{}\\]/.test(a) ? `'${a.replace(/\n/g, '\\n')}'` : a)).join(' ')}`,
      expected: c.expected,
      observed: describe(r),
      pass: c.ok(r),
      note: c.note
    })
  }
  return results
}

export async function runDemo (cfg: DemoConfig, opts: { keep?: boolean, print?: (s: string) => void } = {}): Promise<DemoRun> {
  const print = opts.print ?? ((s: string) => console.log(s))
  let interrupted = false
  const onSignal = (): void => { interrupted = true }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  let session: DemoSession | undefined
  let keepRunning = false
  try {
    session = await DemoSession.open(cfg, (m) => print(`warden demo: ${m}`))
    const results = await runChecks(session, () => interrupted)
    const ok = results.every((r) => r.pass)
    print(renderTable(results))
    print(ok ? `\nall ${results.length} checks passed` : `\n${results.filter((r) => !r.pass).length} of ${results.length} checks FAILED`)
    if (!ok) print(`\nlast lines of the agent's log (${session.agentLogPath}):\n${session.agentLog().split('\n').slice(-15).join('\n')}`)
    if (opts.keep === true && !interrupted) {
      keepRunning = true
      print(keepInstructions(session))
    }
    return { results, ok }
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    if (!keepRunning) {
      print('warden demo: tearing down ...')
      if (session !== undefined) await session.close()
    }
  }
}

export function renderTable (rows: CheckResult[]): string {
  const head = ['check', 'expected', 'observed', 'result']
  const body = rows.map((r) => [r.name, r.expected, r.observed, r.pass ? 'pass' : 'FAIL'])
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)))
  const line = (cells: string[]): string => '| ' + cells.map((c, i) => c.padEnd(widths[i])).join(' | ') + ' |'
  const out = [line(head), '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...body.map(line)]
  out.push('', 'commands:')
  for (const r of rows) out.push(`  ${r.name}: ${r.command}`)
  const notes = rows.filter((r) => r.note !== undefined)
  if (notes.length > 0) {
    out.push('', 'where warden follows Cilium rather than the seed:')
    for (const r of notes) out.push(`  ${r.name}: ${r.note as string}`)
  }
  return out.join('\n')
}

function keepInstructions (s: DemoSession): string {
  const cfg = s.cfg
  const n = (x: string): string => s.ns(x)
  return `
The lab and the agent are still running. Try by hand:
  ip netns exec ${n('checkout-service')} curl -s -X POST http://billing-service:8080/api/v1/charge -o /dev/null -w "%{http_code}\\n"
  ip netns exec ${n('checkout-service')} curl -s http://billing-service:8080/api/v1/invoices/123
  ip netns exec ${n('auditing-service')} curl -s http://billing-service:8080/api/v1/invoices/123 -o /dev/null -w "%{http_code}\\n"
  ip netns exec ${n('data-exporter')} curl -s -I https://api.github.com --cacert ${s.githubCa}
  ip netns exec ${n('data-exporter')} curl -s -I -k https://www.google.com --connect-timeout 5
  curl -s http://127.0.0.1:${cfg.metricsPort}/metrics
  tail -f ${cfg.workDir}/agent.log     # pino JSON: one line per request, DNS query and kernel flow
  warden status --api-socket ${s.apiSocket}
  warden observe --follow --api-socket ${s.apiSocket}     # kernel flows, HTTP and DNS decisions with their rule
Edit ${resolve(repoRoot(), 'demo', 'policies')} and watch the agent pick it up. Remove it all with:
  warden demo --down`
}
