/**
 * Steps 4 and 5 of a compile: which endpoints each rule selects, and which identities each rule
 * element's peers resolve to. Both are kept between runs; a run recomputes them only for the
 * rules added and for the side of the universe (pod identities, local identities) that changed,
 * and marks dirty the endpoints whose inputs changed.
 */
import type { Run } from './compile-run.js'
import type { Selector } from './labels.js'
import type { PolicyRule, RuleElement } from './model.js'
import { peerDeps, resolvePeers, type Universe } from './universe.js'

/** `fqdnKeys`: set when the element's only local peers are FQDN selectors (then only those matter). */
interface ElState { rule: PolicyRule, ids: number[] | null, sig: string, pods: boolean, locals: boolean, fqdnKeys: string[] | null }

export class RuleSelections {
  /** Rule -> the endpoints (ids) it selects; a rule is known to the compiler while it is here. */
  readonly ruleEps = new Map<PolicyRule, number[]>()
  private readonly epRules = new Map<number, Set<PolicyRule>>()
  private readonly els = new Map<RuleElement, ElState>()
  /** Elements whose peers depend on pod identities / on local identities. */
  private readonly podEls = new Set<RuleElement>()
  private readonly localEls = new Set<RuleElement>()

  /** The rules selecting an endpoint (in no order). */
  rulesOf (ep: number): Iterable<PolicyRule> { return this.epRules.get(ep) ?? [] }

  /** The identities an element's peers resolve to (null: any peer). */
  idsOf (el: RuleElement): number[] | null { return (this.els.get(el) as ElState).ids }

  /** Step 4: which endpoints each rule selects; endpoints whose set of rules changed are dirty. */
  update (run: Run, select: (sel: Selector) => number[], epsByIdentity: ReadonlyMap<number, readonly number[]>): void {
    const { dirty } = run
    const selectEps = (r: PolicyRule): number[] => {
      const out: number[] = []
      for (const id of select(r.subject)) for (const ep of epsByIdentity.get(id) ?? []) out.push(ep)
      return out
    }
    for (const r of run.removed) {
      for (const ep of this.ruleEps.get(r) ?? []) { dirty.add(ep); this.epRules.get(ep)?.delete(r) }
      this.ruleEps.delete(r)
      for (const el of r.elements) { this.els.delete(el); this.podEls.delete(el); this.localEls.delete(el) }
    }
    if (run.endpointsChanged || run.podsChanged) {
      // Every rule's selection may have changed: recompute, and dirty the differences.
      const now = new Map<number, Set<PolicyRule>>()
      for (const [r, old] of this.ruleEps) {
        const eps = selectEps(r)
        if (!sameMembers(old, eps)) { for (const ep of old) dirty.add(ep); for (const ep of eps) dirty.add(ep) }
        this.ruleEps.set(r, eps)
        for (const ep of eps) pushSet(now, ep, r)
      }
      this.epRules.clear()
      for (const [ep, rs] of now) this.epRules.set(ep, rs)
    }
    for (const r of run.added) {
      const eps = selectEps(r)
      this.ruleEps.set(r, eps)
      for (const ep of eps) { dirty.add(ep); pushSet(this.epRules, ep, r) }
    }
  }

  /** Step 4b: named ports resolve per endpoint and peer: the endpoints of rules that use them are dirty. */
  dirtyNamedPortRules (run: Run): void {
    for (const [r, eps] of this.ruleEps) {
      if (!r.elements.some((el) => el.namedPorts !== null)) continue
      for (const ep of eps) run.dirty.add(ep)
    }
  }

  /**
   * Step 5: the identities each rule element's peers resolve to, for new elements and for those
   * whose side of the universe (pods, local identities) changed; the endpoints their rule
   * selects are dirty when the answer changed.
   */
  resolvePeers (run: Run, universe: Universe, select: (sel: Selector) => number[]): void {
    // A group edit re-resolves every peer that depends on local identities (those with
    // cidrGroupRef among them), also when no local identity came or went.
    const { podsChanged } = run
    const localsChanged = run.localsChanged || run.groupsChanged
    const fqdnChanged = run.groupsChanged ? null : run.fqdnChanged
    const resolve = (el: RuleElement): ElState['ids'] => el.peers === null ? null : resolvePeers(el.peers, universe, select)
    for (const r of run.added) {
      for (const el of r.elements) {
        const d = peerDeps(el)
        const ids = resolve(el)
        this.els.set(el, { rule: r, ids, sig: ids === null ? '*' : ids.join(','), pods: d.pods, locals: d.locals, fqdnKeys: d.fqdnKeys })
        if (d.pods) this.podEls.add(el)
        if (d.locals) this.localEls.add(el)
      }
    }
    if (!podsChanged && !localsChanged) return
    const fresh = new Set(run.added)
    const todo = podsChanged && localsChanged ? [...this.podEls, ...this.localEls] : podsChanged ? this.podEls : this.localEls
    for (const el of todo) {
      const st = this.els.get(el) as ElState
      if (fresh.has(st.rule)) continue
      const byPods = podsChanged && st.pods
      if (!byPods && !(localsChanged && st.locals)) continue
      // Only FQDN peers among the local ones, none of whose selectors changed: nothing to do.
      if (!byPods && st.fqdnKeys !== null && fqdnChanged !== null && !st.fqdnKeys.some((k) => fqdnChanged.has(k))) continue
      const ids = resolve(el)
      const sig = ids === null ? '*' : ids.join(',')
      if (sig === st.sig) continue
      st.ids = ids
      st.sig = sig
      for (const ep of this.ruleEps.get(st.rule) ?? []) run.dirty.add(ep)
    }
  }
}

function sameMembers (a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false
  const s = new Set(a)
  return b.every((x) => s.has(x))
}

function pushSet<K, V> (m: Map<K, Set<V>>, k: K, v: V): void {
  const s = m.get(k)
  if (s === undefined) m.set(k, new Set([v]))
  else s.add(v)
}
