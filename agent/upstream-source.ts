/**
 * Which of the proxies' upstream connections and queries keep the client's source address (the
 * HTTP and DNS proxies' `upstreamSource` dependency), for the agent's proxies and its workers.
 *
 * Keeping it works only where the datapath sees the replies: they are addressed to the client,
 * and without a warden program on the way in they would be routed to the client's workload
 * instead of the proxy. A reply from a local endpoint enters through its veth (from_workload);
 * one from anywhere else enters through an uplink, when the agent has one (the operator's
 * statement that off-node traffic comes in there). Otherwise the node's address is used, as
 * before: no lost replies, and the destination sees the node.
 */
import type { Snapshot } from '../policy-store/src/types.js'

export type UpstreamSource = (clientIp: string, dst: { ip: string, port: number }) => string | undefined

export function upstreamSource (hasUplinks: boolean, snapshot: () => Snapshot): UpstreamSource {
  if (hasUplinks) return (clientIp) => clientIp
  let of: Snapshot | undefined
  let local = new Set<string>()
  return (clientIp, dst) => {
    const snap = snapshot()
    if (snap !== of) {
      // once per snapshot, not per connection
      local = new Set(snap.endpoints.map((e) => e.ipv4))
      of = snap
    }
    return local.has(dst.ip) ? clientIp : undefined
  }
}
