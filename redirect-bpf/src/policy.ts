/**
 * KernelEntry (policy-store/src/types.ts) -> l7p_policy LPM entries.
 *
 * A port range is stored as the aligned power-of-two blocks that cover it exactly (at most
 * 30 for 1..65535), so `port: 1024, endPort: 65535` costs 6 entries, not 64,512: ranges
 * need no cap. Two entries that land on the same key (overlapping ranges of one peer) keep
 * the strongest verdict: deny > redirect-dns > redirect-http > allow -- deny wins, as in
 * Cilium, and a redirect is never lost to a plain allow (the proxy still enforces L7).
 */
import type { KernelEntry, Verdict } from '../../policy-store/src/types.js'
import { encodePolicyKey, encodePolicyValue, SIZE, VERDICT } from './layout.js'
import { DatapathError } from './errors.js'

export const POLICY_MAP_MAX = 262144

const VERDICT_NUM: Record<Verdict, number> = {
  allow: VERDICT.ALLOW,
  deny: VERDICT.DENY,
  'redirect-http': VERDICT.REDIRECT_HTTP,
  'redirect-dns': VERDICT.REDIRECT_DNS
}
const ANY_PORT: Array<[number, number]> = [[0, 0]]
/** Collision precedence by verdict number. */
const RANK = [0, 1, 4, 2, 3]

/** Aligned blocks covering [lo, hi] exactly: [start, prefixLength] pairs over 16 bits. */
export function portBlocks (lo: number, hi: number): Array<[number, number]> {
  const out: Array<[number, number]> = []
  let start = lo
  while (start <= hi) {
    let size = start === 0 ? 65536 : start & -start // largest block aligned at start
    while (start + size - 1 > hi) size >>= 1
    out.push([start, 16 - Math.log2(size)])
    start += size
  }
  return out
}

export interface PolicyRecord { key: Buffer, value: Buffer, verdict: number }

/**
 * Compile the desired map content: key bytes -> value bytes, both as latin1 strings (cheap
 * to hash and compare, about ten times cheaper than a Buffer per entry at 10k entries),
 * so a sync is a set difference against the current content and only writes make Buffers.
 */
export function compilePolicy (entries: readonly KernelEntry[]): Map<string, string> {
  const out = new Map<string, string>()
  const kb = Buffer.alloc(SIZE.policyKey)
  const vb = Buffer.alloc(SIZE.policyValue)
  for (const e of entries) {
    const verdict = VERDICT_NUM[e.verdict]
    if (verdict === undefined) throw new DatapathError('WARDEN_ERR_POLICY_ENTRY', `unknown verdict ${String(e.verdict)}`, { entry: e })
    if (e.port === 0 && e.endPort !== 0) throw new DatapathError('WARDEN_ERR_POLICY_ENTRY', 'endPort without port', { entry: e })
    const blocks: Array<[number, number]> = e.port === 0
      ? ANY_PORT
      : e.endPort <= e.port ? [[e.port, 16]] : portBlocks(e.port, e.endPort)
    for (const [port, portPrefix] of blocks) {
      encodePolicyKey(kb, {
        endpointId: e.endpointId,
        direction: e.direction,
        protocol: e.protocol,
        identity: e.remoteIdentity,
        port,
        portPrefix
      })
      const id = kb.toString('latin1')
      const prev = out.get(id)
      if (prev !== undefined && RANK[prev.charCodeAt(0)] >= RANK[verdict]) continue
      out.set(id, encodePolicyValue(vb, { verdict, portPrefix, cookie: 0 }).toString('latin1'))
    }
  }
  if (out.size > POLICY_MAP_MAX) {
    throw new DatapathError('WARDEN_ERR_POLICY_TOO_LARGE',
      `policy needs ${out.size} kernel entries, the map holds ${POLICY_MAP_MAX}`, { entries: out.size })
  }
  return out
}

/** Decoded view of compilePolicy's output (tests, debugging). */
export function policyRecords (compiled: Map<string, string>): PolicyRecord[] {
  return [...compiled].map(([k, v]) => ({ key: Buffer.from(k, 'latin1'), value: Buffer.from(v, 'latin1'), verdict: v.charCodeAt(0) }))
}
