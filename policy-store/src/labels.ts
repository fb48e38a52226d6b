/**
 * Labels and label selectors with Cilium's semantics (docs/policy.md, "Selection and namespaces"):
 * a label is `source:key=value`; a selector key without a known source prefix means `any:`
 * (matches the key from any source); `matchLabels` entries are `In [value]` requirements.
 */
import type { Label } from './types.js'

/** Label sources Cilium knows; a selector key prefix outside this list is part of the key. */
const SOURCES = new Set(['k8s', 'any', 'reserved', 'cidr', 'fqdn', 'container', 'cni', 'unspec', 'node', 'cidrgroup', 'directory'])

export const NAMESPACE_LABEL = 'io.kubernetes.pod.namespace'
export const NAMESPACE_LABELS_PREFIX = 'io.cilium.k8s.namespace.labels.'

export interface ParsedLabel { source: string, key: string, value: string }

export function parseLabel (label: Label): ParsedLabel {
  const c = label.indexOf(':')
  const source = c === -1 ? 'unspec' : label.slice(0, c)
  const rest = c === -1 ? label : label.slice(c + 1)
  const e = rest.indexOf('=')
  return e === -1 ? { source, key: rest, value: '' } : { source, key: rest.slice(0, e), value: rest.slice(e + 1) }
}

/** `k8s:app` -> {source: k8s, key: app}; `app` -> {source: any, key: app}. */
export function parseSelectorKey (k: string): { source: string, key: string } {
  const c = k.indexOf(':')
  if (c > 0 && SOURCES.has(k.slice(0, c))) return { source: k.slice(0, c), key: k.slice(c + 1) }
  return { source: 'any', key: k }
}

export type Operator = 'In' | 'NotIn' | 'Exists' | 'DoesNotExist'
export const OPERATORS: readonly Operator[] = ['In', 'NotIn', 'Exists', 'DoesNotExist']

export interface Requirement {
  source: string
  key: string
  op: Operator
  values: readonly string[]
}

/** A compiled selector: all requirements must hold (AND). No requirement = selects all. */
export interface Selector {
  readonly reqs: readonly Requirement[]
  /** Canonical text, used as a cache key and in trace output. */
  readonly canonical: string
}

export function makeSelector (reqs: Requirement[]): Selector {
  const sorted = [...reqs].sort((a, b) => (a.source + ':' + a.key + a.op).localeCompare(b.source + ':' + b.key + b.op))
  const canonical = sorted.length === 0
    ? '{}'
    : sorted.map((r) => `${r.source}:${r.key} ${r.op}${r.values.length > 0 ? ' (' + [...r.values].sort().join(',') + ')' : ''}`).join(' && ')
  return { reqs: sorted, canonical }
}

/** An identity's labels, indexed by key for selector matching. */
export class LabelSet {
  private readonly byKey = new Map<string, ParsedLabel[]>()
  constructor (readonly labels: readonly Label[]) {
    for (const l of labels) {
      const p = parseLabel(l)
      const list = this.byKey.get(p.key)
      if (list === undefined) this.byKey.set(p.key, [p])
      else list.push(p)
    }
  }

  get (key: string): readonly ParsedLabel[] | undefined {
    return this.byKey.get(key)
  }
}

function hasValue (set: LabelSet, r: Requirement, values: readonly string[] | null): boolean {
  const list = set.get(r.key)
  if (list === undefined) return false
  for (const l of list) {
    if (r.source !== 'any' && l.source !== r.source) continue
    if (values === null || values.includes(l.value)) return true
  }
  return false
}

export function matchesSelector (sel: Selector, set: LabelSet): boolean {
  for (const r of sel.reqs) {
    switch (r.op) {
      case 'In': if (!hasValue(set, r, r.values)) return false; break
      case 'NotIn': if (hasValue(set, r, r.values)) return false; break
      case 'Exists': if (!hasValue(set, r, null)) return false; break
      case 'DoesNotExist': if (hasValue(set, r, null)) return false; break
    }
  }
  return true
}

/** Identity labels of a workload: its labels (source k8s) plus its namespace. Sorted. */
export function identityLabelsOf (labels: Readonly<Record<string, string>>, namespace: string): Label[] {
  const out = Object.entries(labels).map(([k, v]) => `k8s:${k}=${v}`)
  out.push(`k8s:${NAMESPACE_LABEL}=${namespace}`)
  return out.sort()
}

/** Does the selector constrain the namespace (so a CNP must not inject its own)? */
export function namesNamespace (sel: Selector): boolean {
  return sel.reqs.some((r) => (r.source === 'k8s' || r.source === 'any') &&
    (r.key === NAMESPACE_LABEL || r.key.startsWith(NAMESPACE_LABELS_PREFIX)))
}

export function usesReserved (sel: Selector): boolean {
  return sel.reqs.some((r) => r.source === 'reserved')
}
