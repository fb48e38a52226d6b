/**
 * Byte layouts of every struct in redirect-bpf/bpf/l7p.h, mirrored by hand. Sizes are
 * pinned on both sides (the header's _Static_asserts, SIZE here) and
 * test/redirect-bpf/layout.test.ts compares encodings with byte fixtures.
 *
 * Codecs write into caller-owned Buffers (as node_bpf's TypeConversion does) so a bulk
 * sync allocates nothing per entry. Addresses and ports in network order are kept as the
 * wire bytes; identities and ids are little-endian (host order on x86_64/arm64).
 */

export const SIZE = {
  config: 24,
  endpoint: 12,
  attach: 4,
  ipcacheKey: 8,
  ipcacheValue: 8,
  policyKey: 16,
  policyValue: 8,
  ctKey: 16,
  ctEntry: 24,
  event: 40,
  fibKey: 8,
  fibValue: 32
} as const

export const VERDICT = { NONE: 0, ALLOW: 1, DENY: 2, REDIRECT_HTTP: 3, REDIRECT_DNS: 4, AUDIT: 5 } as const

/** enum l7p_reason, in order: the index is the counter slot and the event's reason. */
export const REASONS = [
  'new_allowed',
  'new_redirect_http',
  'new_redirect_dns',
  'new_from_host',
  'drop_policy',
  'drop_policy_deny',
  'drop_no_socket',
  'drop_fragment',
  'drop_ipv6',
  'drop_malformed',
  'drop_spoofed',
  'drop_redirect_egress',
  'drop_unsupported_l4',
  'ct_pass',
  'ct_redirect',
  'events_lost',
  'host_bypass',
  'audit_policy',
  'audit_policy_deny'
] as const
export type Reason = typeof REASONS[number]
/** l7p_counters' max_entries (L7P_COUNTER_SLOTS): room for reasons to come without a new map shape. */
export const COUNTER_SLOTS = 32

/** l7p_endpoint / l7p_ipcache_value flags (L7P_EP_*). */
export const EP_AUDIT = 1

export const CFG_MADE_RULE = 1
export const CFG_MADE_ROUTE = 2
export const FEAT_HOST_ROUTING = 1
export const HOOK_INGRESS = 1
export const HOOK_EGRESS = 2
export const CT_REDIRECT = 1
export const CT_REDIRECT_DNS = 2
export const CT_CLOSING = 4
export const CT_FROM_HOST = 8
export const CT_REPLIED = 16
export const CT_SRC_LOCAL = 32
export const CT_DST_LOCAL = 64
export const CT_PROXY_UPSTREAM = 128
export const CT_AUDIT = 256

/** Dotted quad -> the 4 wire bytes, written at `off`. Throws on anything else. */
export function writeIpv4 (buf: Buffer, off: number, ip: string): void {
  const parts = ip.split('.')
  if (parts.length !== 4) throw new TypeError(`not an IPv4 address: ${ip}`)
  for (let i = 0; i < 4; i++) {
    const n = Number(parts[i])
    if (!Number.isInteger(n) || n < 0 || n > 255 || parts[i] === '') throw new TypeError(`not an IPv4 address: ${ip}`)
    buf[off + i] = n
  }
}

export function readIpv4 (buf: Buffer, off: number): string {
  return `${buf[off]}.${buf[off + 1]}.${buf[off + 2]}.${buf[off + 3]}`
}

export interface ConfigValue {
  proxyPort: number
  dnsProxyPort: number
  routeTable: number
  flags: number
  /** FEAT_* bits the programs read. */
  features: number
  progTag: bigint
}

export function encodeConfig (buf: Buffer, v: ConfigValue): Buffer {
  buf.fill(0, 0, SIZE.config)
  buf.writeUInt16LE(v.proxyPort, 0)
  buf.writeUInt16LE(v.dnsProxyPort, 2)
  buf.writeUInt32LE(v.routeTable, 4)
  buf.writeUInt32LE(v.flags, 8)
  buf.writeUInt32LE(v.features, 12)
  buf.writeBigUInt64LE(v.progTag, 16)
  return buf
}

export function decodeConfig (buf: Buffer): ConfigValue {
  return {
    proxyPort: buf.readUInt16LE(0),
    dnsProxyPort: buf.readUInt16LE(2),
    routeTable: buf.readUInt32LE(4),
    flags: buf.readUInt32LE(8),
    features: buf.readUInt32LE(12),
    progTag: buf.readBigUInt64LE(16)
  }
}

export interface EndpointValue { identity: number, ipv4: string, endpointId: number, /** EP_* (default 0) */ flags?: number }

export function encodeEndpoint (buf: Buffer, v: EndpointValue): Buffer {
  buf.fill(0, 0, SIZE.endpoint)
  buf.writeUInt32LE(v.identity, 0)
  writeIpv4(buf, 4, v.ipv4)
  buf.writeUInt16LE(v.endpointId, 8)
  buf.writeUInt16LE(v.flags ?? 0, 10)
  return buf
}

export function decodeEndpoint (buf: Buffer): EndpointValue {
  return { identity: buf.readUInt32LE(0), ipv4: readIpv4(buf, 4), endpointId: buf.readUInt16LE(8), flags: buf.readUInt16LE(10) }
}

export interface AttachValue { hooks: number, madeQdisc: boolean }

export function encodeAttach (buf: Buffer, v: AttachValue): Buffer {
  buf.fill(0, 0, SIZE.attach)
  buf[0] = v.hooks
  buf[1] = v.madeQdisc ? 1 : 0
  return buf
}

export function decodeAttach (buf: Buffer): AttachValue {
  return { hooks: buf[0], madeQdisc: buf[1] === 1 }
}

/** `a.b.c.d/len` -> LPM key (the address masked to the prefix). */
export function encodeIpcacheKey (buf: Buffer, prefix: string): Buffer {
  const slash = prefix.indexOf('/')
  const ip = slash < 0 ? prefix : prefix.slice(0, slash)
  const len = slash < 0 ? 32 : Number(prefix.slice(slash + 1))
  if (!Number.isInteger(len) || len < 0 || len > 32) throw new TypeError(`bad prefix length: ${prefix}`)
  buf.writeUInt32LE(len, 0)
  writeIpv4(buf, 4, ip)
  // mask host bits so the same prefix always encodes to the same key
  const addr = buf.readUInt32BE(4)
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0
  buf.writeUInt32BE((addr & mask) >>> 0, 4)
  return buf
}

export function decodeIpcacheKey (buf: Buffer): string {
  return `${readIpv4(buf, 4)}/${buf.readUInt32LE(0)}`
}

export interface IpcacheValue { identity: number, endpointId: number, /** EP_* of a local endpoint (default 0) */ flags?: number }

export function encodeIpcacheValue (buf: Buffer, v: IpcacheValue): Buffer {
  buf.fill(0, 0, SIZE.ipcacheValue)
  buf.writeUInt32LE(v.identity, 0)
  buf.writeUInt16LE(v.endpointId, 4)
  buf.writeUInt16LE(v.flags ?? 0, 6)
  return buf
}

export function decodeIpcacheValue (buf: Buffer): IpcacheValue {
  return { identity: buf.readUInt32LE(0), endpointId: buf.readUInt16LE(4), flags: buf.readUInt16LE(6) }
}

/** One LPM policy key: `port`/`portPrefix` is a block of ports (portPrefix 0 = any port). */
export interface PolicyKey {
  endpointId: number
  direction: number
  protocol: number
  identity: number
  port: number
  portPrefix: number
}

export function encodePolicyKey (buf: Buffer, k: PolicyKey): Buffer {
  buf.fill(0, 0, SIZE.policyKey)
  buf.writeUInt32LE(64 + k.portPrefix, 0)
  buf.writeUInt16LE(k.endpointId, 4)
  buf[6] = k.direction
  buf[7] = k.protocol
  buf.writeUInt32LE(k.identity, 8)
  buf.writeUInt16BE(k.port, 12)
  return buf
}

export function decodePolicyKey (buf: Buffer): PolicyKey {
  return {
    portPrefix: buf.readUInt32LE(0) - 64,
    endpointId: buf.readUInt16LE(4),
    direction: buf[6],
    protocol: buf[7],
    identity: buf.readUInt32LE(8),
    port: buf.readUInt16BE(12)
  }
}

export interface PolicyValue { verdict: number, portPrefix: number, cookie: number }

export function encodePolicyValue (buf: Buffer, v: PolicyValue): Buffer {
  buf.fill(0, 0, SIZE.policyValue)
  buf[0] = v.verdict
  buf[1] = v.portPrefix
  buf.writeUInt32LE(v.cookie, 4)
  return buf
}

export function decodePolicyValue (buf: Buffer): PolicyValue {
  return { verdict: buf[0], portPrefix: buf[1], cookie: buf.readUInt32LE(4) }
}

export interface CtKey { saddr: string, daddr: string, sport: number, dport: number, proto: number }

export function encodeCtKey (buf: Buffer, k: CtKey): Buffer {
  buf.fill(0, 0, SIZE.ctKey)
  writeIpv4(buf, 0, k.saddr)
  writeIpv4(buf, 4, k.daddr)
  buf.writeUInt16BE(k.sport, 8)
  buf.writeUInt16BE(k.dport, 10)
  buf[12] = k.proto
  return buf
}

export function decodeCtKey (buf: Buffer): CtKey {
  return {
    saddr: readIpv4(buf, 0),
    daddr: readIpv4(buf, 4),
    sport: buf.readUInt16BE(8),
    dport: buf.readUInt16BE(10),
    proto: buf[12]
  }
}

export interface CtEntry { expires: bigint, srcIdentity: number, dstIdentity: number, endpointId: number, flags: number }

export function decodeCtEntry (buf: Buffer): CtEntry {
  return {
    expires: buf.readBigUInt64LE(0),
    srcIdentity: buf.readUInt32LE(8),
    dstIdentity: buf.readUInt32LE(12),
    endpointId: buf.readUInt16LE(16),
    flags: buf.readUInt16LE(18)
  }
}

export function encodeCtEntry (buf: Buffer, e: CtEntry): Buffer {
  buf.fill(0, 0, SIZE.ctEntry)
  buf.writeBigUInt64LE(e.expires, 0)
  buf.writeUInt32LE(e.srcIdentity, 8)
  buf.writeUInt32LE(e.dstIdentity, 12)
  buf.writeUInt16LE(e.endpointId, 16)
  buf.writeUInt16LE(e.flags, 18)
  return buf
}

export interface RawEvent {
  ts: bigint
  saddr: string
  daddr: string
  sport: number
  dport: number
  srcIdentity: number
  dstIdentity: number
  ifindex: number
  endpointId: number
  proto: number
  verdict: number
  reason: number
  direction: number
}

export function decodeEvent (buf: Buffer): RawEvent {
  return {
    ts: buf.readBigUInt64LE(0),
    saddr: readIpv4(buf, 8),
    daddr: readIpv4(buf, 12),
    sport: buf.readUInt16BE(16),
    dport: buf.readUInt16BE(18),
    srcIdentity: buf.readUInt32LE(20),
    dstIdentity: buf.readUInt32LE(24),
    ifindex: buf.readUInt32LE(28),
    endpointId: buf.readUInt16LE(32),
    proto: buf[34],
    verdict: buf[35],
    reason: buf[36],
    direction: buf[37]
  }
}
