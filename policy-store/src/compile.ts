/**
 * Policies + endpoints + learned names -> one immutable Snapshot and its diff.
 *
 * Incremental: the compiler keeps, between runs, which endpoints each rule selects, what each
 * rule element's peers resolve to, and each endpoint's compiled entries. A run works out what
 * changed in its input (rules added or removed -- files hand back the same rule objects for
 * unchanged documents --, endpoints, the local CIDR/FQDN identities) and re-resolves only the
 * endpoints whose inputs changed: a one-rule edit re-resolves the endpoints that rule selects,
 * new learned FQDN IPs re-resolve the endpoints with toFQDNs/CIDR/world peers. The result is the
 * same as a cold compile of the same input (test/policy-store/incremental.test.ts checks it).
 *
 * The steps of a run, each keeping its own state between runs:
 *   1. endpoint-identities.ts  endpoints, their identities and ids; the pod identities
 *   1b. named-ports.ts         the named ports each identity carries
 *   2. rule-files.ts           rules added and removed, rule order, CIDR groups
 *   3. local-identities.ts     CIDR/FQDN identities, the identities and the ipcache
 *   4-5. rule-selections.ts    the endpoints each rule selects, the identities its peers resolve to
 *   6-7. endpoint-compile.ts   the dirty endpoints compiled again, the kernel list and L7 tables
 * and snapshot-diff.ts turns the run into the diff the datapath applies.
 */
import type { IdentityAllocator } from './identity.js'
import { IdentityLabelFilter } from './label-filter.js'
import type { Selector } from './labels.js'
import { portsByIdentity } from './named-ports.js'
import { PodIndex, RESERVED_LABELS, Universe } from './universe.js'
import type { CompileInput, Run } from './compile-run.js'
import { EndpointIdentities } from './endpoint-identities.js'
import { RuleFiles } from './rule-files.js'
import { LocalIdentities } from './local-identities.js'
import { RuleSelections } from './rule-selections.js'
import { compileEndpoint, EndpointResults, type EpResult } from './endpoint-compile.js'
import { diffSnapshots, entryKey } from './snapshot-diff.js'
import { ANY_IDENTITY, type ContainerPort, type Label, type RemoteState, type Snapshot, type SnapshotDiff } from './types.js'

export { ANY_IDENTITY, entryKey, RESERVED_LABELS }
export type { CompileInput }

export class Compiler {
  private version = 0
  /** How each compile's ipcache diff was made: from the changes the cluster store named, or by comparing the lists. */
  readonly stats = { ipcacheDiffsNamed: 0, ipcacheDiffsCompared: 0 }
  private prevSnapshot: Snapshot | null = null
  /** Endpoints and pod identities. */
  private readonly eps: EndpointIdentities
  /** Named container ports by identity (the union over its endpoints here and on other nodes). */
  private portsOf = new Map<number, ContainerPort[]>()
  private remotePortsInput: RemoteState['namedPorts'] | null = null
  /** Rules, in input order, and the CIDR groups of their files. */
  private readonly rules = new RuleFiles()
  /** Local (CIDR, FQDN) identities, the identities and the ipcache. */
  private readonly localIds: LocalIdentities
  /** What each rule selects; what each element's peers resolve to. */
  private readonly selections = new RuleSelections()
  /** Each endpoint's compiled entries and L7 tables. */
  private readonly results = new EndpointResults()

  constructor (allocator: IdentityAllocator, opts: { labelFilter?: IdentityLabelFilter } = {}) {
    this.eps = new EndpointIdentities(allocator, opts.labelFilter ?? new IdentityLabelFilter())
    this.localIds = new LocalIdentities(allocator)
  }

  /**
   * One run: each step works out what changed in its part of the input and marks the endpoints
   * whose entries it may change (`run.dirty`); only those are compiled again.
   */
  compile (input: CompileInput): { snapshot: Snapshot, diff: SnapshotDiff } {
    this.localIds.beginCompile()
    const first = this.prevSnapshot === null
    const run: Run = { first, dirty: new Set(), allDirty: first, endpointsChanged: false, podsChanged: false, namedPortsChanged: false, groupsChanged: false, filesChanged: false, added: [], removed: [], localsChanged: false, fqdnChanged: null }
    this.eps.update(input, run)
    this.updateNamedPorts(input, run)
    this.rules.update(input.files, run, this.selections.ruleEps)
    this.localIds.update(input, run, { endpoints: this.eps.endpoints, podLabels: this.eps.podLabels, files: this.rules.files, groups: this.rules.groups })
    const universe = new Universe(this.eps.pods as PodIndex, this.eps.podIds, this.localIds.locals, this.rules.groups)
    const select = (sel: Selector): number[] => {
      let ids = this.eps.selectorCache.get(sel.canonical)
      if (ids === undefined) this.eps.selectorCache.set(sel.canonical, ids = universe.select(sel))
      return ids
    }
    this.selections.update(run, select, this.eps.epsByIdentity)
    if (run.namedPortsChanged) this.selections.dirtyNamedPortRules(run)
    this.selections.resolvePeers(run, universe, select)
    const out = this.results.compileDirty(run, this.eps.endpoints, (id) => this.compileOne(id))
    const prev = this.prevSnapshot
    const tables = this.results.assemble(prev, this.eps.endpoints, out)
    const snapshot: Snapshot = Object.freeze({
      version: ++this.version,
      createdAt: Date.now(),
      endpoints: this.eps.endpoints,
      identities: this.localIds.identities,
      ipcache: this.localIds.ipcache,
      ...tables,
      fqdnSelectors: this.localIds.fqdnSelectors
    })
    const diff = diffSnapshots(prev, snapshot, out, this.localIds.ipChanges)
    if (prev !== null) this.stats[this.localIds.ipChanges !== null ? 'ipcacheDiffsNamed' : 'ipcacheDiffsCompared']++
    this.prevSnapshot = snapshot
    this.localIds.endCompile()
    return { snapshot, diff }
  }

  /** Label sets that endpoints wait for (they have the init identity, or keep their previous one). */
  pendingLabelSets (): readonly (readonly Label[])[] { return this.eps.pendingLabelSets() }

  /**
   * Step 1b: the named ports each peer identity carries, for egress rules that name a port: the
   * union over this node's endpoints and other nodes' pods of that identity (their ipcache
   * entries' NamedPorts), computed again when either side changed.
   */
  private updateNamedPorts (input: CompileInput, run: Run): void {
    const remote = input.remote?.namedPorts ?? null
    if (!run.namedPortsChanged && remote === this.remotePortsInput && !run.first) return
    if (remote !== this.remotePortsInput) run.namedPortsChanged = true
    this.remotePortsInput = remote
    this.portsOf = portsByIdentity(this.eps.endpoints, remote ?? [])
  }

  /** One endpoint's entries and tables from the rules selecting it, in input order. */
  private compileOne (id: number): EpResult {
    const rules = [...this.selections.rulesOf(id)].sort((a, b) => this.rules.position(a) - this.rules.position(b))
    return compileEndpoint(id, this.eps.epById.get(id), rules, (el) => this.selections.idsOf(el), this.portsOf)
  }
}
