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

/**
 * Longest path or host a decision carries: the ring holds thousands of them, and a request
 * head may be 16 KiB; the access log has the whole target.
 */
export const DECISION_TEXT_MAX = 512

/** `s` cut to DECISION_TEXT_MAX characters, marked with a trailing `...` when cut. */
export function clip (s: string): string {
  return s.length <= DECISION_TEXT_MAX ? s : s.slice(0, DECISION_TEXT_MAX - 3) + '...'
}

/** RuleRef fields only (a snapshot's RuleRef may be a richer object). */
export function ruleRef (r: RuleRef | null | undefined): RuleRef | undefined {
  if (r === null || r === undefined) return undefined
  return { file: r.file, line: r.line, kind: r.kind, policy: r.policy, spec: r.spec, section: r.section, index: r.index }
}
