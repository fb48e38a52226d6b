/**
 * The ipcache's fixed part: the entries that are there whatever the rules say (world, this
 * node's addresses, its endpoints, other nodes' entries), which local CIDR/FQDN identities are
 * added to (local-identities.ts).
 */
import { parseIPv4 } from './cidr.js'
import { RESERVED, type Endpoint, type IpcacheEntry, type RemoteState } from './types.js'

/**
 * The ipcache's fixed part by prefix (world, host addresses, endpoints, other nodes' entries),
 * the /32 addresses it takes, and which prefixes are this node's own (they win over remote ones).
 * `endpoints`, `hostKey` and `remote` are the inputs it was built from.
 */
export interface IpcacheBase { endpoints: readonly Endpoint[], hostKey: string, remote: RemoteState['ipcache'] | null, taken: Set<number>, fixed: Map<string, IpcacheEntry>, own: Set<string> }

/** The fixed part, built whole: world, node addresses, endpoints, then other nodes' entries. */
export function buildIpcacheBase (hostIPs: readonly string[], hostKey: string, endpoints: readonly Endpoint[], remote: RemoteState['ipcache'] | null): IpcacheBase {
  const fixed = new Map<string, IpcacheEntry>()
  fixed.set('0.0.0.0/0', { prefix: '0.0.0.0/0', identity: RESERVED.WORLD, endpointId: 0 })
  const taken = new Set<number>()
  for (const ip of hostIPs) {
    const n = parseIPv4(ip)
    if (n === null) continue
    taken.add(n)
    fixed.set(`${ip}/32`, { prefix: `${ip}/32`, identity: RESERVED.HOST, endpointId: 0 })
  }
  for (const e of endpoints) {
    taken.add(parseIPv4(e.ipv4) as number)
    fixed.set(`${e.ipv4}/32`, e.audit === true ? { prefix: `${e.ipv4}/32`, identity: e.identity, endpointId: e.id, audit: true } : { prefix: `${e.ipv4}/32`, identity: e.identity, endpointId: e.id })
  }
  const own = new Set(fixed.keys())
  // Other nodes' pods and addresses: cluster peers, so a CIDR rule does not select them
  // (Cilium's CIDR rules select only non-cluster peers), and the entry object is the remote
  // state's own: an unchanged one is no kernel write.
  for (const e of remote ?? []) {
    if (fixed.has(e.prefix)) continue
    const slash = e.prefix.indexOf('/')
    if (e.prefix.endsWith('/32')) taken.add(parseIPv4(e.prefix.slice(0, slash)) as number)
    fixed.set(e.prefix, e)
  }
  return { endpoints, hostKey, remote, taken, fixed, own }
}
