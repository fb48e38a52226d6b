/**
 * The local identities the rules themselves ask for: the CIDR prefixes (cidr, cidrGroupRef and
 * their `except`s) and the FQDN selectors (toFQDNs) named in the policy files.
 */
import { formatPrefix, type Prefix } from './cidr.js'
import type { NameMatcher } from './matchers.js'
import type { FilePolicies } from './model.js'
import type { FqdnSelector } from './types.js'

/** A rule's CIDR prefixes and FQDN matchers (they make local identities). */
interface RuleLocals { prefixes: Prefix[], fqdns: NameMatcher[], groups: string[] }

/** The CIDR prefixes and FQDN matchers of a file's rules, in order (computed once per file version). */
const localsCache = new WeakMap<FilePolicies, RuleLocals[]>()
function fileLocals (f: FilePolicies): RuleLocals[] {
  let list = localsCache.get(f)
  if (list === undefined) {
    list = []
    for (const r of f.rules) {
      const out: RuleLocals = { prefixes: [], fqdns: [], groups: [] }
      for (const el of r.elements) {
        for (const p of el.peers ?? []) {
          if (p.kind === 'cidr') out.prefixes.push(p.prefix, ...p.except)
          else if (p.kind === 'cidrGroup') { out.groups.push(p.name); out.prefixes.push(...p.except) } else if (p.kind === 'fqdn') out.fqdns.push(p.matcher)
        }
      }
      if (out.prefixes.length > 0 || out.fqdns.length > 0 || out.groups.length > 0) list.push(out)
    }
    localsCache.set(f, list)
  }
  return list
}

/**
 * The prefixes the files' rules name (by text; the default route and addresses of the fixed
 * part, `taken`, left out) and their FQDN selectors by key, in input order.
 */
export function ruleLocals (files: readonly FilePolicies[], groups: ReadonlyMap<string, readonly Prefix[]>, taken: ReadonlySet<number>): { prefixes: Map<string, Prefix>, fqdnSelectors: Map<string, FqdnSelector> } {
  const fqdnSelectors = new Map<string, FqdnSelector>()
  const prefixes = new Map<string, Prefix>()
  for (const rl of files.flatMap(fileLocals)) {
    for (const x of [...rl.prefixes, ...rl.groups.flatMap((g) => groups.get(g) ?? [])]) {
      if (x.len === 0 || (x.len === 32 && taken.has(x.addr))) continue
      prefixes.set(formatPrefix(x), x)
    }
    for (const m of rl.fqdns) if (!fqdnSelectors.has(m.key)) fqdnSelectors.set(m.key, { key: m.key, test: m.test })
  }
  return { prefixes, fqdnSelectors }
}
