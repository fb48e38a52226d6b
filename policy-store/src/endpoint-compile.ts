/**
 * Steps 6 and 7 of a compile: the dirty endpoints compiled again from the rules selecting them
 * (the others' output kept), the kernel entry diff, and the snapshot's kernel list and L7 tables
 * (the previous ones when nothing changed, patched when few endpoints did).
 */
import type { Run } from './compile-run.js'
import { L7Tables } from './l7-tables.js'
import type { PolicyRule, RuleElement } from './model.js'
import { resolveNamedPorts } from './named-ports.js'
import { resolveDirection, type DirectionInput } from './resolve.js'
import { diffEntries } from './snapshot-diff.js'
import {
  DIR, RESERVED, type ContainerPort, type DnsPolicy, type Endpoint, type HttpPolicy, type KernelEntry, type L7PortTable, type Snapshot
} from './types.js'

/** One endpoint's compiled output: its kernel entries and its L7 tables by key. */
export interface EpResult { entries: KernelEntry[], http: [number, L7PortTable<HttpPolicy>][], dns: [number, L7PortTable<DnsPolicy>][] }

/** Step 6's result: the kernel entry diff and which endpoints were compiled again. */
export interface CompiledEndpoints {
  kernelAdded: KernelEntry[]
  kernelRemoved: KernelEntry[]
  /** Endpoints (ids) whose kernel entries changed, removed endpoints included. */
  kernelEndpoints: number[]
  recompiled: { id: number, old: EpResult | undefined }[]
  /** Some endpoint was removed. */
  gone: boolean
}

/** Kernel entries and L7 tables of one endpoint from the rules selecting it (`rules`, in input order). */
export function compileEndpoint (id: number, own: Endpoint | undefined, rules: readonly PolicyRule[],
  idsOf: (el: RuleElement) => readonly number[] | null, portsOf: ReadonlyMap<number, readonly ContainerPort[]>): EpResult {
  const dirs: [DirectionInput, DirectionInput] = [
    { elements: [], selected: false, defaultDeny: false },
    { elements: [], selected: false, defaultDeny: false }
  ]
  // An endpoint with the init identity is default deny both ways whatever selects it
  // (Cilium: computePolicyEnforcementAndRules in pkg/policy/repository.go enforces policy for
  // `reserved:init` always): only rules selecting `reserved:init` allow it anything.
  if (own?.identity === RESERVED.INIT) for (const d of dirs) { d.selected = true; d.defaultDeny = true }
  for (const r of rules) {
    for (const d of [DIR.INGRESS, DIR.EGRESS]) {
      if (r.hasSection[d]) dirs[d].selected = true
      if (r.defaultDeny[d]) dirs[d].defaultDeny = true
    }
    for (const el of r.elements) {
      const ids = idsOf(el)
      const list = dirs[el.direction].elements as { el: RuleElement, ids: readonly number[] | null }[]
      if (el.namedPorts === null) list.push({ el, ids })
      else list.push(...resolveNamedPorts(el, ids, el.direction, own?.ports ?? [], portsOf))
    }
  }
  const ing = resolveDirection(id, DIR.INGRESS, dirs[0])
  const eg = resolveDirection(id, DIR.EGRESS, dirs[1])
  return { entries: [...ing.entries, ...eg.entries], http: [...ing.http, ...eg.http], dns: [...ing.dns, ...eg.dns] }
}

/** Each endpoint's output, kept between runs. */
export class EndpointResults {
  private readonly epCache = new Map<number, EpResult>()

  /** Step 6: compile the dirty endpoints again, keep the others' entries, and diff the kernel entries. */
  compileDirty (run: Run, endpoints: readonly Endpoint[], compileOne: (id: number) => EpResult): CompiledEndpoints {
    const out: CompiledEndpoints = { kernelAdded: [], kernelRemoved: [], kernelEndpoints: [], recompiled: [], gone: false }
    const live = new Set<number>()
    for (const e of endpoints) {
      live.add(e.id)
      const cached = this.epCache.get(e.id)
      if (cached !== undefined && !run.allDirty && !run.dirty.has(e.id)) continue
      const res = compileOne(e.id)
      this.epCache.set(e.id, res)
      out.recompiled.push({ id: e.id, old: cached })
      if (diffEntries(cached?.entries ?? [], res.entries, out.kernelAdded, out.kernelRemoved)) out.kernelEndpoints.push(e.id)
    }
    for (const [id, old] of this.epCache) {
      if (live.has(id)) continue
      for (const x of old.entries) out.kernelRemoved.push(x)
      if (old.entries.length > 0) out.kernelEndpoints.push(id)
      this.epCache.delete(id)
      out.gone = true
    }
    return out
  }

  /** Step 7: the snapshot's kernel list and L7 tables: the previous ones when nothing changed, patched when few did. */
  assemble (prev: Snapshot | null, endpoints: readonly Endpoint[], out: CompiledEndpoints): Pick<Snapshot, 'kernel' | 'http' | 'dns'> {
    const { recompiled, gone } = out
    if (prev !== null && recompiled.length === 0 && !gone && prev.endpoints === endpoints) return { kernel: prev.kernel, http: prev.http, dns: prev.dns }
    const k: KernelEntry[] = []
    for (const e of endpoints) for (const x of (this.epCache.get(e.id) as EpResult).entries) k.push(x)
    const kernel = Object.freeze(k)
    let http: Map<number, L7PortTable<HttpPolicy>>
    let dns: Map<number, L7PortTable<DnsPolicy>>
    if (prev !== null && !gone && prev.endpoints === endpoints && recompiled.length * 8 < endpoints.length) {
      // A few endpoints changed: patch copies of the previous tables (same key order as a
      // rebuild is not needed: consumers look tables up by key).
      http = new L7Tables(prev.http)
      dns = new L7Tables(prev.dns)
      for (const { id, old } of recompiled) {
        for (const [key] of old?.http ?? []) http.delete(key)
        for (const [key] of old?.dns ?? []) dns.delete(key)
        const r = this.epCache.get(id) as EpResult
        for (const [key, t] of r.http) http.set(key, t)
        for (const [key, t] of r.dns) dns.set(key, t)
      }
    } else {
      http = new L7Tables()
      dns = new L7Tables()
      for (const e of endpoints) {
        const r = this.epCache.get(e.id) as EpResult
        for (const [key, t] of r.http) http.set(key, t)
        for (const [key, t] of r.dns) dns.set(key, t)
      }
    }
    return { kernel, http, dns }
  }
}
