/**
 * The validated, normalised form of policy files: what the compiler consumes. Built once per
 * file version (regexes compiled here), shared unchanged across recompiles.
 */
import type { Prefix } from './cidr.js'
import type { Selector } from './labels.js'
import type { NameMatcher } from './matchers.js'
import type { CompiledHttpRule, Direction, RuleRef } from './types.js'

export type Entity = 'all' | 'world' | 'world-ipv4' | 'world-ipv6' | 'cluster' | 'host' | 'remote-node' |
'kube-apiserver' | 'ingress' | 'init' | 'health' | 'unmanaged' | 'none'
export const ENTITIES: readonly Entity[] = ['all', 'world', 'world-ipv4', 'world-ipv6', 'cluster', 'host', 'remote-node',
  'kube-apiserver', 'ingress', 'init', 'health', 'unmanaged', 'none']

export type Peer =
  | { kind: 'endpoints', selector: Selector }
  | { kind: 'entity', entity: Entity }
  | { kind: 'cidr', prefix: Prefix, except: readonly Prefix[] }
  /** `cidrGroupRef`: the CIDRs of the CiliumCIDRGroup of that name, whichever file holds it. */
  | { kind: 'cidrGroup', name: string, except: readonly Prefix[] }
  | { kind: 'fqdn', matcher: NameMatcher }

/**
 * One protocol/port item; protocol is already expanded (ANY with a port -> TCP, UDP, SCTP).
 * An `icmps` type is protocol 1 with port ICMP_PORT_BASE | type (types.ts).
 */
export interface PortItem {
  /** 1, 6, 17, 132; or 0 with port 0 (all protocols, all ports). */
  protocol: 0 | 1 | 6 | 17 | 132
  /** 0 = all ports of that protocol (then endPort 0). */
  port: number
  endPort: number
}

/**
 * A named port (`port: "http"`): resolved per endpoint when the compiler builds an endpoint's
 * entries (ingress: the endpoint's own container ports; egress: each peer's), never here.
 */
export interface NamedPortItem {
  /** Lower-cased IANA_SVC_NAME. */
  name: string
  /** 6, 17, 132; 0 = the container port's own protocol (ANY). */
  protocol: 0 | 6 | 17 | 132
}

export interface DnsRuleItem { pattern: string, test (fqdn: string): boolean, rule: RuleRef }

/**
 * One allow or deny unit: a peer set on a port set, with optional L7 rules. An ingress/egress
 * element with N `toPorts` items gives N of these (each PortRule has its own L7 rules).
 */
export interface RuleElement {
  /** Unique per process, for change detection. */
  readonly uid: number
  readonly ref: RuleRef
  readonly direction: Direction
  readonly deny: boolean
  /** null = any peer (no L3 field, or entity `all`). An empty list selects nothing. */
  readonly peers: readonly Peer[] | null
  /**
   * null = all protocols and ports. With named ports, only the numeric ones (maybe none): an
   * element is never wider than its numbers until its names are resolved.
   */
  readonly ports: readonly PortItem[] | null
  /** Named ports of the element's PortRule; null when it has none. */
  readonly namedPorts: readonly NamedPortItem[] | null
  readonly http: readonly CompiledHttpRule[] | null
  readonly dns: readonly DnsRuleItem[] | null
}

/** One element of `specs` (or the `spec`): its subject and its elements. */
export interface PolicyRule {
  readonly uid: number
  readonly file: string
  readonly kind: 'CiliumNetworkPolicy' | 'CiliumClusterwideNetworkPolicy'
  readonly policy: string
  /** The subject selector, namespace already injected for a CNP. */
  readonly subject: Selector
  readonly elements: readonly RuleElement[]
  /** Does this rule put its subjects into default deny for ingress / egress? */
  readonly defaultDeny: readonly [boolean, boolean]
  /** Number of ingress/egress/ingressDeny/egressDeny list items (for summaries). */
  readonly itemCount: number
  /** Does the rule have a section (allow or deny) in ingress / egress? */
  readonly hasSection: readonly [boolean, boolean]
}

/** A `CiliumCIDRGroup` (cluster-scoped): a named list of CIDRs rules refer to by `cidrGroupRef`. */
export interface CidrGroup {
  name: string
  prefixes: readonly Prefix[]
  /** 1-based line of the document. */
  line: number
}

export interface FilePolicies {
  file: string
  rules: readonly PolicyRule[]
  /** The CIDR groups the file defines (absent = none). */
  cidrGroups?: readonly CidrGroup[]
  /** Number of policy documents. */
  policies: number
  /** Documents of other API groups (Deployments, Services) that were skipped. */
  skipped: number
}

let uidCounter = 0
export function nextUid (): number { return ++uidCounter }
