/**
 * One compile run: its input, and what each step found changed in it, which the later steps
 * read to redo only their part (compile.ts composes the steps).
 */
import type { FilePolicies, PolicyRule } from './model.js'
import type { RawEndpoint } from './endpoints.js'
import type { Label, LearnedName, RemoteState } from './types.js'

export interface CompileInput {
  /** Pass the same array again when nothing changed: the compiler then skips endpoint work. */
  endpoints: readonly RawEndpoint[]
  files: readonly FilePolicies[]
  /** Same array again = same names (expiry is still checked against `now`). */
  learned: readonly LearnedName[]
  hostIPs: readonly string[]
  /** For learned-name expiry. */
  now: number
  /** Label sets of peers that are not on this node (trace's `labels:`), compiled as identities. */
  extraLabelSets?: readonly (readonly Label[])[]
  /** Node-wide policy audit mode: every endpoint audits (Endpoint.audit). */
  auditAll?: boolean
  /** Other nodes' identities and ipcache entries (cluster mode); same objects when unchanged. */
  remote?: RemoteState
}

/** What one compile run found changed, step by step. */
export interface Run {
  /** No snapshot yet: every step computes its part whole. */
  first: boolean
  /** Endpoints (ids) to compile again; all of them when `allDirty`. */
  dirty: Set<number>
  allDirty: boolean
  endpointsChanged: boolean
  /** The set of pod identities changed (selectors must be evaluated again). */
  podsChanged: boolean
  /** Some endpoint's named container ports changed (rules with named ports must be redone). */
  namedPortsChanged: boolean
  /** Some CiliumCIDRGroup's CIDRs changed (peers with cidrGroupRef must be resolved again). */
  groupsChanged: boolean
  filesChanged: boolean
  added: PolicyRule[]
  removed: PolicyRule[]
  localsChanged: boolean
  /** FQDN selector keys whose identities changed (null: unknown, treat all as changed). */
  fqdnChanged: Set<string> | null
}
