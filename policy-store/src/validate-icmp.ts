/**
 * `icmps` rules: ICMP types by number or by Cilium's name, IPv4 only. Each type becomes a port
 * item of protocol 1 whose port is ICMP_PORT_BASE | type, which is how the kernel program looks
 * ICMP up (types.ts).
 */
import { ERR } from './errors.js'
import type { Checker } from './checker.js'
import type { PortItem } from './model.js'
import type { PathSeg } from './source-file.js'
import { ICMP_PORT_BASE } from './types.js'

/** Cilium's cap on fields per ICMPRule (`maxICMPFields` in pkg/policy/api/icmp.go). */
const MAX_ICMP_FIELDS = 40
/** Cilium's ICMPv4 type names (pkg/policy/api/icmp.go, icmpIpv4TypeNameToCode). */
export const ICMP_TYPE_NAMES: Readonly<Record<string, number>> = {
  EchoReply: 0,
  DestinationUnreachable: 3,
  Redirect: 5,
  Echo: 8,
  EchoRequest: 8,
  RouterAdvertisement: 9,
  RouterSelection: 10,
  TimeExceeded: 11,
  ParameterProblem: 12,
  Timestamp: 13,
  TimestampReply: 14,
  Photuris: 40,
  ExtendedEchoRequest: 42,
  ExtendedEchoReply: 43
}

/** An ICMP type by number (0..255) or by Cilium's name; null (and an error) otherwise. */
export function icmpType (v: unknown): number | string {
  if (typeof v === 'number') return Number.isInteger(v) && v >= 0 && v <= 255 ? v : `type ${v} is out of range 0..255`
  if (typeof v === 'string') {
    const n = ICMP_TYPE_NAMES[v]
    return n !== undefined ? n : `unknown ICMP type name "${v}" (expected 0..255 or one of: ${Object.keys(ICMP_TYPE_NAMES).join(', ')})`
  }
  return 'must be a number 0..255 or an ICMP type name'
}

/** `icmps: [{fields: [{type, family}]}]`: each ICMPRule is one port list of ICMP types. */
export function validateIcmps (v: unknown, path: PathSeg[], c: Checker): PortItem[][] {
  const out: PortItem[][] = []
  c.list(v, path)?.forEach((r, i) => {
    const rp = [...path, i]
    const ro = c.obj(r, rp, ['fields'])
    if (ro === null) return
    const fields = ro.fields === undefined ? null : c.list(ro.fields, [...rp, 'fields'])
    if (fields === null || fields.length === 0) { if (ro.fields === undefined || fields !== null) c.r.add(ERR.REQUIRED, [...rp, 'fields'], 'fields must list at least one ICMP type'); return }
    if (fields.length > MAX_ICMP_FIELDS) c.r.add(ERR.PORT, [...rp, 'fields'], `too many ICMP fields, the max is ${MAX_ICMP_FIELDS}`)
    const items: PortItem[] = []
    fields.forEach((f, j) => {
      const fp = [...rp, 'fields', j]
      const fo = c.obj(f, fp, ['type', 'family'])
      if (fo === null) return
      if (fo.family !== undefined) {
        const fam = c.str(fo.family, [...fp, 'family'])
        if (fam === 'IPv6') { c.r.add(ERR.UNSUPPORTED, [...fp, 'family'], 'ICMPv6 rules are not supported (warden enforces IPv4)'); return }
        if (fam !== null && fam !== 'IPv4') { c.r.add(ERR.VALUE, [...fp, 'family'], `family must be IPv4 or IPv6, got "${fam}"`); return }
      }
      if (fo.type === undefined) { c.r.add(ERR.REQUIRED, fp, 'type is required'); return }
      const ty = icmpType(fo.type)
      if (typeof ty === 'string') { c.r.add(ERR.VALUE, [...fp, 'type'], ty); return }
      items.push({ protocol: 1, port: ICMP_PORT_BASE | ty, endPort: ICMP_PORT_BASE | ty })
    })
    out.push(items)
  })
  return out
}
