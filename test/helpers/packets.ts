/**
 * Frames for BPF_PROG_TEST_RUN (Cilium's pktgen.h, in small): Ethernet + IPv4 + one L4 header.
 * Checksums are left zero (the programs never check them) except the IPv4 header's, which the
 * host-routing path updates incrementally and a test reads back.
 */
export const PROTO_ICMP = 1
export const PROTO_TCP = 6
export const PROTO_UDP = 17
export const PROTO_SCTP = 132

export const TCP_FIN = 0x01
export const TCP_SYN = 0x02
export const TCP_RST = 0x04
export const TCP_ACK = 0x10

export interface PacketSpec {
  saddr: string
  daddr: string
  proto: number
  sport?: number
  dport?: number
  /** TCP flags (default SYN); ICMP type (default 8, echo request). */
  flags?: number
  /** ICMP echo id (default 0x4242). */
  icmpId?: number
  ttl?: number
  /** IPv4 header length in 32-bit words as written in the header (default 5). */
  ihl?: number
  /** The IPv4 flags + fragment offset field (default 0). */
  fragOff?: number
  /** Bytes of L4 header actually present (default: the whole header). */
  l4Len?: number
}

const L4_LEN: Record<number, number> = { [PROTO_TCP]: 20, [PROTO_UDP]: 8, [PROTO_SCTP]: 12, [PROTO_ICMP]: 8 }

function ip4 (buf: Buffer, off: number, ip: string): void {
  ip.split('.').forEach((p, i) => { buf[off + i] = Number(p) })
}

/** The 16-bit one's complement sum of the IPv4 header (RFC 791). */
export function ipChecksum (hdr: Buffer): number {
  let sum = 0
  for (let i = 0; i < hdr.length; i += 2) if (i !== 10) sum += hdr.readUInt16BE(i)
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16)
  return (~sum) & 0xffff
}

export function packet (p: PacketSpec): Buffer {
  const ihl = p.ihl ?? 5
  const ipLen = Math.max(ihl, 5) * 4 // options (if any) are zero bytes: end of option list
  const l4Full = L4_LEN[p.proto] ?? 8
  const l4 = Math.min(p.l4Len ?? l4Full, l4Full)
  const f = Buffer.alloc(14 + ipLen + l4)
  f.writeUInt16BE(0x0800, 12)
  f[14] = 0x40 | (ihl & 0xf)
  f.writeUInt16BE(ipLen + l4, 16)
  f.writeUInt16BE(p.fragOff ?? 0, 20)
  f[22] = p.ttl ?? 64
  f[23] = p.proto
  ip4(f, 26, p.saddr)
  ip4(f, 30, p.daddr)
  f.writeUInt16BE(ipChecksum(f.subarray(14, 34)), 24)
  const o = 14 + ipLen
  const l4buf = Buffer.alloc(l4Full)
  if (p.proto === PROTO_ICMP) {
    l4buf[0] = p.flags ?? 8
    l4buf.writeUInt16BE(p.icmpId ?? 0x4242, 4)
  } else {
    l4buf.writeUInt16BE(p.sport ?? 40000, 0)
    l4buf.writeUInt16BE(p.dport ?? 0, 2)
    if (p.proto === PROTO_TCP) {
      l4buf[12] = 0x50
      l4buf[13] = p.flags ?? TCP_SYN
    } else if (p.proto === PROTO_UDP) {
      l4buf.writeUInt16BE(8, 4)
    } else if (p.proto === PROTO_SCTP) {
      l4buf.writeUInt32BE(0x01020304, 4) // verification tag
    }
  }
  l4buf.copy(f, o, 0, l4)
  return f
}
