/**
 * Small hand-built Snapshots for the datapath tests (the policy store's loadSnapshot is
 * written in parallel; these tests exercise the kernel side only, with exact entries).
 */
import type { Endpoint, KernelEntry, Snapshot, Verdict, Direction, ProtocolNumber } from '../../policy-store/src/types.js'

export interface EpSpec { id: number, name: string, ipv4: string, iface: string, identity: number }

export function endpoint (e: EpSpec): Endpoint {
  return {
    id: e.id,
    name: e.name,
    namespace: 'default',
    labels: { app: e.name },
    identityLabels: [`k8s:app=${e.name}`, 'k8s:io.kubernetes.pod.namespace=default'],
    identity: e.identity,
    ipv4: e.ipv4,
    interface: e.iface,
    ports: [],
    line: 1
  }
}

export function entry (endpointId: number, direction: Direction, remoteIdentity: number, protocol: ProtocolNumber,
  port: number, verdict: Verdict, endPort = 0): KernelEntry {
  return { endpointId, direction, remoteIdentity, protocol, port, endPort, verdict }
}

/** Allow everything in both directions for an endpoint that no policy selects. */
export function openEntries (endpointId: number): KernelEntry[] {
  return [entry(endpointId, 0, 0, 0, 0, 'allow'), entry(endpointId, 1, 0, 0, 0, 'allow')]
}

let version = 0
export function snapshot (eps: EpSpec[], kernel: KernelEntry[], extraIpcache: Array<{ prefix: string, identity: number }> = []): Snapshot {
  const endpoints = eps.map(endpoint)
  return {
    version: ++version,
    createdAt: Date.now(),
    endpoints,
    identities: new Map(),
    ipcache: [
      { prefix: '0.0.0.0/0', identity: 2, endpointId: 0 },
      ...extraIpcache.map((e) => ({ ...e, endpointId: 0 })),
      ...endpoints.map((e) => ({ prefix: `${e.ipv4}/32`, identity: e.identity, endpointId: e.id }))
    ],
    kernel,
    http: new Map(),
    dns: new Map(),
    fqdnSelectors: []
  }
}
