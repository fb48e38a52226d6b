/**
 * What goes into the kernel ipcache when it cannot hold every entry a snapshot wants.
 *
 * The LPM trie has a fixed max_entries (`--ipcache-max-entries`); a write beyond it fails with
 * ENOSPC. The cluster store keeps other nodes' share below the size less a reserve, but this
 * node's own CIDR and FQDN entries have no such bound, and the policy and endpoint maps must
 * be written whatever the ipcache holds: a full ipcache must never keep a new pod from being
 * attached or a policy change from landing. So the datapath checks the room before writing
 * and leaves out what does not fit, in this order (the first kept longest):
 *
 *   0  this node's endpoints, its own addresses (`host`), `0.0.0.0/0` (world)
 *   1  other nodes' addresses (`remote-node`)
 *   2  CIDR prefixes of the policies, the most specific first
 *   3  other nodes' pods
 *   4  addresses only DNS answers gave (toFQDNs; `learnedOnly`: no rule names them)
 *
 * An address left out falls to the next prefix that holds it, usually `0.0.0.0/0`: it is
 * `world`, as any address the node does not know. Why this order:
 * - learned addresses only ever widen what an endpoint may reach (toFQDNs has no deny form),
 *   so leaving one out can only make an allowed destination unreachable; and how many there
 *   are follows DNS answers, which peers control: they must never push anything else out.
 * - other nodes' pods left out are `world` for the rules, what Cilium makes of an address
 *   its ipcache lacks; their number is capped by the cluster store anyway.
 * - a CIDR prefix may carry a deny or an `except`: leaving one out while a broader allowed
 *   prefix stays could open what the policy closes, so they are kept before any peer's entry
 *   and, among themselves, the more specific first (an `except` is never dropped while the
 *   prefix it is cut from is kept). They come from the policies, which the operator bounds.
 * Within the rank that does not fit whole, entries already in the kernel stay (a newcomer of
 * the same rank does not push one out), the rest in key order.
 */
import { LOCAL_IDENTITY_BASE, RESERVED, type IpcacheEntry } from '../../policy-store/src/types.js'

export const RANK_NAMES = ['local', 'remoteNodes', 'cidr', 'remotePods', 'fqdn'] as const
export type RankName = typeof RANK_NAMES[number]

/**
 * Sort order of an encoded entry (key and value as latin1 strings, layout.ts): the rank above,
 * CIDR prefixes subdivided by length so the longer sorts first.
 */
export function ipcacheOrder (key: string, value: string, isLearned: (identity: number) => boolean): number {
  const endpointId = value.charCodeAt(4) | (value.charCodeAt(5) << 8)
  const identity = (value.charCodeAt(0) | (value.charCodeAt(1) << 8) | (value.charCodeAt(2) << 16) | (value.charCodeAt(3) << 24)) >>> 0
  const len = key.charCodeAt(0)
  if (endpointId !== 0 || identity === RESERVED.HOST || len === 0) return 0
  if (identity === RESERVED.REMOTE_NODE) return 100
  if (identity >= LOCAL_IDENTITY_BASE) return isLearned(identity) ? 400 : 200 + (32 - len)
  return 300
}

export function rankName (order: number): RankName {
  return RANK_NAMES[Math.floor(order / 100)]
}

/**
 * The identities of entries that are in the ipcache only because DNS answers gave them
 * (`learnedOnly`): a prefix a rule also names ranks with the CIDR prefixes, so leaving it out
 * can never lift a deny or an `except` on it. One local identity is one prefix.
 */
export function learnedBy (ipcache: readonly IpcacheEntry[]): (identity: number) => boolean {
  const learned = new Set<number>()
  for (const e of ipcache) if (e.learnedOnly === true) learned.add(e.identity)
  return (id) => learned.has(id)
}

export interface Admission {
  /** The entries to hold in the kernel: `want` itself when everything fits. */
  keep: ReadonlyMap<string, string>
  /** Entries left out, per rank (all zero when everything fits). */
  leftOut: Record<RankName, number>
}

export function noneLeftOut (): Record<RankName, number> {
  return { local: 0, remoteNodes: 0, cidr: 0, remotePods: 0, fqdn: 0 }
}

/**
 * Choose at most `max` entries of `want` in the order above; `inKernel` is what the map holds
 * now (kept first within the rank that is cut). Costs one pass over `want` when everything fits
 * (the normal case); a sort of the ranks only when it does not.
 */
export function admitIpcache (want: ReadonlyMap<string, string>, max: number, inKernel: ReadonlyMap<string, string>,
  isLearned: (identity: number) => boolean): Admission {
  const leftOut = noneLeftOut()
  if (want.size <= max) return { keep: want, leftOut }
  const byOrder = new Map<number, string[]>()
  for (const [k, v] of want) {
    const o = ipcacheOrder(k, v, isLearned)
    let list = byOrder.get(o)
    if (list === undefined) byOrder.set(o, list = [])
    list.push(k)
  }
  const keep = new Map<string, string>()
  let room = max
  for (const o of [...byOrder.keys()].sort((a, b) => a - b)) {
    const keys = byOrder.get(o) as string[]
    if (keys.length > room) {
      keys.sort((a, b) => (inKernel.has(a) ? 0 : 1) - (inKernel.has(b) ? 0 : 1) || (a < b ? -1 : a > b ? 1 : 0))
      leftOut[rankName(o)] += keys.length - room
    }
    const n = Math.min(room, keys.length)
    for (let i = 0; i < n; i++) keep.set(keys[i], want.get(keys[i]) as string)
    room -= n
  }
  return { keep, leftOut }
}
