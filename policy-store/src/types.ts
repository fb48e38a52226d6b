/**
 * The contract between the policy store and its consumers (the datapath in redirect-bpf/, the
 * HTTP and DNS proxies in proxy/, the agent). The store produces one immutable `Snapshot` per
 * change; consumers never mutate it and never reach into the store's internals.
 *
 * Vocabulary is Cilium's: an "identity" is the number given to a distinct label set, "labels"
 * are `source:key=value` strings, directions are seen from the endpoint that enforces.
 */

/** IP protocol numbers as they appear in the IPv4 header. 0 means "any" in policy keys. */
export const PROTO = { ANY: 0, ICMP: 1, TCP: 6, UDP: 17, SCTP: 132 } as const
export type ProtocolNumber = 0 | 1 | 6 | 17 | 132

/**
 * ICMP entries (protocol 1) carry the ICMP type as their port: ICMP_PORT_BASE | type, so that
 * type 0 (echo reply) is not port 0 ("any port"). The kernel program looks ICMP packets up
 * the same way (L7P_ICMP_PORT_BASE in redirect-bpf/bpf/l7p.h). Cilium keys ICMP types as
 * ports too (pkg/policy/api/icmp.go, ICMPField.PortProtocol).
 */
export const ICMP_PORT_BASE = 0x100

/** Direction as seen from the endpoint the entry belongs to. Numeric so it can go in a map key. */
export const DIR = { INGRESS: 0, EGRESS: 1 } as const
export type Direction = 0 | 1

/**
 * Cilium's reserved identities (pkg/identity/numericidentity.go). Cluster identities are
 * allocated from MIN_CLUSTER_IDENTITY; node-local ones (CIDR, FQDN) from LOCAL_IDENTITY_BASE.
 */
export const RESERVED = {
  UNKNOWN: 0,
  HOST: 1,
  WORLD: 2,
  UNMANAGED: 3,
  HEALTH: 4,
  INIT: 5,
  REMOTE_NODE: 6,
  KUBE_APISERVER: 7,
  INGRESS: 8,
  WORLD_IPV4: 9,
  WORLD_IPV6: 10
} as const
export const MIN_CLUSTER_IDENTITY = 256
export const MAX_CLUSTER_IDENTITY = 65535
export const LOCAL_IDENTITY_BASE = 1 << 24

/** Identity 0 in a kernel entry's `remoteIdentity` means "any identity". */
export const ANY_IDENTITY = 0

/** A label as Cilium prints it: `source:key=value` (e.g. `k8s:app=billing-service`). */
export type Label = string

/** A workload's named container port (the endpoints file's `ports`). */
export interface ContainerPort {
  /** IANA_SVC_NAME (lower case). */
  name: string
  port: number
  protocol: 'TCP' | 'UDP' | 'SCTP'
}

/** Where a rule came from, for logs ("on which rule") and for `warden trace`. */
export interface RuleRef {
  /** Policy file path as given on the command line (relative paths stay relative). */
  file: string
  /** 1-based line of the rule element (the ingress/egress list item) in that file. */
  line: number
  kind: 'CiliumNetworkPolicy' | 'CiliumClusterwideNetworkPolicy'
  /** `namespace/name` for CNP, `name` for CCNP. */
  policy: string
  /** Index in `specs` (0 when the document used `spec`). */
  spec: number
  /** `ingress` | `egress` | `ingressDeny` | `egressDeny`, and the element index in it. */
  section: 'ingress' | 'egress' | 'ingressDeny' | 'egressDeny'
  index: number
}

/** A workload on this node, from the endpoints file, with what the store derived for it. */
export interface Endpoint {
  /**
   * Small number (1..65535) used in kernel map keys: the same for a `namespace/name` while the
   * endpoint exists and for the release grace period after (identity.ts), then reusable.
   */
  id: number
  name: string
  namespace: string
  /** The labels as written in the endpoints file (no source prefix). */
  labels: Readonly<Record<string, string>>
  /**
   * Identity labels: `k8s:<k>=<v>` for each identity-relevant label (label-filter.ts) plus
   * `k8s:io.kubernetes.pod.namespace=<ns>`. Sorted.
   */
  identityLabels: readonly Label[]
  identity: number
  /**
   * The identity labels it waits to be numbered for, when the allocator could not number them
   * (cluster mode, etcd unreachable): it then has the reserved `init` identity (5) with
   * `identityLabels` `reserved:init`, or, relabelled, keeps its previous identity. Absent
   * otherwise.
   */
  pendingIdentityLabels?: readonly Label[]
  ipv4: string
  /** Host-side veth name. */
  interface: string
  /** Named container ports, which a rule's `port: "<name>"` resolves to. */
  ports: readonly ContainerPort[]
  /** Where in the endpoints file it was declared (for error messages). */
  line: number
  /**
   * Policy audit mode (`audit: true` in the endpoints file, or the agent's node-wide flag): what
   * its policy would drop or deny is let through and reported with the verdict `audit`.
   * Absent when false.
   */
  audit?: true
}

/** What the kernel does with a new connection that matches an entry. */
export type Verdict = 'allow' | 'deny' | 'redirect-http' | 'redirect-dns'

/**
 * One kernel policy entry. Keys are resolved so that a FIRST-MATCH lookup in this fixed order
 * gives Cilium's answer (deny beats allow, more specific port beats wildcard):
 *
 *   1. (remoteIdentity, protocol, port)      4. (ANY,      protocol, ANY port)
 *   2. (ANY,            protocol, port)      5. (remoteIdentity, ANY proto, ANY port)
 *   3. (remoteIdentity, protocol, ANY port)  6. (ANY,      ANY proto, ANY port)
 *
 * The compiler guarantees it: an allow or redirect that a broader deny covers is emitted as a
 * deny at the narrower key. `protocol` ANY (0) only appears with `port` 0. A miss in all six is
 * a drop (default deny) -- directions that no rule selects get an explicit entry 6 `allow`.
 * Port ranges are kept as ranges here (`port`..`endPort`, inclusive); the datapath expands them.
 */
export interface KernelEntry {
  endpointId: number
  direction: Direction
  /** 0 = any identity. */
  remoteIdentity: number
  protocol: ProtocolNumber
  /** 0 = any port (then endPort is 0 too). */
  port: number
  endPort: number
  verdict: Verdict
  /** The rule that produced it; for default-allow entries `undefined`. */
  rule?: RuleRef
  /** Why, when there is no rule: e.g. `no policy selects this endpoint for egress`. */
  reason?: string
}

/** An ipcache entry: longest prefix wins. Endpoints are /32. `0.0.0.0/0` maps to world. */
export interface IpcacheEntry {
  /** `a.b.c.d/len` */
  prefix: string
  identity: number
  /** Endpoint id when the prefix is a local endpoint's /32, else 0. */
  endpointId: number
  /** That local endpoint audits (Endpoint.audit); absent for every other prefix. */
  audit?: boolean
  /**
   * The prefix is here only because a DNS answer gave it (toFQDNs), no rule names it; absent
   * otherwise. The datapath leaves such entries out first when the ipcache is full.
   */
  learnedOnly?: true
}

/** A precompiled full-match string matcher (literal compare, prefix, or RE2 `^(?:re)$`). */
export interface StringMatcher {
  /** The pattern as written in the policy (for logs and trace output). */
  readonly source: string
  test (value: string): boolean
}

/** Header requirement from `headers` or `headerMatches` (without mismatch actions). */
export interface HeaderRequirement {
  /** Lower-cased header name. */
  name: string
  /** Exact value, or null for "must be present". */
  value: string | null
}

/**
 * What a `headerMatches` item with `mismatch` does when the header does not match (Cilium's
 * MismatchAction, pkg/policy/api/http.go; applied as cilium/proxy's HeaderMatches does): the
 * rule still matches, and LOG records the mismatch, ADD appends `name: value`, DELETE removes a
 * header present with another value, REPLACE sets the header to `value`.
 */
export type MismatchAction = 'LOG' | 'ADD' | 'DELETE' | 'REPLACE'

export interface HeaderAction {
  /** Lower-cased header name. */
  name: string
  /** Exact value; null = the header must only be present (ADD and REPLACE then write ''). */
  value: string | null
  mismatch: MismatchAction
}

/** One `rules.http[]` item, compiled. Null fields are not checked (never matched against `.*`). */
export interface CompiledHttpRule {
  method: StringMatcher | null
  path: StringMatcher | null
  host: StringMatcher | null
  headers: readonly HeaderRequirement[]
  /** `headerMatches` items with a `mismatch` action; absent or empty when none. */
  headerActions?: readonly HeaderAction[]
  rule: RuleRef
  /** Index in the rule's `http` list. */
  httpIndex: number
}

/** The request as the proxy sees it (path already normalised, host = Host header verbatim). */
export interface HttpRequestView {
  method: string
  /** Normalised request target including the query string (Cilium matches `:path` with it). */
  path: string
  /** Host header value, including `:port` when sent; '' when absent. */
  host: string
  /** Lower-cased header name -> value (repeated headers joined with ','). */
  getHeader (lowerName: string): string | undefined
}

/**
 * What one remote identity may do on one L7 port. `allowAll` is set when some rule allows the
 * identity on this port without L7 rules (Cilium's L7 wildcarding) -- the flow is still proxied.
 */
export interface HttpPolicy {
  allowAll: boolean
  /** Set when allowAll is true: the rule that opened the port at L4. */
  allowAllRule?: RuleRef
  rules: readonly CompiledHttpRule[]
}

export interface DnsPolicy {
  allowAll: boolean
  allowAllRule?: RuleRef
  /** Compiled `matchName`/`matchPattern` items; a name must match one. */
  rules: readonly { pattern: string, test (fqdn: string): boolean, rule: RuleRef }[]
}

/**
 * The L7 policy of one (endpoint, direction, protocol, port range). Lookups by remote identity:
 * `byIdentity.get(id)`, else `anyIdentity` (rules whose peer was a wildcard), else denied.
 * Both may apply: the proxy allows if either allows.
 */
export interface L7PortTable<P> {
  endpointId: number
  direction: Direction
  protocol: ProtocolNumber
  /** First and last port the table covers (equal for one port). */
  port: number
  endPort: number
  byIdentity: ReadonlyMap<number, P>
  anyIdentity: P | null
}

/** FQDN selector from a `toFQDNs` item, and the identities that currently carry it. */
export interface FqdnSelector {
  /** Canonical key: `matchName:api.github.com.` or `matchPattern:*.github.com.` */
  key: string
  /** Does a (lower-case, trailing-dot) name match? */
  test (fqdn: string): boolean
}

/** A name learned by the DNS proxy, fed back into the store (see `FqdnSource`). */
export interface LearnedName {
  /** Lower-case, with trailing dot. */
  name: string
  ipv4: readonly string[]
  /** Absolute expiry in ms since the epoch. */
  expiresAt: number
}

export interface Snapshot {
  /** Monotonic, starts at 1. */
  readonly version: number
  readonly createdAt: number
  readonly endpoints: readonly Endpoint[]
  /** identity -> its labels, for every identity the snapshot uses (reserved ones included). */
  readonly identities: ReadonlyMap<number, readonly Label[]>
  readonly ipcache: readonly IpcacheEntry[]
  readonly kernel: readonly KernelEntry[]
  /**
   * Key: l7Key(endpointId, direction, first port of the table). `get` with the l7Key of any port
   * a table covers finds it (l7-tables.ts): a port range is one table. Only ports whose kernel
   * verdict is redirect-http.
   */
  readonly http: ReadonlyMap<number, L7PortTable<HttpPolicy>>
  /** Key: l7Key(endpointId, EGRESS, port). Only ports whose kernel verdict is redirect-dns. */
  readonly dns: ReadonlyMap<number, L7PortTable<DnsPolicy>>
  readonly fqdnSelectors: readonly FqdnSelector[]
}

/**
 * Numeric key for L7 tables: no template strings on the hot path.
 * endpointId < 2^16, direction 1 bit, port < 2^16: fits well below 2^53.
 */
export function l7Key (endpointId: number, direction: Direction, port: number): number {
  return (endpointId * 2 + direction) * 65536 + port
}

/**
 * What the other nodes of a cluster publish, as the compiler takes it (cluster mode, cluster/):
 * the cluster identities known cluster-wide with their labels -- selectors match them like the
 * local pods' --, and the ipcache entries of other nodes' pods (their identity) and of the other
 * nodes themselves (`remote-node`), all with endpointId 0. A local endpoint or node address wins
 * over a remote entry for the same prefix. Pass the same objects again for what did not change:
 * the compiler then skips that work, and an unchanged entry object is no kernel write.
 */
export interface RemoteState {
  readonly identities: ReadonlyMap<number, readonly Label[]>
  readonly ipcache: readonly IpcacheEntry[]
  /**
   * Named container ports of other nodes' pods, per identity (the union over its pods): egress
   * rules resolve `port: "<name>"` with them as with local peers'. The same object while the
   * union is unchanged.
   */
  readonly namedPorts?: ReadonlyMap<number, readonly ContainerPort[]>
  /**
   * Optional: `ipcache` is the list `from` with these prefixes set to these entries (null:
   * removed). A compiler that compiled `from` applies them instead of comparing every entry, so
   * one remote change costs what it touches; any other compiler ignores them.
   */
  readonly ipcacheChanges?: IpcacheChanges
}

export interface IpcacheChanges {
  readonly from: readonly IpcacheEntry[]
  readonly changed: ReadonlyArray<{ readonly prefix: string, readonly entry: IpcacheEntry | null }>
}

/**
 * What changed between two consecutive snapshots (`from` -> `to`); the datapath applies it
 * without flushing. The store emits every snapshot it compiles, so the diffs chain: applying
 * each in turn to the state of `from` gives exactly the state of `to`.
 *
 * Kernel entries (keyed by endpointId, direction, remoteIdentity, protocol, port, endPort) and
 * ipcache entries (keyed by prefix) are map writes: `...Added` holds the keys that are new or
 * whose value changed (write them), `...Removed` the keys that are gone (delete them). The
 * two never share a key, so they may be applied in either order.
 *
 * Endpoints are objects with side effects (an attached interface): an endpoint whose identity,
 * address or interface changed is in both lists, with its old values in `endpointsRemoved`;
 * apply the removals first.
 */
export interface SnapshotDiff {
  from: number
  to: number
  kernelAdded: readonly KernelEntry[]
  kernelRemoved: readonly KernelEntry[]
  /**
   * The endpoints (ids) whose kernel entries changed, removed endpoints included. Entries of
   * one endpoint may overlap (port ranges of one peer): a datapath that expands them into
   * map keys re-derives these endpoints' keys from `Snapshot.kernel`. Always set by the
   * compiler; optional so that hand-made diffs (tests) need not name it.
   */
  kernelEndpoints?: readonly number[]
  ipcacheAdded: readonly IpcacheEntry[]
  ipcacheRemoved: readonly IpcacheEntry[]
  endpointsAdded: readonly Endpoint[]
  endpointsRemoved: readonly Endpoint[]
}
