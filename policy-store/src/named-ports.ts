/**
 * Named ports (`port: "http"`) resolved for one endpoint's entries, as Kubernetes and Cilium
 * resolve them: on ingress to the endpoint's own container port of that name; on egress to the
 * container port of that name of each peer (by identity: every endpoint that carries it, on this
 * node or, in cluster mode, on another, from its ipcache entry's NamedPorts).
 * A name no container port has resolves to nothing: the element allows nothing there (fail
 * closed), as Cilium drops a named port it cannot resolve (pkg/policy/l4.go, `GetNamedPort`).
 * A peer that is not an endpoint (world, a CIDR) has no named ports.
 */
import type { NamedPortItem, PortItem, RuleElement } from './model.js'
import { DIR, type ContainerPort, type Direction, type Endpoint } from './types.js'

const PROTO_NUM = { TCP: 6, UDP: 17, SCTP: 132 } as const

/** The numbers `named` resolves to among `ports`. */
function lookup (named: readonly NamedPortItem[], ports: readonly ContainerPort[], isDns: boolean): PortItem[] {
  const out: PortItem[] = []
  for (const n of named) {
    for (const cp of ports) {
      const proto = PROTO_NUM[cp.protocol]
      if (cp.name !== n.name || (n.protocol !== 0 && n.protocol !== proto) || (isDns && proto === 132)) continue
      out.push({ protocol: proto, port: cp.port, endPort: cp.port })
    }
  }
  return out
}

/**
 * `el` (with named ports) as elements with numeric ports only, each with the peers it is for.
 * `ownPorts`: the endpoint's container ports; `portsOf`: the container ports carried by each
 * peer identity (the union over its local endpoints).
 */
export function resolveNamedPorts (el: RuleElement, ids: readonly number[] | null, direction: Direction,
  ownPorts: readonly ContainerPort[], portsOf: ReadonlyMap<number, readonly ContainerPort[]>): { el: RuleElement, ids: readonly number[] | null }[] {
  const named = el.namedPorts ?? []
  const numeric = el.ports ?? []
  const isDns = el.dns !== null
  if (direction === DIR.INGRESS) {
    return [{ el: { ...el, ports: [...numeric, ...lookup(named, ownPorts, isDns)], namedPorts: null }, ids }]
  }
  const out: { el: RuleElement, ids: readonly number[] | null }[] = []
  if (numeric.length > 0) out.push({ el: { ...el, ports: numeric, namedPorts: null }, ids })
  // Peers grouped by what the names resolve to for them: one element per distinct port set.
  const groups = new Map<string, { ports: PortItem[], ids: number[] }>()
  for (const id of ids ?? portsOf.keys()) {
    const cps = portsOf.get(id)
    if (cps === undefined) continue
    const ports = lookup(named, cps, isDns)
    if (ports.length === 0) continue
    const key = ports.map((p) => `${p.protocol}/${p.port}`).join(',')
    const g = groups.get(key)
    if (g === undefined) groups.set(key, { ports, ids: [id] })
    else g.ids.push(id)
  }
  for (const g of groups.values()) out.push({ el: { ...el, ports: g.ports, namedPorts: null }, ids: g.ids })
  return out
}

/** A stable text of an endpoint's ports, to tell when they changed. */
export function portsKey (ports: readonly ContainerPort[]): string {
  return ports.map((p) => `${p.name}=${p.protocol}/${p.port}`).join(',')
}

/**
 * The container ports each identity carries: the union over this node's endpoints and other
 * nodes' pods (`remote`: identity -> ports) of that identity, each port once.
 */
export function portsByIdentity (endpoints: readonly Endpoint[], remote: Iterable<readonly [number, readonly ContainerPort[]]>): Map<number, ContainerPort[]> {
  const portsOf = new Map<number, ContainerPort[]>()
  const seen = new Set<string>()
  const add = (identity: number, ports: readonly ContainerPort[]): void => {
    for (const p of ports) {
      const k = `${identity}/${p.name}/${p.protocol}/${p.port}`
      if (seen.has(k)) continue
      seen.add(k)
      const l = portsOf.get(identity)
      if (l === undefined) portsOf.set(identity, [p])
      else l.push(p)
    }
  }
  for (const e of endpoints) add(e.identity, e.ports)
  for (const [identity, ports] of remote) add(identity, ports)
  return portsOf
}
