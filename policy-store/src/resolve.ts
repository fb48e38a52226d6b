/**
 * Kernel entries and L7 tables for one (endpoint, direction): Cilium's union/deny/L7-wildcard
 * semantics (docs/policy.md) resolved into keys that a FIRST-MATCH lookup in the 6-step order of
 * types.ts answers correctly.
 *
 * Method. Every allow/deny "contribution" is a key (identity or ANY) x (ANY protocol | protocol
 * with any port | protocol with a port segment). Port ranges are cut into disjoint segments at
 * every range boundary, so keys of one level never overlap. The key set is then closed under
 * intersection (e.g. deny (id, *, *) with allow (ANY, TCP, 80) adds (id, TCP, 80)); with that
 * closure, the first key a flow matches is the intersection of all keys covering it, so its
 * verdict can be computed from exactly the contributions covering that key. Keys whose verdict
 * equals what the lookup would fall through to are pruned.
 */
import type { RuleElement } from './model.js'
import {
  ANY_IDENTITY, l7Key, type CompiledHttpRule, type Direction, type DnsPolicy, type HttpPolicy, type KernelEntry,
  type L7PortTable, type ProtocolNumber, type RuleRef, type Verdict
} from './types.js'

export interface DirectionInput {
  /** Elements of the rules selecting the endpoint, with resolved peers (null = any). */
  elements: readonly { el: RuleElement, ids: readonly number[] | null }[]
  /** Some selecting rule has a section for this direction. */
  selected: boolean
  /** Some selecting rule puts this direction into default deny. */
  defaultDeny: boolean
}

export interface DirectionOutput {
  entries: KernelEntry[]
  http: [number, L7PortTable<HttpPolicy>][]
  dns: [number, L7PortTable<DnsPolicy>][]
}

interface Contrib { id: number, el: RuleElement }

const PROTO_SHIFT = 1 << 17

function dirName (d: Direction): string { return d === 0 ? 'ingress' : 'egress' }

export function resolveDirection (endpointId: number, direction: Direction, input: DirectionInput): DirectionOutput {
  const out: DirectionOutput = { entries: [], http: [], dns: [] }
  if (!input.selected) {
    out.entries.push({ endpointId, direction, remoteIdentity: ANY_IDENTITY, protocol: 0, port: 0, endPort: 0, verdict: 'allow', reason: `no policy selects this endpoint for ${dirName(direction)}` })
    return out
  }
  // 1. Segment boundaries per protocol.
  const bounds = new Map<number, Set<number>>()
  for (const { el, ids } of input.elements) {
    if (ids !== null && ids.length === 0) continue
    for (const p of el.ports ?? []) {
      if (p.port === 0) continue
      let b = bounds.get(p.protocol)
      if (b === undefined) bounds.set(p.protocol, b = new Set())
      b.add(p.port)
      b.add(p.endPort + 1)
    }
  }
  const segs = new Map<number, number[]>()
  for (const [proto, b] of bounds) segs.set(proto, [...b].sort((x, y) => x - y))

  // 2. Contributions by protocol/port key, then identity.
  const byPP = new Map<number, Map<number, Contrib[]>>()
  const l7 = new Map<number, 'http' | 'dns'>()
  const addAt = (pp: number, c: Contrib): void => {
    let m = byPP.get(pp)
    if (m === undefined) byPP.set(pp, m = new Map<number, Contrib[]>())
    const list = m.get(c.id)
    if (list === undefined) m.set(c.id, [c])
    else list.push(c)
    if (!c.el.deny && pp % PROTO_SHIFT !== 0) {
      if (c.el.http !== null && !l7.has(pp)) l7.set(pp, 'http')
      else if (c.el.dns !== null && !l7.has(pp)) l7.set(pp, 'dns')
    }
  }
  for (const { el, ids } of input.elements) {
    const idList = ids ?? [ANY_IDENTITY]
    if (idList.length === 0) continue
    const ports = el.ports ?? [{ protocol: 0, port: 0, endPort: 0 }]
    for (const p of ports) {
      const pps: number[] = []
      if (p.protocol === 0) pps.push(0)
      else if (p.port === 0) pps.push(p.protocol * PROTO_SHIFT)
      else {
        const b = segs.get(p.protocol) as number[]
        let k = lowerBound(b, p.port)
        for (; k < b.length - 1 && b[k] <= p.endPort; k++) pps.push(p.protocol * PROTO_SHIFT + 1 + k)
      }
      for (const pp of pps) for (const id of idList) addAt(pp, { id, el })
    }
  }

  // 3. Close the key set under intersection.
  const keys = new Map<number, Set<number>>()
  for (const pp of new Set([...byPP.keys(), ...l7.keys()])) {
    const here = byPP.get(pp)
    const set = new Set<number>(here?.keys() ?? [])
    if (set.has(ANY_IDENTITY) || l7.has(pp)) {
      for (const a of ancestors(pp)) for (const id of byPP.get(a)?.keys() ?? []) set.add(id)
    }
    keys.set(pp, set)
  }

  // 4. Verdicts, general to specific, pruning keys that change nothing.
  const fallbackDefault: Verdict | 'drop' = input.defaultDeny ? 'drop' : 'allow'
  const kept = new Map<number, Map<number, { verdict: Verdict, rule: RuleRef }>>()
  const ordered: { pp: number, id: number, level: number }[] = []
  for (const [pp, ids] of keys) for (const id of ids) ordered.push({ pp, id, level: levelOf(pp, id) })
  ordered.sort((a, b) => b.level - a.level || a.pp - b.pp || a.id - b.id)
  for (const { pp, id } of ordered) {
    const v = verdictOf(byPP, l7, pp, id)
    if (v === null) continue
    let fallback: Verdict | 'drop' = fallbackDefault
    for (const [spp, sid] of supersets(pp, id)) {
      const k = kept.get(spp)?.get(sid)
      if (k !== undefined) { fallback = k.verdict; break }
    }
    if (v.verdict === fallback) continue
    let m = kept.get(pp)
    if (m === undefined) kept.set(pp, m = new Map<number, { verdict: Verdict, rule: RuleRef }>())
    m.set(id, v)
  }

  // 5. Emit, merging adjacent segments with the same verdict and rule.
  for (const [pp, m] of [...kept].sort((a, b) => a[0] - b[0])) {
    const proto = Math.floor(pp / PROTO_SHIFT) as ProtocolNumber
    const k = pp % PROTO_SHIFT
    let port = 0
    let endPort = 0
    if (k !== 0) {
      const b = segs.get(proto) as number[]
      port = b[k - 1]
      endPort = b[k] - 1
    }
    for (const [id, v] of m) out.entries.push({ endpointId, direction, remoteIdentity: id, protocol: proto, port, endPort, verdict: v.verdict, rule: v.rule })
  }
  out.entries = mergeAdjacent(out.entries)
  if (!input.defaultDeny && kept.get(0)?.get(ANY_IDENTITY) === undefined) {
    out.entries.push({ endpointId, direction, remoteIdentity: ANY_IDENTITY, protocol: 0, port: 0, endPort: 0, verdict: 'allow', reason: `every rule selecting this endpoint sets enableDefaultDeny.${dirName(direction)}: false` })
  }

  // 6. L7 tables for redirected port segments.
  buildL7(endpointId, direction, byPP, l7, segs, out)
  return out
}

function lowerBound (a: readonly number[], x: number): number {
  let lo = 0
  let hi = a.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (a[mid] < x) lo = mid + 1
    else hi = mid
  }
  return lo
}

function ancestors (pp: number): number[] {
  if (pp === 0) return []
  if (pp % PROTO_SHIFT === 0) return [0]
  return [pp - (pp % PROTO_SHIFT), 0]
}

function levelOf (pp: number, id: number): number {
  const any = id === ANY_IDENTITY ? 1 : 0
  if (pp === 0) return 5 + any
  if (pp % PROTO_SHIFT === 0) return 3 + any
  return 1 + any
}

/** Keys a flow of (pp, id) falls through to, in lookup order. */
function supersets (pp: number, id: number): [number, number][] {
  const A = ANY_IDENTITY
  if (pp === 0) return id === A ? [] : [[0, A]]
  if (pp % PROTO_SHIFT === 0) return id === A ? [[0, A]] : [[pp, A], [0, id], [0, A]]
  const pa = pp - (pp % PROTO_SHIFT)
  return id === A ? [[pa, A], [0, A]] : [[pp, A], [pa, id], [pa, A], [0, id], [0, A]]
}

function covering (byPP: Map<number, Map<number, Contrib[]>>, pp: number, id: number): Contrib[] {
  const out: Contrib[] = []
  for (const y of [pp, ...ancestors(pp)]) {
    const m = byPP.get(y)
    if (m === undefined) continue
    const own = m.get(id)
    if (own !== undefined) out.push(...own)
    if (id !== ANY_IDENTITY) {
      const any = m.get(ANY_IDENTITY)
      if (any !== undefined) out.push(...any)
    }
  }
  return out
}

function verdictOf (byPP: Map<number, Map<number, Contrib[]>>, l7: Map<number, 'http' | 'dns'>, pp: number, id: number): { verdict: Verdict, rule: RuleRef } | null {
  const cs = covering(byPP, pp, id)
  const deny = cs.find((c) => c.el.deny)
  if (deny !== undefined) return { verdict: 'deny', rule: deny.el.ref }
  const allows = cs.filter((c) => !c.el.deny)
  if (allows.length === 0) return null
  const kind = l7.get(pp)
  if (kind === 'http') return { verdict: 'redirect-http', rule: (allows.find((c) => c.el.http !== null) ?? allows[0]).el.ref }
  if (kind === 'dns') return { verdict: 'redirect-dns', rule: (allows.find((c) => c.el.dns !== null) ?? allows[0]).el.ref }
  return { verdict: 'allow', rule: allows[0].el.ref }
}

function mergeAdjacent (entries: KernelEntry[]): KernelEntry[] {
  entries.sort((a, b) => a.remoteIdentity - b.remoteIdentity || a.protocol - b.protocol || a.port - b.port)
  const out: KernelEntry[] = []
  for (const e of entries) {
    const last = out[out.length - 1]
    if (last !== undefined && e.port !== 0 && last.port !== 0 && last.remoteIdentity === e.remoteIdentity &&
      last.protocol === e.protocol && last.endPort + 1 === e.port && last.verdict === e.verdict && last.rule === e.rule &&
      !e.verdict.startsWith('redirect')) {
      last.endPort = e.endPort
    } else out.push(e)
  }
  return out
}

interface HttpBuilder { allowAll: boolean, allowAllRule?: RuleRef, rules: CompiledHttpRule[], seen: Set<readonly CompiledHttpRule[]> }
interface DnsBuilder { allowAll: boolean, allowAllRule?: RuleRef, rules: DnsPolicy['rules'][number][], seen: Set<unknown> }

function buildL7 (endpointId: number, direction: Direction, byPP: Map<number, Map<number, Contrib[]>>, l7: Map<number, 'http' | 'dns'>,
  segs: Map<number, number[]>, out: DirectionOutput): void {
  const dnsByPort = new Map<number, { protos: Set<number>, byId: Map<number, DnsBuilder> }>()
  for (const [pp, kind] of l7) {
    const proto = Math.floor(pp / PROTO_SHIFT)
    const b = segs.get(proto) as number[]
    const k = pp % PROTO_SHIFT
    const lo = b[k - 1]
    const hi = b[k] - 1
    // Who may reach the proxy on this segment: every allowed identity not denied here.
    const denied = new Set<number>()
    const allowed = new Map<number, Contrib[]>()
    for (const y of [pp, ...ancestors(pp)]) {
      for (const [id, cs] of byPP.get(y) ?? []) {
        for (const c of cs) {
          if (c.el.deny) denied.add(id)
          else {
            const l = allowed.get(id)
            if (l === undefined) allowed.set(id, [c])
            else l.push(c)
          }
        }
      }
    }
    if (denied.has(ANY_IDENTITY)) continue // the kernel denies every identity here
    if (kind === 'http') {
      const byId = new Map<number, HttpBuilder>()
      for (const [id, cs] of allowed) {
        if (denied.has(id)) continue
        const hb: HttpBuilder = { allowAll: false, rules: [], seen: new Set() }
        for (const c of cs) {
          if (c.el.http === null) { if (!hb.allowAll) { hb.allowAll = true; hb.allowAllRule = c.el.ref } } else if (!hb.seen.has(c.el.http)) {
            hb.seen.add(c.el.http)
            hb.rules.push(...c.el.http)
          }
        }
        byId.set(id, hb)
      }
      const finish = (h: HttpBuilder): HttpPolicy => h.allowAll ? { allowAll: true, allowAllRule: h.allowAllRule, rules: h.rules } : { allowAll: false, rules: h.rules }
      const anyB = byId.get(ANY_IDENTITY)
      const byIdentity = new Map<number, HttpPolicy>()
      for (const [id, h] of byId) if (id !== ANY_IDENTITY) byIdentity.set(id, finish(h))
      const anyIdentity = anyB === undefined ? null : finish(anyB)
      // One table for the whole segment, however wide (the lookup finds it for any port in it).
      out.http.push([l7Key(endpointId, direction, lo), { endpointId, direction, protocol: 6, port: lo, endPort: hi, byIdentity, anyIdentity }])
    } else {
      // DNS rules name single ports (validate.ts refuses ranges): a DNS segment is one port.
      for (let port = lo; port <= hi; port++) {
        let d = dnsByPort.get(port)
        if (d === undefined) dnsByPort.set(port, d = { protos: new Set(), byId: new Map() })
        d.protos.add(proto)
        for (const [id, cs] of allowed) {
          if (denied.has(id)) continue
          let db = d.byId.get(id)
          if (db === undefined) d.byId.set(id, db = { allowAll: false, rules: [], seen: new Set() })
          for (const c of cs) {
            if (c.el.dns === null) { if (!db.allowAll) { db.allowAll = true; db.allowAllRule = c.el.ref } } else if (!db.seen.has(c.el.dns)) {
              db.seen.add(c.el.dns)
              db.rules.push(...c.el.dns)
            }
          }
        }
      }
    }
  }
  for (const [port, d] of dnsByPort) {
    const finish = (h: DnsBuilder): DnsPolicy => h.allowAll ? { allowAll: true, allowAllRule: h.allowAllRule, rules: h.rules } : { allowAll: false, rules: h.rules }
    const byIdentity = new Map<number, DnsPolicy>()
    for (const [id, h] of d.byId) if (id !== ANY_IDENTITY) byIdentity.set(id, finish(h))
    const anyB = d.byId.get(ANY_IDENTITY)
    const protocol = (d.protos.size === 1 ? [...d.protos][0] : 0) as ProtocolNumber
    out.dns.push([l7Key(endpointId, direction, port), { endpointId, direction, protocol, port, endPort: port, byIdentity, anyIdentity: anyB === undefined ? null : finish(anyB) }])
  }
}

/** Lookup in the kernel's order (for trace and tests): the first matching entry or undefined. */
export function lookupKernel (entries: readonly KernelEntry[], endpointId: number, direction: Direction, remoteIdentity: number, protocol: number, port: number): KernelEntry | undefined {
  const mine = entries.filter((e) => e.endpointId === endpointId && e.direction === direction)
  const steps: [number, boolean, boolean][] = [
    [remoteIdentity, true, true], [ANY_IDENTITY, true, true], [remoteIdentity, true, false],
    [ANY_IDENTITY, true, false], [remoteIdentity, false, false], [ANY_IDENTITY, false, false]
  ]
  for (const [id, withProto, withPort] of steps) {
    const hit = mine.find((e) => e.remoteIdentity === id &&
      (withProto ? e.protocol === protocol : e.protocol === 0) &&
      (withPort ? e.port !== 0 && e.port <= port && port <= e.endPort : e.port === 0))
    if (hit !== undefined) return hit
  }
  return undefined
}
