/**
 * Step 2 of a compile: the policy files in input order, the rules each run adds and removes
 * (files hand back the same rule objects for unchanged documents), each rule's position (rules
 * apply in input order), and the CiliumCIDRGroups the files define.
 */
import { formatPrefix, type Prefix } from './cidr.js'
import type { Run } from './compile-run.js'
import type { FilePolicies, PolicyRule } from './model.js'

export class RuleFiles {
  files: readonly FilePolicies[] = []
  /** CiliumCIDRGroup name -> its CIDRs (a name defined in several files: the union). */
  groups = new Map<string, Prefix[]>()
  private groupsSig = ''
  /** Position of a file in the input, of a rule in its file: rules are used in input order. */
  private fileIdx = new Map<FilePolicies, number>()
  private readonly ruleFile = new Map<PolicyRule, FilePolicies>()
  private readonly ruleIdx = new Map<PolicyRule, number>()

  /** A rule's place in the input (file, then rule in its file), to sort an endpoint's rules by. */
  position (r: PolicyRule): number {
    return (this.fileIdx.get(this.ruleFile.get(r) as FilePolicies) as number) * 2 ** 24 + (this.ruleIdx.get(r) as number)
  }

  /** Step 2: rules added and removed (files give back the same rule objects for unchanged documents). */
  update (files: readonly FilePolicies[], run: Run, selected: ReadonlyMap<PolicyRule, readonly number[]>): void {
    if (files.length === this.files.length && files.every((f, i) => f === this.files[i])) return
    run.filesChanged = true
    if (this.diffFiles(files, selected, run.added, run.removed, run.dirty)) run.allDirty = true
    this.files = files
    const groups = new Map<string, Prefix[]>()
    for (const f of files) {
      for (const g of f.cidrGroups ?? []) {
        const l = groups.get(g.name)
        if (l === undefined) groups.set(g.name, [...g.prefixes])
        else l.push(...g.prefixes)
      }
    }
    const sig = [...groups].map(([n, ps]) => n + '=' + ps.map(formatPrefix).sort().join(',')).sort().join('|')
    if (sig !== this.groupsSig) run.groupsChanged = !run.first
    this.groups = groups
    this.groupsSig = sig
  }

  /**
   * Rules added and removed between the previous files and `files` (matched by file name; a
   * rule is known when `selected` has it); endpoints whose rules changed order go into `dirty`.
   * True when everything must be redone.
   */
  private diffFiles (files: readonly FilePolicies[], selected: ReadonlyMap<PolicyRule, readonly number[]>, added: PolicyRule[], removed: PolicyRule[], dirty: Set<number>): boolean {
    const fileIdx = new Map<FilePolicies, number>()
    files.forEach((f, i) => fileIdx.set(f, i))
    const names = new Set(files.map((f) => f.file))
    const prevByName = new Map(this.files.map((f) => [f.file, f]))
    if (names.size !== files.length || prevByName.size !== this.files.length) {
      // Two inputs with one name: no per-file diff; compare rule sets, redo every endpoint.
      const now = new Set<PolicyRule>()
      files.forEach((f) => f.rules.forEach((r, j) => {
        if (now.has(r)) return
        now.add(r)
        this.ruleFile.set(r, f)
        this.ruleIdx.set(r, j)
        if (!selected.has(r)) added.push(r)
      }))
      for (const r of selected.keys()) if (!now.has(r)) removed.push(r)
      for (const r of removed) { this.ruleIdx.delete(r); this.ruleFile.delete(r) }
      this.fileIdx = fileIdx
      return true
    }
    let all = false
    let lastOld = -1
    for (const f of files) {
      const old = prevByName.get(f.file)
      const oi = old === undefined ? undefined : this.fileIdx.get(old)
      if (oi !== undefined) { if (oi < lastOld) all = true; lastOld = oi } // files changed order
      if (old === f) continue
      const oldSet = new Set(old?.rules ?? [])
      let lastIdx = -1
      let reordered = false
      f.rules.forEach((r, j) => {
        if (oldSet.delete(r)) {
          const oj = this.ruleIdx.get(r) as number
          if (oj < lastIdx) reordered = true
          lastIdx = oj
        } else added.push(r)
        this.ruleIdx.set(r, j)
        this.ruleFile.set(r, f)
      })
      for (const r of oldSet) removed.push(r)
      if (reordered) for (const r of f.rules) for (const ep of selected.get(r) ?? []) dirty.add(ep)
    }
    for (const [name, f] of prevByName) if (!names.has(name)) for (const r of f.rules) removed.push(r)
    for (const r of removed) { this.ruleIdx.delete(r); this.ruleFile.delete(r) }
    this.fileIdx = fileIdx
    return all
  }
}
