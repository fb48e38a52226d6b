/**
 * The datapath as the agent sees it: the options it opens with and what it can do once open.
 */
import type { Logger } from 'pino'
import type { Snapshot, SnapshotDiff } from '../../policy-store/src/types.js'
import type { FlowEvent } from './events.js'

export interface DatapathOptions {
  /** bpffs directory for this instance's pins (default /sys/fs/bpf/warden). */
  bpffs: string
  /** Transparent TCP listener port of the HTTP proxy. */
  proxyPort: number
  /** Transparent UDP (and TCP) port of the DNS proxy. */
  dnsProxyPort: number
  /** Interfaces whose ingress traffic comes from outside the node's workloads. */
  uplinks: string[]
  /** Policy routing table for marked (to-proxy) packets; default 2004. */
  routeTable?: number
  /**
   * max_entries of the kernel ipcache (default DEFAULT_IPCACHE_MAX_ENTRIES, Cilium's). A pinned
   * ipcache of another size is replaced by one of this size holding the same entries, with no
   * moment where the attached programs see none (see prepareIpcache).
   */
  ipcacheMaxEntries?: number
  /**
   * BPF host routing (default on): a packet let through to a local endpoint goes straight
   * into its namespace instead of through the host's IP stack (L7P_FEAT_HOST_ROUTING in l7p.h).
   * Off: the host routes it, its netfilter FORWARD rules see it (Cilium's legacy host routing).
   */
  hostRouting?: boolean
  /**
   * How often the maps are read back whole and compared with the last applied snapshot, drift
   * repaired and counted (default 5 minutes; 0: never). Applies write only what their diff names.
   */
  fullSyncIntervalMs?: number
  /**
   * How often expired conntrack entries are deleted (default 30 s; 0: never). The LRU map keeps
   * an expired entry until it needs the room, and then it evicts the least recently used one,
   * which on a node with churn can be a live connection that was idle: its next packet would be
   * judged as a new flow (a reply as a flow of its own, which the client's ingress may drop).
   */
  ctGcIntervalMs?: number
  logger: Logger
}

export interface Datapath {
  /**
   * Bring the kernel in line with `snap`. With a `diff` from the snapshot the kernel holds (its
   * `from` is that version), only the keys the diff names are written: the normal path, whose
   * cost follows the change. Without one, or when the diff does not start from what the kernel
   * holds (a missed snapshot, a failed apply), a full sync: the maps are read back, compared
   * with the whole snapshot, and the differences written. In both, removals go before upserts,
   * new endpoints' interfaces are attached and removed ones detached. A full sync also runs
   * every `fullSyncIntervalMs` against the last snapshot and logs the drift it repairs.
   * The first apply after open re-attaches every filter (heals what was removed while the
   * agent was down). Applies run one at a time, in call order.
   */
  apply (snap: Snapshot, diff?: SnapshotDiff): Promise<void>
  /** ipcache longest-prefix lookup; world (2) when nothing matches. */
  lookupIdentity (ipv4: string): number
  /**
   * Is there a live CT entry with this address at either end? Answers within one turn of the
   * event loop come from one dump of the CT map.
   */
  hasConnection (remoteIpv4: string): boolean
  /** Delete the expired conntrack entries now (also done every `ctGcIntervalMs`); returns how many went. */
  collectCt (): number
  onFlow (fn: (ev: FlowEvent) => void): void
  /** For `warden status`: interfaces waiting to appear, and each map's fill (entries of max). */
  inspect (): DatapathInspection
  /**
   * Kernel counters per reason (summed over CPUs), names from REASONS; `ct_gc_deleted`, and
   * `ipcache_left_out`: the entries of the snapshot in force the ipcache had no room for.
   */
  counters (): Record<string, number>
  /** Stop polling; leave programs, pins, rule and route in place. */
  close (): Promise<void>
}

export interface DatapathInspection {
  /** Endpoint (and uplink) interfaces not found yet: not attached, nothing enforced there. */
  pending: string[]
  /** Entries each map holds and its max_entries (warden.bpf.c). */
  maps: Record<string, { entries: number, max: number }>
}
