/**
 * From (snapshot, connection addresses, request) to a verdict, using the shared decision
 * `decideHttp` (policy-store/src/l7-match.ts) so that the proxy and `warden trace` agree.
 *
 * Tables: the destination endpoint's INGRESS table for the port (remote = source identity) and
 * the source endpoint's EGRESS table (remote = destination identity). Both present: both must
 * allow. Neither: deny with `no-l7-table` (fail closed: never allow by default).
 */
import { decideHttp, hasHeaderActions, headerMismatches } from '../../../policy-store/src/l7-match.js'
import { DIR, l7Key } from '../../../policy-store/src/types.js'
import type { Endpoint, HeaderAction, HttpPolicy, HttpRequestView, L7PortTable, RuleRef, Snapshot } from '../../../policy-store/src/types.js'

export type DenyReason = 'no-l7-table' | 'ingress-no-rule-match' | 'egress-no-rule-match'

/** Endpoint index per snapshot, built once per snapshot on first use (no per-request scans). */
const byIp = new WeakMap<Snapshot, Map<string, Endpoint>>()

export function endpointByIp (snap: Snapshot, ip: string): Endpoint | undefined {
  let m = byIp.get(snap)
  if (m === undefined) {
    m = new Map()
    for (const ep of snap.endpoints) m.set(ep.ipv4, ep)
    byIp.set(snap, m)
  }
  return m.get(ip)
}

/** What one connection resolved from one snapshot; recomputed only when the snapshot changes. */
export class ConnectionPolicy {
  snapshot: Snapshot | null = null
  srcEndpoint: Endpoint | undefined = undefined
  dstEndpoint: Endpoint | undefined = undefined
  ingress: L7PortTable<HttpPolicy> | undefined = undefined
  egress: L7PortTable<HttpPolicy> | undefined = undefined
  /** Set by decide(): the deciding rule (allowed) or the reason (denied). */
  rule: RuleRef | null = null
  reason: DenyReason | null = null
  /** Set by decide() when allowed: the header actions the request triggers (headerMatches `mismatch`). */
  readonly actions: HeaderAction[] = []
  /** Do the tables have header actions at all? (Found once per snapshot, not per request.) */
  private ingressActions = false
  private egressActions = false

  constructor (readonly srcIp: string, readonly dstIp: string, readonly dstPort: number,
    readonly srcIdentity: number, readonly dstIdentity: number) {}

  refresh (snap: Snapshot): void {
    if (snap === this.snapshot) return
    this.snapshot = snap
    this.srcEndpoint = endpointByIp(snap, this.srcIp)
    this.dstEndpoint = endpointByIp(snap, this.dstIp)
    this.ingress = this.dstEndpoint === undefined ? undefined : snap.http.get(l7Key(this.dstEndpoint.id, DIR.INGRESS, this.dstPort))
    this.egress = this.srcEndpoint === undefined ? undefined : snap.http.get(l7Key(this.srcEndpoint.id, DIR.EGRESS, this.dstPort))
    this.ingressActions = hasHeaderActions(this.ingress)
    this.egressActions = hasHeaderActions(this.egress)
  }

  /**
   * After a denial: does the endpoint whose table denied audit (Endpoint.audit)? Then the
   * request is forwarded and reported as `audit`. With no table at all, either end auditing counts.
   */
  audits (): boolean {
    const r = this.reason
    if (r === 'ingress-no-rule-match') return this.dstEndpoint?.audit === true
    if (r === 'egress-no-rule-match') return this.srcEndpoint?.audit === true
    return this.dstEndpoint?.audit === true || this.srcEndpoint?.audit === true
  }

  /** After a denial: a rule of the table that denied (names the policy that put L7 rules there). */
  checkedRule (): RuleRef | null {
    const r = this.reason
    const table = r === 'ingress-no-rule-match' ? this.ingress : r === 'egress-no-rule-match' ? this.egress : undefined
    if (table === undefined) return null
    const p = table.byIdentity.get(r === 'ingress-no-rule-match' ? this.srcIdentity : this.dstIdentity) ?? table.anyIdentity
    if (p !== null && p.rules.length > 0) return p.rules[0].rule
    for (const q of table.byIdentity.values()) if (q.rules.length > 0) return q.rules[0].rule
    return table.anyIdentity?.rules[0]?.rule ?? null
  }

  /** true = allowed (this.rule set), false = denied (this.reason set). */
  decide (req: HttpRequestView): boolean {
    this.rule = null
    this.reason = null
    this.actions.length = 0
    if (this.ingress === undefined && this.egress === undefined) { this.reason = 'no-l7-table'; return false }
    let rule: RuleRef | null = null
    if (this.ingress !== undefined) {
      rule = decideHttp(this.ingress, this.srcIdentity, req)
      if (rule === null) { this.reason = 'ingress-no-rule-match'; return false }
    }
    if (this.egress !== undefined) {
      const r = decideHttp(this.egress, this.dstIdentity, req)
      if (r === null) { this.reason = 'egress-no-rule-match'; return false }
      if (rule === null) rule = r
    }
    this.rule = rule
    if (this.ingressActions) headerMismatches(this.ingress as L7PortTable<HttpPolicy>, this.srcIdentity, req, this.actions)
    if (this.egressActions) headerMismatches(this.egress as L7PortTable<HttpPolicy>, this.dstIdentity, req, this.actions)
    return true
  }
}

/** HttpRequestView over the parser's flat `[name, value, ...]` header list. */
export class RequestView implements HttpRequestView {
  method = ''
  path = ''
  host = ''
  headers: string[] = []

  getHeader (lowerName: string): string | undefined {
    const h = this.headers
    let out: string | undefined
    for (let i = 0; i < h.length; i += 2) {
      const n = h[i]
      if (n.length === lowerName.length && n.toLowerCase() === lowerName) out = out === undefined ? h[i + 1] : out + ',' + h[i + 1]
    }
    return out
  }
}
