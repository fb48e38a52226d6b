/**
 * Step 1 of a compile: the endpoints, the numeric identities of their label sets and their
 * endpoint ids, each number held once at the allocator while the current snapshot uses it; and
 * the pod identities (with an index for selector lookups) that rules select among.
 */
import { Holdings, labelsKey, type IdentityAllocator } from './identity.js'
import { IdentityLabelFilter } from './label-filter.js'
import { identityLabelsOf } from './labels.js'
import { portsKey } from './named-ports.js'
import { PodIndex, push } from './universe.js'
import type { CompileInput, Run } from './compile-run.js'
import { RESERVED, type Endpoint, type Label, type RemoteState } from './types.js'
import type { RawEndpoint } from './endpoints.js'

/** The identity labels of an endpoint with the init identity (one array: compared by reference). */
const INIT_LABELS: readonly Label[] = Object.freeze(['reserved:init'])

/** The endpoints and pod identities; the fields are the last run's, written by `update` only. */
export class EndpointIdentities {
  private epInput: readonly RawEndpoint[] | null = null
  private extraInput: CompileInput['extraLabelSets'] | null = null
  private remoteIdsInput: RemoteState['identities'] | null = null
  endpoints: readonly Endpoint[] = Object.freeze([])
  podIds = new Set<number>()
  private podKey = ''
  podLabels = new Map<number, readonly Label[]>()
  epsByIdentity = new Map<number, number[]>()
  epById = new Map<number, Endpoint>()
  /** Signature of the endpoints' named container ports. */
  private portsSig = ''
  pods: PodIndex | null = null
  /** Selector (canonical text) -> the identities it selects; emptied when the pod identities change. */
  selectorCache = new Map<string, number[]>()
  /** The numbers this compiler's current snapshot uses, each held once at the allocator. */
  private readonly heldIdentities: Holdings
  private readonly heldEndpointIds: Holdings
  /** Label sets endpoints need that the allocator could not number at the last run (labelsKey -> labels). */
  private pending = new Map<string, readonly Label[]>()

  constructor (private readonly allocator: IdentityAllocator, private readonly labelFilter: IdentityLabelFilter) {
    this.heldIdentities = new Holdings((k, now) => allocator.acquireIdentity(k.split('\n'), now), (k, now) => allocator.releaseIdentity(k.split('\n'), now))
    this.heldEndpointIds = new Holdings((k, now) => allocator.acquireEndpointId(k, now), (k, now) => allocator.releaseEndpointId(k, now))
  }

  /** Label sets that endpoints wait for (they have the init identity, or keep their previous one). */
  pendingLabelSets (): readonly (readonly Label[])[] { return [...this.pending.values()] }

  private pendingNowPrepared (): boolean {
    for (const ls of this.pending.values()) if (this.allocator.isPrepared(ls)) return true
    return false
  }

  /** Step 1: endpoints, their identities and ids (only when the endpoints input changed). */
  update (input: CompileInput, run: Run): void {
    const remoteIds = input.remote?.identities ?? null
    const unchanged = input.endpoints === this.epInput && (input.extraLabelSets ?? null) === this.extraInput && remoteIds === this.remoteIdsInput
    if (unchanged && !run.first && !this.pendingNowPrepared()) return
    const before = new Map(this.endpoints.map((e) => [e.id, e]))
    const epIdOf = this.heldEndpointIds.hold(input.endpoints.map((e) => `${e.namespace}/${e.name}`), input.now)
    // Each endpoint's identity labels: its own when the allocator can number them; otherwise
    // (a cluster allocator cut off from etcd) the ones it had, or `reserved:init` for a new
    // endpoint -- Cilium's init identity, whose policy is default deny both ways (compileEndpoint).
    const pending = new Map<string, readonly Label[]>()
    const identityLabels = input.endpoints.map((e): { labels: readonly Label[], pending: readonly Label[] | null } => {
      const own = this.labelFilter.filter(identityLabelsOf(e.labels, e.namespace))
      if (this.allocator.isPrepared(own)) return { labels: own, pending: null }
      pending.set(labelsKey(own), own)
      const prev = before.get(epIdOf.get(`${e.namespace}/${e.name}`) as number)
      return { labels: prev !== undefined && prev.identity !== RESERVED.INIT ? prev.identityLabels : INIT_LABELS, pending: own }
    })
    this.pending = pending
    const labelSets = new Map<string, readonly Label[]>()
    for (const { labels } of identityLabels) if (labels !== INIT_LABELS) labelSets.set(labelsKey(labels), labels)
    for (const ls of input.extraLabelSets ?? []) labelSets.set(labelsKey(ls), [...ls].sort())
    const idOf = this.heldIdentities.hold(labelSets.keys(), input.now)
    const podLabels = new Map<number, readonly Label[]>()
    for (const [k, ls] of labelSets) podLabels.set(idOf.get(k) as number, ls)
    // Other nodes' pods: their identities are selectable like local ones (no number is held
    // for them here: the nodes that run them hold them). A local label set wins on its number.
    if (remoteIds !== null) for (const [id, ls] of remoteIds) if (!podLabels.has(id)) podLabels.set(id, ls)
    const endpoints: Endpoint[] = input.endpoints.map((e, i) => {
      const { labels, pending } = identityLabels[i]
      const identity = labels === INIT_LABELS ? RESERVED.INIT : idOf.get(labelsKey(labels)) as number
      return {
        id: epIdOf.get(`${e.namespace}/${e.name}`) as number, name: e.name, namespace: e.namespace, labels: { ...e.labels }, identityLabels: labels, identity, ipv4: e.ipv4, interface: e.interface, ports: e.ports ?? [], line: e.line,
        ...(pending !== null ? { pendingIdentityLabels: pending } : {}),
        ...(e.audit === true || input.auditAll === true ? { audit: true as const } : {})
      }
    })
    const podIds = new Set(podLabels.keys())
    const podKey = [...podIds].sort((a, b) => a - b).join(',')
    run.endpointsChanged = endpoints.length !== before.size || endpoints.some((e) => !sameEndpoint(before.get(e.id), e))
    if (run.endpointsChanged || podKey !== this.podKey) {
      for (const e of endpoints) if (before.get(e.id)?.identity !== e.identity) run.dirty.add(e.id)
      this.endpoints = Object.freeze(endpoints)
      this.epsByIdentity = new Map()
      for (const e of endpoints) push(this.epsByIdentity, e.identity, e.id)
      const sig: string[] = []
      for (const e of endpoints) if (e.ports.length > 0) sig.push(`${e.id}:${e.identity}:${portsKey(e.ports)}`)
      const portsSig = sig.join('|')
      if (portsSig !== this.portsSig) run.namedPortsChanged = true
      this.portsSig = portsSig
      this.epById = new Map(endpoints.map((e) => [e.id, e]))
    }
    if (podKey !== this.podKey || this.pods === null) {
      run.podsChanged = true
      this.podKey = podKey
      this.podIds = podIds
      this.podLabels = podLabels
      this.pods = new PodIndex(podLabels, podIds)
      this.selectorCache = new Map()
    }
    this.epInput = input.endpoints
    this.extraInput = input.extraLabelSets ?? null
    this.remoteIdsInput = remoteIds
  }
}

function sameEndpoint (a: Endpoint | undefined, b: Endpoint): boolean {
  if (a === undefined) return false
  if (a.name !== b.name || a.namespace !== b.namespace || a.identity !== b.identity || a.ipv4 !== b.ipv4 || a.interface !== b.interface || a.line !== b.line || a.audit !== b.audit) return false
  if ((a.pendingIdentityLabels ?? []).join('\n') !== (b.pendingIdentityLabels ?? []).join('\n')) return false
  if (portsKey(a.ports) !== portsKey(b.ports)) return false
  const ka = Object.keys(a.labels)
  return ka.length === Object.keys(b.labels).length && ka.every((k) => a.labels[k] === b.labels[k])
}
