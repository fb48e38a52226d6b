// Needs root and the real kernel (namespaces, tc eBPF, bpf_sk_assign); CI runs as root.
// The seed's two patterns end to end, exactly as `warden demo` runs them: real nginx, real
// dnsmasq, `warden run` on the seed's manifests unchanged, curl from inside the workloads.
import t from 'tap'
import { DemoSession, DEFAULT_DEMO, type DemoConfig } from '../../demo/session.js'
import { runChecks } from '../../demo/demo.js'
import { completeLines } from '../../demo/log-lines.js'

function config (n: number, denyResponse: '403' | 'reset'): DemoConfig {
  return {
    ...DEFAULT_DEMO,
    workDir: `/run/warden-e2e-demo${n}`,
    nsPrefix: `wdt${n}-`,
    ifPrefix: `wdt${n}-`,
    subnet: `198.19.${10 + n}`,
    bpffs: `/sys/fs/bpf/wdt-demo${n}`,
    routeTable: 2300 + n,
    proxyPort: 17000 + n,
    dnsProxyPort: 17100 + n,
    metricsPort: 17200 + n,
    denyResponse
  }
}

interface LogLine { msg?: string, level?: number, [k: string]: unknown }
/** The whole lines of a log the agent is still writing (its last line may be there in part). */
function logLines (text: string): LogLine[] {
  return completeLines(text).filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as LogLine)
}

for (const [n, mode] of [[1, '403'], [2, 'reset']] as const) {
  t.test(`the seed's checks with --deny-response ${mode}`, async (t) => {
    const cfg = config(n, mode)
    t.teardown(async () => { const { teardown } = await import('../../demo/session.js'); await teardown(cfg) })
    const s = await DemoSession.open(cfg)
    const results = await runChecks(s)
    t.equal(results.length, 8, 'every check of the seed ran')
    for (const r of results) t.ok(r.pass, `${r.name}: expected ${r.expected}, observed ${r.observed}`)
    if (results.some((r) => !r.pass)) {
      // For whoever reads the failure: what the proxies decided (after the log's 100 ms flush).
      await new Promise((resolve) => setTimeout(resolve, 500))
      const all = s.agentLog().split('\n')
      const http = all.filter((l) => /http-proxy/.test(l))
      const rest = all.filter((l) => /dns query|dns-proxy|flow/.test(l)).slice(-25)
      console.error(`agent log, every HTTP proxy line:\n${http.join('\n')}\nlast DNS and flow lines:\n${rest.join('\n')}`)
    }

    if (mode === '403') {
      // An operator can tell from one line who talked to whom, on which rule, and why.
      const lines = logLines(s.agentLog())
      const denied = lines.find((l) => l.verdict === 'denied' && typeof l.path === 'string' && l.path.startsWith('/api/v1/invoices'))
      t.ok(denied, 'the denied request has an access-log line')
      t.match(JSON.stringify(denied), /checkout-service/, 'naming the source workload')
      t.match(JSON.stringify(denied), /billing-service|198\.19\./, 'and the destination')
      const allowed = lines.find((l) => l.verdict === 'allowed' && l.path === '/api/v1/charge')
      t.match(JSON.stringify(allowed), /billing-l7-policy/, 'an allowed request names the policy that allowed it')
    }
  })
}
