/**
 * Which of a workload's labels count toward its identity, with Cilium's semantics
 * (https://github.com/cilium/cilium/blob/main/pkg/labelsfilter/filter.go, documented at
 * https://docs.cilium.io/en/latest/operations/performance/scalability/identity-relevant-labels/).
 *
 * Labels that change on every rollout (`pod-template-hash`, `controller-revision-hash`, a
 * StatefulSet's pod name...) would otherwise give every pod generation a new identity: policy
 * maps churn and the 16-bit identity space runs out.
 *
 * A pattern is `[source:][!]regex`:
 * - `regex` is an RE2 expression (Go's syntax, as Cilium) matched at the start of the label KEY
 *   only (`app` also matches `app-team`; write `app$` for the key alone);
 * - `source` restricts it to labels of that source (`k8s:`, `reserved:`...); none = any source;
 * - `!` makes it an exclusion; a pattern without `!` is an inclusion.
 * A label is kept when no inclusion is configured and no exclusion matches it, or when the
 * longest matching inclusion is longer than the shortest matching exclusion (so
 * `io\.kubernetes\.pod\.namespace` keeps the namespace label although `!io\.kubernetes`
 * matches it too). As soon as one inclusion is configured, labels no inclusion matches are
 * dropped.
 *
 * User patterns are added to the defaults, like Cilium's `--labels` option; `replace` starts
 * from an empty list instead, like Cilium's `--label-prefix-file`. Whatever the patterns, the
 * namespace label (`k8s:io.kubernetes.pod.namespace`) stays: namespaced policies select by it.
 */
import RE2 from 're2'
import { ERR, StoreError } from './errors.js'
import { NAMESPACE_LABEL, parseLabel } from './labels.js'
import type { Label } from './types.js'

/**
 * Cilium's default list, in its order (pkg/labelsfilter/filter.go `defaultLabelPrefixCfg`
 * and the documented exclusions). `job-name` and `batch.kubernetes.io/job-name` are not in it:
 * Cilium keeps them (its documentation shows `!job-name` as a user addition).
 */
export const DEFAULT_IDENTITY_LABEL_PATTERNS: readonly string[] = Object.freeze([
  'reserved:.*',
  'io\\.kubernetes\\.pod\\.namespace',
  'io\\.cilium\\.k8s\\.namespace\\.labels',
  'app\\.kubernetes\\.io',
  'io\\.cilium\\.k8s\\.policy\\.cluster',
  '!io\\.kubernetes',
  '!kubernetes\\.io',
  '!statefulset\\.kubernetes\\.io/pod-name',
  '!apps\\.kubernetes\\.io/pod-index',
  '!batch\\.kubernetes\\.io/job-completion-index',
  '!batch\\.kubernetes\\.io/controller-uid',
  '!.*beta\\.kubernetes\\.io',
  '!k8s\\.io',
  '!pod-template-generation',
  '!pod-template-hash',
  '!controller-revision-hash',
  '!controller-uid',
  '!annotation.*',
  '!etcd_node'
])

interface Pattern { text: string, source: string, exclude: boolean, re: RE2 }

function parsePattern (text: string): Pattern {
  const colon = text.indexOf(':')
  const source = colon === -1 ? '' : text.slice(0, colon)
  let body = colon === -1 ? text : text.slice(colon + 1)
  if (source.startsWith('!')) throw new StoreError(ERR.LABEL_FILTER, `identity label pattern "${text}": put "!" after the source ("${source.slice(1)}:!${body}")`, { pattern: text })
  const exclude = body.startsWith('!')
  if (exclude) body = body.slice(1)
  if (body === '') throw new StoreError(ERR.LABEL_FILTER, `identity label pattern "${text}" has no expression`, { pattern: text })
  let re: RE2
  try {
    re = new RE2('^(?:' + body + ')', 'u')
  } catch (err) {
    throw new StoreError(ERR.LABEL_FILTER, `identity label pattern "${text}": ${(err as Error).message}`, { pattern: text })
  }
  return { text, source, exclude, re }
}

export class IdentityLabelFilter {
  private readonly patterns: readonly Pattern[]
  /** Some pattern is an inclusion: then a label must match one to count. */
  private readonly allowList: boolean
  /** Label -> kept? Pods of one workload repeat the same labels. */
  private readonly memo = new Map<Label, boolean>()

  /** Throws StoreError WARDEN_ERR_LABEL_FILTER for a pattern that does not parse. */
  constructor (user: readonly string[] = [], opts: { replace?: boolean } = {}) {
    const list = [...(opts.replace === true ? [] : DEFAULT_IDENTITY_LABEL_PATTERNS), ...user.filter((p) => p !== '')]
    this.patterns = list.map(parsePattern)
    // As Cilium: the default list's inclusions do not switch allow-list mode on, a user's do.
    this.allowList = (opts.replace === true ? this.patterns : this.patterns.slice(DEFAULT_IDENTITY_LABEL_PATTERNS.length)).some((p) => !p.exclude)
  }

  /** The patterns in effect, in order (for the startup log). */
  get list (): string[] { return this.patterns.map((p) => p.text) }

  keeps (label: Label): boolean {
    let kept = this.memo.get(label)
    if (kept === undefined) {
      kept = this.decide(label)
      if (this.memo.size > 100_000) this.memo.clear()
      this.memo.set(label, kept)
    }
    return kept
  }

  private decide (label: Label): boolean {
    const { source, key } = parseLabel(label)
    if (source === 'k8s' && key === NAMESPACE_LABEL) return true
    // Lengths of the longest matching inclusion and the shortest matching exclusion; 0 = none
    // (a zero-length match counts as none, as in Cilium).
    let included = 0
    let excluded = 0
    for (const p of this.patterns) {
      if (p.source !== '' && p.source !== source) continue
      const m = p.re.exec(key)
      if (m === null) continue
      const len = m[0].length
      if (p.exclude) { if (excluded === 0 || len < excluded) excluded = len } else if (len > included) included = len
    }
    return (!this.allowList && excluded === 0) || included > excluded
  }

  /** The identity-relevant subset of `labels` (order kept). */
  filter (labels: readonly Label[]): Label[] {
    return labels.filter((l) => this.keeps(l))
  }
}
