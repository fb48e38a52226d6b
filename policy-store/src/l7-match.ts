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
import type { DnsPolicy, HttpPolicy, HttpRequestView, L7PortTable, RuleRef } from './types.js'

export function matchHttp (policy: HttpPolicy, req: HttpRequestView): RuleRef | null {
  if (policy.allowAll) return policy.allowAllRule ?? null
  const rules = policy.rules
  for (let i = 0; i < rules.length; i++) {
    const r = rules[i]
    // Cheapest first: method is short, host next, path last (the longest string).
    if (r.method === null) {
      // A CONNECT that the backend accepts becomes a tunnel whose later requests no rule judges:
      // only a rule that names the method may allow it (a host- or header-only rule may not).
      if (req.method === 'CONNECT') continue
    } else if (!r.method.test(req.method)) continue
    if (r.host !== null && !r.host.test(req.host)) continue
    if (r.path !== null && !r.path.test(req.path)) continue
    let headersOk = true
    for (let h = 0; h < r.headers.length; h++) {
      const want = r.headers[h]
      const got = req.getHeader(want.name)
      if (got === undefined || (want.value !== null && got !== want.value)) { headersOk = false; break }
    }
    if (headersOk) return r.rule
  }
  return null
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
