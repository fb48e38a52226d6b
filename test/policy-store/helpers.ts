import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { loadSnapshot, traceFlow, type Snapshot, type TraceQuery, type TraceResult } from '../../policy-store/src/index.js'

export const ENDPOINTS = `endpoints:
  - {name: billing-service, labels: {app: billing-service, class: sensitive}, ipv4: 10.42.0.10, interface: lxc-billing}
  - {name: checkout-service, labels: {app: checkout-service}, ipv4: 10.42.0.11, interface: lxc-checkout}
  - {name: auditing-service, labels: {app: auditing-service}, ipv4: 10.42.0.12, interface: lxc-auditing}
  - {name: prometheus, labels: {app: prometheus, system: monitoring}, ipv4: 10.42.0.13, interface: lxc-prom}
  - {name: other, labels: {app: other}, ipv4: 10.42.0.14, interface: lxc-other}
  - {name: data-exporter, labels: {app: data-exporter}, ipv4: 10.42.0.15, interface: lxc-exporter}
  - {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}, ipv4: 10.42.0.53, interface: lxc-dns}
  - {name: web, namespace: shop, labels: {app: web}, ipv4: 10.42.1.10, interface: lxc-web}
  - {name: checkout-service, namespace: shop, labels: {app: checkout-service}, ipv4: 10.42.1.11, interface: lxc-shopco}
`

/** A temp dir with `files` (relative path -> text); removed in teardown. */
export function tempTree (t: { teardown: (fn: () => void) => void }, files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'warden-store-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, rel)), { recursive: true })
    writeFileSync(join(dir, rel), text)
  }
  return dir
}

/** Compile `policies` (file name -> YAML) with the standard endpoints; fail on any error. */
export async function compile (t: { teardown: (fn: () => void) => void }, policies: Record<string, string>, endpoints = ENDPOINTS, extra: string[][] = []): Promise<Snapshot> {
  const dir = tempTree(t, { ...Object.fromEntries(Object.entries(policies).map(([k, v]) => [`policies/${k}`, v])), 'endpoints.yaml': endpoints })
  const { snapshot, errors } = await loadSnapshot({ policies: join(dir, 'policies'), endpoints: join(dir, 'endpoints.yaml'), extraLabelSets: extra })
  if (errors.length > 0) throw new Error('unexpected errors: ' + JSON.stringify(errors))
  return snapshot
}

export function trace (snap: Snapshot, q: Partial<TraceQuery> & { from: string, to: string, port: number }): TraceResult {
  const r = traceFlow(snap, { protocol: 'TCP', ...q })
  if (typeof r === 'string') throw new Error(r)
  return r
}

/** `allowed L7` style summary for compact assertions. */
export function verdict (snap: Snapshot, q: Partial<TraceQuery> & { from: string, to: string, port: number }): string {
  const r = trace(snap, q)
  return `${r.verdict} ${r.layer}`
}
