/** Flow events from the l7p_events ring buffer, decoded for the agent's flow log. */
import { decodeEvent, REASONS, VERDICT, type RawEvent } from './layout.js'
import { libbpf } from './libbpf.js'

/** `audit`: policy would have dropped the flow (`reason` says why) but its endpoint audits: passed. */
export type FlowVerdict = 'allowed' | 'dropped' | 'redirected-http' | 'redirected-dns' | 'audit'

export interface FlowEvent {
  /** Wall-clock time of the packet, ms since the epoch. */
  time: number
  /** The endpoint whose policy decided (0 when none, e.g. a malformed packet). */
  endpointId: number
  srcIdentity: number
  dstIdentity: number
  srcIp: string
  dstIp: string
  /** TCP/UDP/SCTP ports; for ICMP echo both are the echo id; 0 otherwise. */
  srcPort: number
  dstPort: number
  /** IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP). */
  protocol: number
  verdict: FlowVerdict
  /** A name from REASONS: `drop_policy` (default deny), `drop_policy_deny`, `new_allowed`, ... */
  reason: string
  /** Which lookup decided, seen from `endpointId`; undefined when none did. */
  direction: 'ingress' | 'egress' | undefined
  /** Interface the packet was seen on. */
  ifindex: number
}

const VERDICTS: Record<number, FlowVerdict> = {
  [VERDICT.ALLOW]: 'allowed',
  [VERDICT.DENY]: 'dropped',
  [VERDICT.REDIRECT_HTTP]: 'redirected-http',
  [VERDICT.REDIRECT_DNS]: 'redirected-dns',
  [VERDICT.AUDIT]: 'audit'
}

/** bpf_ktime_get_ns and process.hrtime are both CLOCK_MONOTONIC: one offset converts. */
export function monotonicNowNs (): bigint { return process.hrtime.bigint() }

/** Protocols whose events carry ports (ICMP: the echo id), as the program parses them. */
function hasPorts (proto: number): boolean {
  return proto === 6 || proto === 17 || proto === 132 || proto === 1
}

export function toFlowEvent (raw: RawEvent, nowMs = Date.now(), nowNs = monotonicNowNs()): FlowEvent {
  return {
    time: nowMs - Number(nowNs - raw.ts) / 1e6,
    endpointId: raw.endpointId,
    srcIdentity: raw.srcIdentity,
    dstIdentity: raw.dstIdentity,
    srcIp: raw.saddr,
    dstIp: raw.daddr,
    srcPort: hasPorts(raw.proto) ? raw.sport : 0,
    dstPort: hasPorts(raw.proto) ? raw.dport : 0,
    protocol: raw.proto,
    verdict: VERDICTS[raw.verdict] ?? 'dropped',
    reason: REASONS[raw.reason] ?? `reason_${raw.reason}`,
    direction: raw.direction === 0 ? 'ingress' : raw.direction === 1 ? 'egress' : undefined,
    ifindex: raw.ifindex
  }
}

export function decodeFlowEvent (buf: Buffer): FlowEvent {
  return toFlowEvent(decodeEvent(buf))
}

/** The per-CPU `l7p_counters` map behind `fd`, summed over CPUs, by reason name (0 where absent). */
export function readCounters (fd: number): Record<string, number> {
  const lib = libbpf()
  const out: Record<string, number> = {}
  const key = Buffer.alloc(4)
  const val = Buffer.alloc(8 * lib.possibleCpus)
  for (let i = 0; i < REASONS.length; i++) {
    key.writeUInt32LE(i, 0)
    let sum = 0
    if (fd >= 0 && lib.lookup(fd, key, val)) {
      for (let c = 0; c < lib.possibleCpus; c++) sum += Number(val.readBigUInt64LE(c * 8))
    }
    out[REASONS[i]] = sum
  }
  return out
}
