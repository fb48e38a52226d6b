/**
 * One event of `warden observe`: a kernel flow event, an HTTP decision or a DNS decision, in one
 * shape. Each names both ends (endpoint, identity, labels), the verdict, the reason and the rule
 * that decided -- for kernel events too, found by looking the flow up in the snapshot's kernel
 * entries the same way the program does (kernel-rule.ts).
 */
import type { FlowEvent } from '../../redirect-bpf/src/index.js'
import type { L7Decision } from '../../proxy/src/decision.js'
import type { RuleRef, Snapshot } from '../../policy-store/src/types.js'
import { kernelDecision } from './kernel-rule.js'

export type EventType = 'l3l4' | 'http' | 'dns'

export interface Peer {
  ip: string
  port: number
  identity: number
  /** `namespace/name` of a local endpoint */
  endpoint?: string
  labels: readonly string[]
}

export interface ObservedEvent {
  /** ISO time */
  time: string
  type: EventType
  source: Peer
  destination: Peer
  /** `TCP`, `UDP`, `SCTP`, `ICMP` or the number */
  protocol: string
  /**
   * l3l4: allowed, dropped, redirected-http, redirected-dns, audit; http/dns: allowed, denied,
   * audit, rejected. `audit`: policy would have dropped or denied it, and it was let through.
   */
  verdict: string
  /** Why: the kernel's reason (`drop_policy`, `drop_policy_deny`, ...) or the proxy's. */
  reason: string
  /** Whose policy decided, seen from that endpoint. */
  direction?: 'ingress' | 'egress'
  /** The rule that decided (or, for a denial, the rule whose L7 table did not match). */
  rule?: { file: string, line: number, policy: string, section: string, index: number }
  /** Set when no rule decided: e.g. `default deny: no rule allows this peer`. */
  ruleNote?: string
  http?: { method: string, path: string, host: string, status: number }
  dns?: { name: string, qtype: string, rcode?: string }
}

const PROTOCOLS: Record<number, string> = { 1: 'ICMP', 6: 'TCP', 17: 'UDP', 132: 'SCTP' }

function peer (snap: Snapshot, ip: string, port: number, identity: number): Peer {
  const ep = endpointByIp(snap, ip)
  const p: Peer = { ip, port, identity, labels: snap.identities.get(identity) ?? [] }
  if (ep !== undefined) p.endpoint = ep
  return p
}

const byIp = new WeakMap<Snapshot, Map<string, string>>()
function endpointByIp (snap: Snapshot, ip: string): string | undefined {
  let m = byIp.get(snap)
  if (m === undefined) {
    m = new Map(snap.endpoints.map((e) => [e.ipv4, `${e.namespace}/${e.name}`]))
    byIp.set(snap, m)
  }
  return m.get(ip)
}

function ruleOf (r: RuleRef | undefined): ObservedEvent['rule'] {
  return r === undefined ? undefined : { file: r.file, line: r.line, policy: r.policy, section: r.section, index: r.index }
}

export function fromFlow (ev: FlowEvent, snap: Snapshot): ObservedEvent {
  const out: ObservedEvent = {
    time: new Date(ev.time).toISOString(),
    type: 'l3l4',
    source: peer(snap, ev.srcIp, ev.srcPort, ev.srcIdentity),
    destination: peer(snap, ev.dstIp, ev.dstPort, ev.dstIdentity),
    protocol: PROTOCOLS[ev.protocol] ?? String(ev.protocol),
    verdict: ev.verdict,
    reason: ev.reason
  }
  if (ev.direction !== undefined) out.direction = ev.direction
  if (ev.direction !== undefined && ev.endpointId !== 0) {
    const d = kernelDecision(snap, ev.endpointId, ev.direction === 'ingress' ? 0 : 1,
      // the program looks ICMP up without a port (the event's port is the echo id)
      ev.direction === 'ingress' ? ev.srcIdentity : ev.dstIdentity, ev.protocol, ev.protocol === 1 ? 0 : ev.dstPort)
    if (d.entry?.rule !== undefined) out.rule = ruleOf(d.entry.rule)
    else out.ruleNote = d.entry?.reason ?? d.note
  }
  return out
}

export function fromDecision (d: L7Decision, snap: Snapshot): ObservedEvent {
  const out: ObservedEvent = {
    time: new Date(d.time).toISOString(),
    type: d.type,
    source: peer(snap, d.srcIp, d.srcPort, d.srcIdentity),
    destination: peer(snap, d.dstIp, d.dstPort, d.dstIdentity),
    protocol: d.type === 'http' ? 'TCP' : 'UDP',
    verdict: d.verdict,
    reason: d.reason
  }
  if (d.rule !== undefined) out.rule = ruleOf(d.rule)
  if (d.http !== undefined) out.http = d.http
  if (d.dns !== undefined) out.dns = d.dns
  return out
}
