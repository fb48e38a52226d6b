/**
 * `warden trace`'s engine: what the datapath and the proxies would do with one flow, computed
 * from a snapshot with the same lookups they use (first-match kernel lookup, decideHttp,
 * decideDns), so trace cannot disagree with enforcement.
 */
import { maskOf, parseIPv4, parsePrefix } from './cidr.js'
import { labelsKey } from './identity.js'
import { identityLabelsOf } from './labels.js'
import { decideDns, decideHttp } from './l7-match.js'
import { normalizeFqdn } from './matchers.js'
import { lookupKernel } from './resolve.js'
import { DIR, ICMP_PORT_BASE, l7Key, type Direction, type Endpoint, type KernelEntry, type Label, type RuleRef, type Snapshot } from './types.js'

export interface TracePeer {
  /** As given on the command line. */
  spec: string
  identity: number
  endpoint: Endpoint | null
  ip: string | null
}

export interface TraceQuery {
  from: string
  to: string
  /** Destination port; ignored for ICMP. */
  port: number
  protocol: 'TCP' | 'UDP' | 'SCTP' | 'ICMP'
  /** ICMP type (0..255) when protocol is ICMP; default 8 (echo request, what ping sends). */
  icmpType?: number
  method?: string
  path?: string
  host?: string
  /** `Name: value` strings. */
  headers?: readonly string[]
  /** DNS question name, for ports redirected to the DNS proxy. */
  query?: string
}

export type Layer = 'L3' | 'L4' | 'L7'

export interface TraceReason {
  type: 'rule' | 'deny-rule' | 'default-deny' | 'default-allow' | 'l7-deny' | 'not-local'
  text: string
  file?: string
  line?: number
  policy?: string
  kind?: string
  rule?: string
}

export interface TraceStep {
  /** `egress of checkout-service` / `ingress of billing-service` / `http proxy` / `dns proxy`. */
  at: string
  verdict: 'allowed' | 'denied'
  layer: Layer
  reason: TraceReason
  kernelVerdict?: string
}

export interface TraceResult {
  verdict: 'allowed' | 'denied'
  layer: Layer
  reason: TraceReason
  from: { spec: string, identity: number, endpoint: string | null }
  to: { spec: string, identity: number, endpoint: string | null }
  steps: TraceStep[]
}

/** `labels:k=v,k2=v2[@namespace]` -> identity labels, or an error text. */
export function parseLabelsSpec (spec: string): Label[] | string {
  let body = spec.slice('labels:'.length)
  let ns = 'default'
  const at = body.lastIndexOf('@')
  if (at !== -1) { ns = body.slice(at + 1); body = body.slice(0, at) }
  const labels: Record<string, string> = {}
  for (const kv of body.split(',').filter((s) => s !== '')) {
    const e = kv.indexOf('=')
    if (e <= 0) return `"${kv}" in ${spec} is not key=value`
    labels[kv.slice(0, e)] = kv.slice(e + 1)
  }
  return identityLabelsOf(labels, ns)
}

/** Longest-prefix match in the snapshot's ipcache. */
export function lookupIpcache (snap: Snapshot, ip: string): number {
  const n = parseIPv4(ip)
  if (n === null) return 0
  let best = -1
  let id = 0
  for (const e of snap.ipcache) {
    const p = parsePrefix(e.prefix)
    if (typeof p === 'string' || p.len <= best) continue
    if (((n & maskOf(p.len)) >>> 0) === p.addr) { best = p.len; id = e.identity }
  }
  return id
}

export function resolvePeer (snap: Snapshot, spec: string): TracePeer | string {
  if (spec.startsWith('labels:')) {
    const labels = parseLabelsSpec(spec)
    if (typeof labels === 'string') return labels
    const key = labelsKey(labels)
    for (const [id, ls] of snap.identities) if (labelsKey(ls) === key) return { spec, identity: id, endpoint: snap.endpoints.find((e) => e.identity === id) ?? null, ip: null }
    return `no identity for ${spec} (it must be compiled in; warden trace does that)`
  }
  if (parseIPv4(spec) !== null) {
    const ep = snap.endpoints.find((e) => e.ipv4 === spec) ?? null
    return { spec, identity: ep?.identity ?? lookupIpcache(snap, spec), endpoint: ep, ip: spec }
  }
  const slash = spec.indexOf('/')
  // A bare name means the `default` namespace when it exists there (as kubectl), else any.
  const inDefault = snap.endpoints.filter((e) => e.name === spec && e.namespace === 'default')
  const matches = slash === -1
    ? (inDefault.length > 0 ? inDefault : snap.endpoints.filter((e) => e.name === spec))
    : snap.endpoints.filter((e) => e.namespace === spec.slice(0, slash) && e.name === spec.slice(slash + 1))
  if (matches.length === 0) return `no endpoint "${spec}" in the endpoints file`
  if (matches.length > 1) return `"${spec}" is ambiguous (${matches.map((e) => e.namespace + '/' + e.name).join(', ')}); use namespace/name`
  return { spec, identity: matches[0].identity, endpoint: matches[0], ip: matches[0].ipv4 }
}

function describeRule (r: RuleRef): string {
  return `${r.kind === 'CiliumNetworkPolicy' ? 'policy' : 'clusterwide policy'} ${r.policy} (${r.file}:${r.line}) ${r.section}[${r.index}]${r.spec > 0 ? ` of specs[${r.spec}]` : ''}`
}

function ruleReason (type: 'rule' | 'deny-rule', r: RuleRef, prefix: string): TraceReason {
  return { type, text: `${prefix} ${describeRule(r)}`, file: r.file, line: r.line, policy: r.policy, kind: r.kind, rule: `${r.spec > 0 ? `specs[${r.spec}].` : ''}${r.section}[${r.index}]` }
}

const PROTO_NUM = { TCP: 6, UDP: 17, SCTP: 132, ICMP: 1 } as const

function kernelStep (snap: Snapshot, ep: Endpoint, dir: Direction, remote: number, proto: number, port: number, q: TraceQuery): TraceStep[] {
  const at = `${dir === DIR.INGRESS ? 'ingress' : 'egress'} of ${ep.namespace}/${ep.name}`
  const e: KernelEntry | undefined = lookupKernel(snap.kernel, ep.id, dir, remote, proto, port)
  if (e === undefined) {
    const hasL4 = snap.kernel.some((k) => k.endpointId === ep.id && k.direction === dir && (k.remoteIdentity === remote || k.remoteIdentity === 0) && k.verdict !== 'deny')
    return [{ at, verdict: 'denied', layer: hasL4 ? 'L4' : 'L3', reason: { type: 'default-deny', text: `default deny: policies select ${ep.namespace}/${ep.name} for ${dir === DIR.INGRESS ? 'ingress' : 'egress'} and none allows identity ${remote} on ${q.protocol === 'ICMP' ? `ICMP type ${port & 0xff}` : `${q.protocol}/${port}`}` } }]
  }
  const layer: Layer = e.protocol === 0 && e.port === 0 ? 'L3' : 'L4'
  if (e.verdict === 'deny') return [{ at, verdict: 'denied', layer, kernelVerdict: e.verdict, reason: ruleReason('deny-rule', e.rule as RuleRef, 'denied by') }]
  const base: TraceStep = {
    at,
    verdict: 'allowed',
    layer,
    kernelVerdict: e.verdict,
    reason: e.rule === undefined ? { type: 'default-allow', text: e.reason ?? 'allowed by default' } : ruleReason('rule', e.rule, 'allowed by')
  }
  if (e.verdict === 'redirect-http') {
    const headers = new Map<string, string>()
    for (const h of q.headers ?? []) {
      const c = h.indexOf(':')
      const name = (c === -1 ? h : h.slice(0, c)).trim().toLowerCase()
      const value = c === -1 ? '' : h.slice(c + 1).trim()
      headers.set(name, headers.has(name) ? `${headers.get(name) as string},${value}` : value)
    }
    const host = q.host ?? headers.get('host') ?? ''
    const req = { method: q.method ?? 'GET', path: q.path ?? '/', host, getHeader: (n: string) => n === 'host' && host !== '' ? host : headers.get(n) }
    const hit = decideHttp(snap.http.get(l7Key(ep.id, dir, port)), remote, req)
    const l7: TraceStep = hit === null
      ? { at: 'http proxy', verdict: 'denied', layer: 'L7', reason: { type: 'l7-deny', text: `no HTTP rule allows ${req.method} ${req.path}${host !== '' ? ` (host ${host})` : ''} from identity ${remote}: 403 Forbidden` } }
      : { at: 'http proxy', verdict: 'allowed', layer: 'L7', reason: ruleReason('rule', hit, `${req.method} ${req.path} allowed by`) }
    return [base, l7]
  }
  if (e.verdict === 'redirect-dns' && q.query !== undefined) {
    const name = normalizeFqdn(q.query)
    const hit = decideDns(snap.dns.get(l7Key(ep.id, dir, port)), remote, name)
    const l7: TraceStep = hit === null
      ? { at: 'dns proxy', verdict: 'denied', layer: 'L7', reason: { type: 'l7-deny', text: `no DNS rule allows ${name}: REFUSED` } }
      : { at: 'dns proxy', verdict: 'allowed', layer: 'L7', reason: ruleReason('rule', hit, `query ${name} allowed by`) }
    return [base, l7]
  }
  return [base]
}

export function traceFlow (snap: Snapshot, q: TraceQuery): TraceResult | string {
  const src = resolvePeer(snap, q.from)
  if (typeof src === 'string') return `--from: ${src}`
  const dst = resolvePeer(snap, q.to)
  if (typeof dst === 'string') return `--to: ${dst}`
  const proto = PROTO_NUM[q.protocol]
  // ICMP is looked up by type, as the kernel does (types.ts, ICMP_PORT_BASE).
  const port = q.protocol === 'ICMP' ? ICMP_PORT_BASE | (q.icmpType ?? 8) : q.port
  const steps: TraceStep[] = []
  if (src.endpoint !== null) steps.push(...kernelStep(snap, src.endpoint, DIR.EGRESS, dst.identity, proto, port, q))
  if (!steps.some((s) => s.verdict === 'denied') && dst.endpoint !== null) steps.push(...kernelStep(snap, dst.endpoint, DIR.INGRESS, src.identity, proto, port, q))
  const who = (p: TracePeer): TraceResult['from'] => ({ spec: p.spec, identity: p.identity, endpoint: p.endpoint === null ? null : `${p.endpoint.namespace}/${p.endpoint.name}` })
  if (steps.length === 0) {
    const reason: TraceReason = { type: 'not-local', text: 'neither side is an endpoint on this node; warden does not enforce this flow' }
    return { verdict: 'allowed', layer: 'L3', reason, from: who(src), to: who(dst), steps }
  }
  const denied = steps.find((s) => s.verdict === 'denied')
  const order: Layer[] = ['L3', 'L4', 'L7']
  // Allowed: the most specific layer that looked at it decides (an L7 rule over an L4 allow).
  const decider = denied ?? steps.reduce((a, b) => order.indexOf(b.layer) >= order.indexOf(a.layer) ? b : a)
  return { verdict: denied === undefined ? 'allowed' : 'denied', layer: decider.layer, reason: decider.reason, from: who(src), to: who(dst), steps }
}
