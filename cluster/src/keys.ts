/**
 * Cilium's kvstore layout under `cilium/state/` (Documentation/kvstore.rst), key by key, with
 * the values as Cilium's Go types marshal them, so an operator who knows Cilium reads them with
 * etcdctl and the two agree on every byte warden writes:
 *
 *   cilium/state/identities/v1/id/<ID>                 -> labels, `src:key=value;` each, sorted
 *   cilium/state/identities/v1/value/<labels>/<node>   -> <ID> (decimal), under the node's lease
 *   cilium/state/identities/v1/locks/<labels>/<lease>  -> the allocation lock (etcd mutex)
 *   cilium/state/ip/v1/default/<IP>                    -> identity.IPIdentityPair JSON (named ports included), under the lease
 *   cilium/state/nodes/v1/<cluster>/<node name>        -> node.Node JSON, under the lease
 *
 * `<node>` in a value key is the node's IPv4 address: Cilium's GetNodeSuffix
 * (daemon/cmd/identity.go, identityAllocatorOwner) returns `node.GetIPv4().String()`.
 *
 * Parsing is strict: a key or value that does not have exactly this shape is refused with
 * WARDEN_ERR_KVSTORE_FORMAT (the caller logs and skips it), never half-read.
 */
import { parseIPv4 } from '../../policy-store/src/cidr.js'
import { MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY, RESERVED, type ContainerPort, type Label } from '../../policy-store/src/index.js'
import { ClusterError, ERR } from './errors.js'

export const STATE_PREFIX = 'cilium/state/'
export const IDENTITIES_PREFIX = 'cilium/state/identities/v1/'
export const ID_PREFIX = IDENTITIES_PREFIX + 'id/'
export const VALUE_PREFIX = IDENTITIES_PREFIX + 'value/'
export const LOCKS_PREFIX = IDENTITIES_PREFIX + 'locks/'
/** Cilium's ipcache address space is always `default` (pkg/ipcache/kvstore.go, AddressSpace). */
export const IPCACHE_PREFIX = 'cilium/state/ip/v1/default/'
export const NODES_PREFIX = 'cilium/state/nodes/v1/'

/**
 * Labels in Cilium's kvstore form (`Label.FormatForKVStore`, `GlobalIdentity.GetKey`): each
 * label `source:key=value;`, ordered by key as `LabelArray.Sort` does (then by source, which
 * only matters for two sources of one key). The input is warden's `source:key=value` strings.
 */
export function formatLabelsKey (labels: readonly Label[]): string {
  const parsed = labels.map(splitLabel)
  parsed.sort((a, b) => a.key < b.key ? -1 : a.key > b.key ? 1 : a.source < b.source ? -1 : a.source > b.source ? 1 : 0)
  let out = ''
  for (const l of parsed) out += `${l.source}:${l.key}=${l.value};`
  return out
}

/** The inverse: `k8s:app=foo;k8s:io.kubernetes.pod.namespace=default;` -> warden labels, sorted. */
export function parseLabelsKey (s: string): Label[] {
  if (s === '') return []
  if (!s.endsWith(';')) throw formatError(`labels ${JSON.stringify(s)} do not end with ';'`, { labels: s })
  const out = s.slice(0, -1).split(';').map((l) => {
    const parsed = splitLabel(l)
    return `${parsed.source}:${parsed.key}=${parsed.value}`
  })
  return out.sort()
}

function splitLabel (l: string): { source: string, key: string, value: string } {
  const colon = l.indexOf(':')
  const eq = l.indexOf('=', colon + 1)
  if (colon <= 0 || eq < 0 || eq === colon + 1 || l.includes(';')) throw formatError(`label ${JSON.stringify(l)} is not source:key=value`, { label: l })
  return { source: l.slice(0, colon), key: l.slice(colon + 1, eq), value: l.slice(eq + 1) }
}

export function idKey (id: number): string { return ID_PREFIX + String(id) }

/** `id/<ID>` -> ID, checked against Cilium's cluster range (cluster-id 0). */
export function parseIdKey (key: string): number {
  if (!key.startsWith(ID_PREFIX)) throw formatError(`${key} is not under ${ID_PREFIX}`, { key })
  return parseIdentity(key.slice(ID_PREFIX.length), key)
}

export function parseIdentity (s: string, where: string): number {
  if (!/^[1-9][0-9]{0,9}$/.test(s)) throw formatError(`${where}: identity ${JSON.stringify(s)} is not a decimal number`, { key: where })
  const n = Number(s)
  if (n < MIN_CLUSTER_IDENTITY || n > MAX_CLUSTER_IDENTITY) throw formatError(`${where}: identity ${n} is outside the cluster range ${MIN_CLUSTER_IDENTITY}..${MAX_CLUSTER_IDENTITY}`, { key: where })
  return n
}

/** The labels prefix of every node's reference to one label set (ends with '/'). */
export function valuePrefix (labelsKey: string): string { return VALUE_PREFIX + labelsKey + '/' }
export function valueKey (labelsKey: string, nodeSuffix: string): string { return valuePrefix(labelsKey) + nodeSuffix }

/** `value/<labels>/<node>` -> its parts (the node suffix is after the last '/': labels may hold '/'). */
export function parseValueKey (key: string): { labelsKey: string, node: string } {
  if (!key.startsWith(VALUE_PREFIX)) throw formatError(`${key} is not under ${VALUE_PREFIX}`, { key })
  const rest = key.slice(VALUE_PREFIX.length)
  const slash = rest.lastIndexOf('/')
  if (slash <= 0 || slash === rest.length - 1) throw formatError(`${key}: no node suffix`, { key })
  return { labelsKey: rest.slice(0, slash), node: rest.slice(slash + 1) }
}

export function lockKey (labelsKey: string): string { return LOCKS_PREFIX + labelsKey }

export function ipcacheKey (ip: string): string { return IPCACHE_PREFIX + ip }
export function nodeKey (cluster: string, name: string): string { return `${NODES_PREFIX}${cluster}/${name}` }
export function nodesPrefix (cluster: string): string { return `${NODES_PREFIX}${cluster}/` }

/**
 * warden's own key, outside Cilium's `cilium/state/` (and under the `cilium/` prefix the agents'
 * etcd role may write): each node's marker, written without a lease at every session start. If
 * it is gone or was written at another revision than the node last wrote it, etcd lost data.
 */
export function markerKey (cluster: string, name: string): string { return `cilium/warden/v1/markers/${cluster}/${name}` }

/**
 * One ipcache entry, Cilium's `identity.IPIdentityPair` (pkg/identity/identity.go) with its JSON
 * field names. `Mask` is a Go net.IPMask: null for a single address (what agents publish for
 * endpoints), else base64 of its bytes. `Key` is the encryption key index (0: none). The
 * `omitempty` fields are absent when empty: `K8sNamespace`, `K8sPodName`, `K8sServiceAccount`
 * (warden has none to write) and `NamedPorts`, the pod's named container ports -- what another
 * node's egress rules resolve `port: "<name>"` with.
 */
export interface IPIdentityPair {
  IP: string
  Mask: string | null
  HostIP: string
  ID: number
  Key: number
  Metadata: string
  K8sNamespace?: string
  K8sPodName?: string
  K8sServiceAccount?: string
  NamedPorts?: NamedPortJson[]
}

/**
 * Cilium's `identity.NamedPort`: `Protocol` as its u8proto names it (`TCP`, `UDP`, `SCTP`).
 * Cilium writes them ordered by `Name` (pkg/ipcache/kvstore.go, the upsert of an IP).
 */
export interface NamedPortJson { Name: string, Port: number, Protocol: string }

/**
 * Named ports read per remote entry at most (Kubernetes sets no limit; a peer must not set
 * this node's memory): an entry with more is refused as malformed.
 */
export const MAX_NAMED_PORTS = 128

/** What warden publishes for one local endpoint. */
export interface EndpointRecord {
  ip: string, hostIP: string, identity: number, namespace: string, pod: string, cluster: string, node: string, endpointId: number
  /** Its named container ports (the endpoints file's `ports`). */
  ports?: readonly ContainerPort[]
}

/**
 * The value, field order as Go's encoding/json writes the struct. Metadata is Cilium's
 * `FormatGlobalEndpointID`: `cilium-global:<cluster>:<node>:<endpoint id>`.
 */
export function formatIpcacheValue (e: EndpointRecord): string {
  const v: IPIdentityPair = {
    IP: e.ip, Mask: null, HostIP: e.hostIP, ID: e.identity, Key: 0,
    Metadata: `cilium-global:${e.cluster}:${e.node}:${e.endpointId}`,
    K8sNamespace: e.namespace, K8sPodName: e.pod
  }
  if (e.ports !== undefined && e.ports.length > 0) {
    v.NamedPorts = [...e.ports].sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
      .map((p) => ({ Name: p.name, Port: p.port, Protocol: p.protocol }))
  }
  return JSON.stringify(v)
}

/** A remote ipcache entry, as warden uses it. */
export interface RemoteIp { ip: string, prefixLen: number, hostIP: string, identity: number, namespace: string, pod: string, ports: ContainerPort[] }

/** IANA_SVC_NAME, as Kubernetes and Cilium (`iana.IsSvcName`) check a port name, lower-cased. */
const PORT_NAME = /^(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$/

/**
 * `NamedPorts` strictly: a list of at most MAX_NAMED_PORTS objects with a valid name (compared
 * lower-case, as Cilium's ValidatePortName does), a port 1..65535 and a protocol Cilium's reader
 * takes (TCP, UDP, SCTP, any case; empty is TCP, Kubernetes' default); one name once.
 */
function parseNamedPorts (key: string, v: unknown): ContainerPort[] {
  if (v === undefined || v === null) return []
  if (!Array.isArray(v)) throw formatError(`${key}: NamedPorts is not a list`, { key })
  if (v.length > MAX_NAMED_PORTS) throw formatError(`${key}: ${v.length} named ports, more than ${MAX_NAMED_PORTS}`, { key, count: v.length })
  const out: ContainerPort[] = []
  const seen = new Set<string>()
  for (const [i, x] of v.entries()) {
    const np = x as Partial<Record<keyof NamedPortJson, unknown>> | null
    if (np === null || typeof np !== 'object' || Array.isArray(np)) throw formatError(`${key}: NamedPorts[${i}] is not an object`, { key })
    const name = typeof np.Name === 'string' ? np.Name.toLowerCase() : null
    if (name === null || name.length > 15 || !PORT_NAME.test(name)) throw formatError(`${key}: NamedPorts[${i}].Name ${JSON.stringify(np.Name)} is not a port name (IANA_SVC_NAME)`, { key })
    if (seen.has(name)) throw formatError(`${key}: NamedPorts names ${name} twice`, { key })
    seen.add(name)
    if (typeof np.Port !== 'number' || !Number.isInteger(np.Port) || np.Port < 1 || np.Port > 65535) throw formatError(`${key}: NamedPorts[${i}].Port ${JSON.stringify(np.Port)} is not a port 1..65535`, { key })
    const proto = typeof np.Protocol === 'string' ? (np.Protocol === '' ? 'TCP' : np.Protocol.toUpperCase()) : null
    if (proto !== 'TCP' && proto !== 'UDP' && proto !== 'SCTP') throw formatError(`${key}: NamedPorts[${i}].Protocol ${JSON.stringify(np.Protocol)} is not TCP, UDP or SCTP`, { key })
    out.push({ name, port: np.Port, protocol: proto })
  }
  return out
}

export function parseIpcacheValue (key: string, value: string): RemoteIp {
  if (!key.startsWith(IPCACHE_PREFIX)) throw formatError(`${key} is not under ${IPCACHE_PREFIX}`, { key })
  const keyIp = key.slice(IPCACHE_PREFIX.length)
  let v: Partial<Record<keyof IPIdentityPair, unknown>> | null
  try { v = JSON.parse(value) as Partial<Record<keyof IPIdentityPair, unknown>> | null } catch (err) { throw formatError(`${key}: value is not JSON: ${(err as Error).message}`, { key }) }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw formatError(`${key}: value is not a JSON object`, { key })
  if (typeof v.IP !== 'string' || parseIPv4(v.IP) === null) throw formatError(`${key}: IP ${JSON.stringify(v.IP)} is not an IPv4 address`, { key })
  if (v.IP !== keyIp) throw formatError(`${key}: IP ${v.IP} differs from the key's`, { key })
  if (typeof v.ID !== 'number' || !Number.isInteger(v.ID)) throw formatError(`${key}: ID is not an integer`, { key })
  // A cluster identity, or `init` (5): Cilium publishes an endpoint with the identity it has,
  // the init one included, until its labels are numbered (pkg/endpoint, SetIdentity).
  const identity = v.ID === RESERVED.INIT ? RESERVED.INIT : parseIdentity(String(v.ID), key)
  const hostIP = typeof v.HostIP === 'string' && (v.HostIP === '' || parseIPv4(v.HostIP) !== null) ? v.HostIP : null
  if (hostIP === null) throw formatError(`${key}: HostIP ${JSON.stringify(v.HostIP)} is not an IPv4 address`, { key })
  // One address only. Agents publish their endpoints with a null Mask; a wider prefix from
  // another node would share a kernel key with other entries (10.1.2.5/24 and 10.1.2.6/24 are
  // both 10.1.2.0/24) or replace this node's own prefixes (a /0 would be `world`).
  const prefixLen = 32
  if (v.Mask !== null && v.Mask !== undefined) {
    if (typeof v.Mask !== 'string') throw formatError(`${key}: Mask is not a base64 string`, { key })
    if (maskLength(Buffer.from(v.Mask, 'base64')) !== 32) throw formatError(`${key}: Mask ${JSON.stringify(v.Mask)} is not a single address (/32): only endpoint addresses are read from other nodes`, { key })
  }
  return {
    ip: v.IP, prefixLen, hostIP, identity,
    namespace: typeof v.K8sNamespace === 'string' ? v.K8sNamespace : '',
    pod: typeof v.K8sPodName === 'string' ? v.K8sPodName : '',
    ports: parseNamedPorts(key, v.NamedPorts)
  }
}

function maskLength (b: Buffer): number | null {
  if (b.length !== 4) return null
  const m = b.readUInt32BE(0)
  const len = 32 - Math.log2((~m >>> 0) + 1)
  return Number.isInteger(len) ? len : null
}

/**
 * Cilium's `node.Node` (pkg/node/types/node.go): no JSON tags, so the Go field names; a
 * `*cidr.CIDR` marshals as the embedded net.IPNet, `{"IP": "...", "Mask": "<base64>"}`. Only
 * the fields warden writes or reads are typed; Cilium's others are written with their zero
 * values so the record decodes the same in Cilium's tools.
 */
export interface NodeRecord { name: string, cluster: string, ipv4: string[], podCidr: string | null }

export function formatNodeValue (n: NodeRecord): string {
  return JSON.stringify({
    Name: n.name,
    Cluster: n.cluster,
    IPAddresses: n.ipv4.map((ip) => ({ Type: 'InternalIP', IP: ip })),
    IPv4AllocCIDR: n.podCidr === null ? null : cidrJson(n.podCidr),
    IPv4SecondaryAllocCIDRs: null,
    IPv6AllocCIDR: null,
    IPv6SecondaryAllocCIDRs: null,
    IPv4HealthIP: '',
    IPv6HealthIP: '',
    IPv4IngressIP: '',
    IPv6IngressIP: '',
    ClusterID: 0,
    Source: 'local',
    EncryptionKey: 0,
    Labels: {},
    Annotations: {},
    NodeIdentity: 0,
    WireguardPubKey: '',
    BootID: ''
  })
}

function cidrJson (cidr: string): { IP: string, Mask: string } {
  const [ip, lenS] = cidr.split('/')
  const len = Number(lenS)
  if (parseIPv4(ip) === null || !/^[0-9]{1,2}$/.test(lenS ?? '') || len > 32) throw formatError(`pod CIDR ${JSON.stringify(cidr)} is not an IPv4 prefix`, { cidr })
  const mask = Buffer.alloc(4)
  mask.writeUInt32BE(len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0)
  return { IP: ip, Mask: mask.toString('base64') }
}

/** A remote node's record: its name (from the key), cluster and IPv4 addresses. */
export function parseNodeValue (key: string, value: string): NodeRecord {
  if (!key.startsWith(NODES_PREFIX)) throw formatError(`${key} is not under ${NODES_PREFIX}`, { key })
  const [cluster, name, ...more] = key.slice(NODES_PREFIX.length).split('/')
  if (cluster === undefined || name === undefined || cluster === '' || name === '' || more.length > 0) throw formatError(`${key} is not ${NODES_PREFIX}<cluster>/<node>`, { key })
  let v: { Name?: unknown, Cluster?: unknown, IPAddresses?: unknown, IPv4AllocCIDR?: unknown } | null
  try { v = JSON.parse(value) as { Name?: unknown, Cluster?: unknown, IPAddresses?: unknown, IPv4AllocCIDR?: unknown } | null } catch (err) { throw formatError(`${key}: value is not JSON: ${(err as Error).message}`, { key }) }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw formatError(`${key}: value is not a JSON object`, { key })
  if (v.Name !== name || v.Cluster !== cluster) throw formatError(`${key}: Name/Cluster ${JSON.stringify(v.Name)}/${JSON.stringify(v.Cluster)} differ from the key's`, { key })
  if (!Array.isArray(v.IPAddresses)) throw formatError(`${key}: IPAddresses is not a list`, { key })
  const ipv4: string[] = []
  for (const a of v.IPAddresses as unknown[]) {
    const ip = (a as { IP?: unknown } | null)?.IP
    if (typeof ip !== 'string') throw formatError(`${key}: an IPAddresses entry has no IP`, { key })
    if (parseIPv4(ip) !== null) ipv4.push(ip) // IPv6 addresses are Cilium's too; warden is IPv4 only
  }
  let podCidr: string | null = null
  const c = v.IPv4AllocCIDR as { IP?: unknown, Mask?: unknown } | null | undefined
  if (c !== null && c !== undefined) {
    const len = typeof c.Mask === 'string' ? maskLength(Buffer.from(c.Mask, 'base64')) : null
    if (typeof c.IP !== 'string' || parseIPv4(c.IP) === null || len === null) throw formatError(`${key}: IPv4AllocCIDR is not an IPv4 prefix`, { key })
    podCidr = `${c.IP}/${len}`
  }
  return { name, cluster, ipv4, podCidr }
}

function formatError (message: string, context: Record<string, unknown>): ClusterError {
  return new ClusterError(ERR.KVSTORE_FORMAT, message, context)
}
