/** IPv4 addresses and prefixes as unsigned 32-bit numbers. */

export interface Prefix { addr: number, len: number }

const OCTET = /^(0|[1-9][0-9]{0,2})$/

/** Parse a dotted quad; null if it is not exactly one (no leading zeros, each octet <= 255). */
export function parseIPv4 (s: string): number | null {
  const parts = s.split('.')
  if (parts.length !== 4) return null
  let n = 0
  for (const p of parts) {
    if (!OCTET.test(p)) return null
    const v = Number(p)
    if (v > 255) return null
    n = n * 256 + v
  }
  return n >>> 0
}

export function formatIPv4 (n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`
}

export function maskOf (len: number): number {
  return len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0
}

/** `a.b.c.d/len` or a bare address (= /32). Host bits are cleared. Error text on failure. */
export function parsePrefix (s: string): Prefix | string {
  if (s.includes(':')) return 'IPv6 is not supported yet (IPv4 only)'
  const slash = s.indexOf('/')
  const ip = parseIPv4(slash === -1 ? s : s.slice(0, slash))
  if (ip === null) return `"${s}" is not an IPv4 address or CIDR`
  let len = 32
  if (slash !== -1) {
    const l = s.slice(slash + 1)
    if (!/^(0|[1-9][0-9]?)$/.test(l) || Number(l) > 32) return `"${s}": prefix length must be 0..32`
    len = Number(l)
  }
  return { addr: (ip & maskOf(len)) >>> 0, len }
}

export function formatPrefix (p: Prefix): string {
  return `${formatIPv4(p.addr)}/${p.len}`
}

/** Is `inner` inside `outer` (equal counts)? */
export function prefixContains (outer: Prefix, inner: Prefix): boolean {
  return inner.len >= outer.len && ((inner.addr & maskOf(outer.len)) >>> 0) === outer.addr
}
