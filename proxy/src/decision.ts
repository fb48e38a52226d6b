/**
 * One L7 decision as the proxies report it to the agent (for `warden observe`): plain data, so a
 * worker thread can post it. The access and query logs stay the record of every exchange; this
 * is the agent's bounded ring of recent ones, and it never holds up the proxy.
 */
import type { RuleRef } from '../../policy-store/src/types.js'

/**
 * `allowed`, `denied` (policy), `audit` (policy would deny; the endpoint audits, so it was
 * forwarded), `rejected` (malformed or over a limit; HTTP only).
 */
export type L7Verdict = 'allowed' | 'denied' | 'audit' | 'rejected'

export interface L7Decision {
  type: 'http' | 'dns'
  /** ms since the epoch */
  time: number
  srcIp: string
  srcPort: number
  dstIp: string
  dstPort: number
  srcIdentity: number
  dstIdentity: number
  verdict: L7Verdict
  /** Why, when not a plain allow: the deny reason (`ingress-no-rule-match`, `no-rule-matches`, ...). */
  reason: string
  /**
   * The rule that allowed; for a denial or an audit, a rule of the L7 table that was checked and
   * did not match (which policy put L7 rules on that port). Absent when there was none.
   */
  rule?: RuleRef
  http?: { method: string, path: string, host: string, status: number }
  dns?: { name: string, qtype: string, rcode?: string }
}

export type DecisionSink = (d: L7Decision) => void

/** RuleRef fields only (a snapshot's RuleRef may be a richer object). */
export function ruleRef (r: RuleRef | null | undefined): RuleRef | undefined {
  if (r === null || r === undefined) return undefined
  return { file: r.file, line: r.line, kind: r.kind, policy: r.policy, spec: r.spec, section: r.section, index: r.index }
}
