// The HTTP part of a snapshot carried to a proxy worker (structured clone, as postMessage does)
// decides every request as the original does, and patterns are compiled once per source.
import t from 'tap'
import { decideHttp } from '../../policy-store/src/l7-match.js'
import type { HttpRequestView, Snapshot } from '../../policy-store/src/types.js'
import { httpSnapshotFromWire, httpSnapshotToWire } from '../../agent/workers/snapshot-wire.js'
import { billingSnapshot } from '../helpers/http-proxy.js'

function req (method: string, path: string, host = 'billing-service:8080', headers: Record<string, string> = {}): HttpRequestView {
  return { method, path, host, getHeader: (n) => headers[n] }
}

const REQUESTS = [
  req('POST', '/api/v1/charge'), req('GET', '/api/v1/charge'), req('POST', '/api/v1/charge?x=1'),
  req('GET', '/api/v1/invoices/42'), req('GET', '/api/v1/invoices/x'), req('GET', '/healthz'), req('GET', '/metrics'),
  req('GET', '/api/v2/anything', 'billing.internal'), req('GET', '/api/v2/anything', 'evil.example'),
  req('PUT', '/api/v2/anything', 'billing.internal', { 'x-team': 'payments' }), req('PUT', '/api/v2/anything', 'billing.internal')
]

function decisions (snap: Snapshot): string[] {
  const out: string[] = []
  const ids = [...snap.identities.keys(), 999_999]
  for (const [key, table] of snap.http) {
    for (const id of ids) {
      for (const r of REQUESTS) {
        const rule = decideHttp(table, id, r)
        out.push(`${key} ${id} ${r.method} ${r.host}${r.path} -> ${rule === null ? 'deny' : `${rule.file}:${rule.line} ${rule.section}[${rule.index}]`}`)
      }
    }
  }
  return out
}

t.test('a worker\'s copy decides every request as the original', async (t) => {
  const snap = await billingSnapshot({
    auditing: [{ method: 'GET', path: '/api/v1/invoices/[0-9]+' }, { method: 'GET', path: '/api/v2/.*', host: 'billing\\.internal' }],
    checkout: [{ method: 'POST', path: '/api/v1/charge' }, { method: 'PUT', path: '/api/v2/.*', headers: [{ name: 'X-Team', value: 'payments' }] }]
  })
  const wire = structuredClone(httpSnapshotToWire(snap))
  const { snapshot: copy, matchers } = httpSnapshotFromWire(wire)
  t.equal(copy.version, snap.version)
  t.strictSame(copy.endpoints, snap.endpoints)
  t.strictSame([...copy.identities], [...snap.identities])
  t.strictSame([...copy.http.keys()], [...snap.http.keys()])
  const want = decisions(snap)
  t.ok(want.some((d) => d.endsWith('deny')) && want.some((d) => !d.endsWith('deny')), 'the sample has allowed and denied requests')
  t.strictSame(decisions(copy), want, `${want.length} decisions equal`)
  const sources = new Set<string>()
  for (const table of snap.http.values()) {
    for (const p of [...table.byIdentity.values(), ...(table.anyIdentity === null ? [] : [table.anyIdentity])]) {
      for (const r of p.rules) for (const m of [r.method, r.path, r.host]) if (m !== null) sources.add(m.source)
    }
  }
  t.strictSame([...matchers.keys()].sort(), [...sources].sort(), 'one compiled matcher per distinct pattern')

  // the next snapshot reuses what it can and keeps only what it uses
  const edited = await billingSnapshot({ checkout: [{ method: 'POST', path: '/api/v1/charge' }] })
  const next = httpSnapshotFromWire(structuredClone(httpSnapshotToWire(edited)), matchers)
  t.equal(next.matchers.get('/api/v1/charge'), matchers.get('/api/v1/charge'), 'a pattern still in use is not compiled again')
  t.notOk(next.matchers.has('/api/v2/.*'), 'a pattern no rule uses any more is let go')
  t.strictSame(decisions(next.snapshot), decisions(edited), 'and the edited copy decides as the edited original')
})
