/**
 * The L7 decision, shared by the HTTP proxy's hot path and by `warden trace`, so the two can
 * never disagree. Pure and allocation-free: it returns the deciding rule or null (denied).
 *
 * Cilium semantics (docs/policy.md, "HTTP matching"): fields inside one http rule are ANDed,
 * rules are ORed, a rule with no fields allows everything; method/path/host are full-match RE2;
 * header names are case-insensitive, values exact. Rules for the remote identity and rules whose
 * peer was a wildcard both apply: the request is allowed if either allows it. One difference:
 * `CONNECT` is allowed only by a rule with a `method` that matches it (Envoy, which Cilium runs,
 * does not tunnel CONNECT at all unless configured to).
 */
import type { CompiledHttpRule, DnsPolicy, HeaderAction, HttpPolicy, HttpRequestView, L7PortTable, RuleRef } from './types.js'

export function matchHttp (policy: HttpPolicy, req: HttpRequestView): RuleRef | null {
  if (policy.allowAll) return policy.allowAllRule ?? null
  const rules = policy.rules
  for (let i = 0; i < rules.length; i++) {
    if (ruleMatches(rules[i], req)) return rules[i].rule
  }
  return null
}

/** One rule's own fields (header actions aside: they never make a rule fail). */
function ruleMatches (r: CompiledHttpRule, req: HttpRequestView): boolean {
  // Cheapest first: method is short, host next, path last (the longest string).
  if (r.method === null) {
    // A CONNECT that the backend accepts becomes a tunnel whose later requests no rule judges:
    // only a rule that names the method may allow it (a host- or header-only rule may not).
    if (req.method === 'CONNECT') return false
  } else if (!r.method.test(req.method)) return false
  if (r.host !== null && !r.host.test(req.host)) return false
  if (r.path !== null && !r.path.test(req.path)) return false
  for (let h = 0; h < r.headers.length; h++) {
    const want = r.headers[h]
    const got = req.getHeader(want.name)
    if (got === undefined || (want.value !== null && got !== want.value)) return false
  }
  return true
}

/** Does the table have rules with header actions (then `headerMismatches` has work to do)? */
export function hasHeaderActions (table: L7PortTable<HttpPolicy> | undefined): boolean {
  if (table === undefined) return false
  const has = (p: HttpPolicy | null | undefined): boolean => p != null && p.rules.some((r) => r.headerActions !== undefined && r.headerActions.length > 0)
  if (has(table.anyIdentity)) return true
  for (const p of table.byIdentity.values()) if (has(p)) return true
  return false
}

/**
 * The header actions an allowed request triggers, appended to `out` in rule order: those of
 * every rule for this identity whose own fields match and whose header does not (cilium/proxy,
 * cilium/network_policy.cc HeaderMatches: with header actions present, every matching rule is
 * evaluated and all their actions run, also when an L4-only rule already allows the request).
 * A DELETE whose header is absent, or that only asks for presence, has nothing to remove.
 */
export function headerMismatches (table: L7PortTable<HttpPolicy>, remoteIdentity: number, req: HttpRequestView, out: HeaderAction[]): void {
  const own = table.byIdentity.get(remoteIdentity)
  if (own !== undefined) collect(own, req, out)
  if (table.anyIdentity !== null) collect(table.anyIdentity, req, out)
}

function collect (policy: HttpPolicy, req: HttpRequestView, out: HeaderAction[]): void {
  const rules = policy.rules
  for (let i = 0; i < rules.length; i++) {
    const acts = rules[i].headerActions
    if (acts === undefined || acts.length === 0 || !ruleMatches(rules[i], req)) continue
    for (let a = 0; a < acts.length; a++) {
      const act = acts[a]
      const got = req.getHeader(act.name)
      if (got !== undefined && (act.value === null || got === act.value)) continue
      if (act.mismatch === 'DELETE' && (got === undefined || act.value === null)) continue
      out.push(act)
    }
  }
}

/** Decide one request against the table of (endpoint, direction, port). null = denied. */
export function decideHttp (table: L7PortTable<HttpPolicy> | undefined, remoteIdentity: number, req: HttpRequestView): RuleRef | null {
  if (table === undefined) return null
  const own = table.byIdentity.get(remoteIdentity)
  if (own !== undefined) {
    const hit = matchHttp(own, req)
    if (hit !== null) return hit
  }
  return table.anyIdentity === null ? null : matchHttp(table.anyIdentity, req)
}

export function matchDns (policy: DnsPolicy, fqdn: string): RuleRef | null {
  if (policy.allowAll) return policy.allowAllRule ?? null
  for (let i = 0; i < policy.rules.length; i++) {
    if (policy.rules[i].test(fqdn)) return policy.rules[i].rule
  }
  return null
}

/** Decide one DNS question name (lower-case, trailing dot). null = denied (answer REFUSED). */
export function decideDns (table: L7PortTable<DnsPolicy> | undefined, remoteIdentity: number, fqdn: string): RuleRef | null {
  if (table === undefined) return null
  const own = table.byIdentity.get(remoteIdentity)
  if (own !== undefined) {
    const hit = matchDns(own, fqdn)
    if (hit !== null) return hit
  }
  return table.anyIdentity === null ? null : matchDns(table.anyIdentity, fqdn)
}
