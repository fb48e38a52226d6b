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

function checkEntry (e: KernelEntry): number {
  const verdict = VERDICT_NUM[e.verdict]
  if (verdict === undefined) throw new DatapathError('WARDEN_ERR_POLICY_ENTRY', `unknown verdict ${String(e.verdict)}`, { entry: e })
  if (e.port === 0 && e.endPort !== 0) throw new DatapathError('WARDEN_ERR_POLICY_ENTRY', 'endPort without port', { entry: e })
  return verdict
}

/**
 * The desired content of l7p_policy, kept per key as a count of the entries that put each
 * verdict there, so that an entry can be added or removed on its own (a diff) and the key
 * still ends with the strongest verdict of the entries left (RANK). Keys are latin1 strings
 * of the key bytes (cheap to hash and compare, about ten times cheaper than a Buffer per entry
 * at 10k entries), so a sync is a set difference and only writes make Buffers.
 *
 * An entry is one (endpoint, direction, peer identity, protocol, port range) with one verdict.
 * Adding an entry that is there with another verdict replaces it (the compiler's diff lists a
 * changed verdict as an addition only); removing one counts it out only when it is there with
 * that verdict. So a diff that lists a change both ways applies in either order.
 */
export class PolicyIndex {
  /** key -> entries per verdict number (index 0 unused). */
  private readonly refs = new Map<string, Uint32Array>()
  /** The entries counted in: their identity (all but the verdict) -> verdict. */
  private readonly entries = new Map<string, number>()
  private readonly kb = Buffer.alloc(SIZE.policyKey)
  private readonly vb = Buffer.alloc(SIZE.policyValue)
  /** Encoded values by verdict x port prefix: a few dozen distinct strings, made once. */
  private readonly values: string[] = []

  constructor (entries: readonly KernelEntry[] = []) {
    for (const e of entries) this.add(e)
  }

  get size (): number { return this.refs.size }

  /** Count `e` in (replacing the same entry with another verdict); the keys it covers go into `touched`. */
  add (e: KernelEntry, touched?: Set<string>): void {
    const verdict = checkEntry(e)
    const k = entryIdentity(e)
    const before = this.entries.get(k)
    if (before === verdict) return
    if (before !== undefined) this.uncount(e, before, touched)
    this.entries.set(k, verdict)
    this.eachKey(e, (id) => {
      let c = this.refs.get(id)
      if (c === undefined) this.refs.set(id, c = new Uint32Array(RANK.length))
      c[verdict]++
      touched?.add(id)
    })
  }

  /** Count `e` out (an entry not there with this verdict changes nothing); the keys it covers go into `touched`. */
  remove (e: KernelEntry, touched?: Set<string>): void {
    const verdict = checkEntry(e)
    const k = entryIdentity(e)
    if (this.entries.get(k) !== verdict) return
    this.entries.delete(k)
    this.uncount(e, verdict, touched)
  }

  private uncount (e: KernelEntry, verdict: number, touched?: Set<string>): void {
    this.eachKey(e, (id) => {
      const c = this.refs.get(id)
      if (c === undefined || c[verdict] === 0) return
      c[verdict]--
      if (c.every((n) => n === 0)) this.refs.delete(id)
      touched?.add(id)
    })
  }

  /** The value the key must hold, or undefined when no entry covers it. */
  value (id: string): string | undefined {
    const c = this.refs.get(id)
    if (c === undefined) return undefined
    let best = 0
    for (let v = 1; v < c.length; v++) if (c[v] > 0 && RANK[v] > RANK[best]) best = v
    const portPrefix = id.charCodeAt(0) - 64 // prefixlen (LE u32) = 64 + port prefix: its low byte
    const slot = best * 17 + portPrefix
    let v = this.values[slot]
    if (v === undefined) v = this.values[slot] = encodePolicyValue(this.vb, { verdict: best, portPrefix, cookie: 0 }).toString('latin1')
    return v
  }

  /** The whole desired content: key -> value. */
  toMap (): Map<string, string> {
    const out = new Map<string, string>()
    for (const id of this.refs.keys()) out.set(id, this.value(id) as string)
    return out
  }

  /** Throw when the map could not hold the content. */
  checkSize (): void {
    if (this.refs.size > POLICY_MAP_MAX) {
      throw new DatapathError('WARDEN_ERR_POLICY_TOO_LARGE',
        `policy needs ${this.refs.size} kernel entries, the map holds ${POLICY_MAP_MAX}`, { entries: this.refs.size })
    }
  }

  private eachKey (e: KernelEntry, fn: (id: string) => void): void {
    const blocks: Array<[number, number]> = e.port === 0
      ? ANY_PORT
      : e.endPort <= e.port ? [[e.port, 16]] : portBlocks(e.port, e.endPort)
    for (const [port, portPrefix] of blocks) {
      encodePolicyKey(this.kb, {
        endpointId: e.endpointId,
        direction: e.direction,
        protocol: e.protocol,
        identity: e.remoteIdentity,
        port,
        portPrefix
      })
      fn(this.kb.toString('latin1'))
    }
  }
}

function entryIdentity (e: KernelEntry): string {
  return `${e.endpointId}|${e.direction}|${e.remoteIdentity}|${e.protocol}|${e.port}|${e.endPort}`
}

/** Compile the desired map content at once: key bytes -> value bytes, as latin1 strings. */
export function compilePolicy (entries: readonly KernelEntry[]): Map<string, string> {
  const index = new PolicyIndex(entries)
  index.checkSize()
  return index.toMap()
}

/** Decoded view of compilePolicy's output (tests, debugging). */
export function policyRecords (compiled: Map<string, string>): PolicyRecord[] {
  return [...compiled].map(([k, v]) => ({ key: Buffer.from(k, 'latin1'), value: Buffer.from(v, 'latin1'), verdict: v.charCodeAt(0) }))
}
