/**
 * Writing desired map content into the kernel, in the two ways Cilium splits it
 * (pkg/endpoint/bpf.go):
 * - `writeKeys` is the normal path (applyPolicyMapChanges): only the keys a diff touched are
 *   written, so an apply costs what changed, not the size of the policy.
 * - `syncWithDump` is the safety net (syncPolicyMapWithDump): the map is read back whole and
 *   compared with the whole desired content; only the differences are written. A difference
 *   from what the agent believed the map held is drift (a diff that missed a change, a write
 *   lost to a failure, another process writing the pins): counted as a repair.
 *
 * Keys and values are latin1 strings of their bytes (see PolicyIndex in policy.ts). Removals
 * go first, then upserts: a change between two policies passes through "neither" (drop),
 * never through "both".
 */
import type { RawMap } from 'bpf'
import { libbpf } from './libbpf.js'
import { BpfError } from './errors.js'

export interface WriteCount {
  /** Keys set (added or changed). */
  written: number
  /** Keys removed. */
  deleted: number
}

export interface SyncCount extends WriteCount {
  /** Keys where the map held something other than what the agent believed it held. */
  repairs: number
}

/** Entries per BPF_MAP_LOOKUP_BATCH call. */
const BATCH = 4096
const EINVAL = 22
const ENOENT = 2
const ENOSPC = 28
const EOPNOTSUPP = 95
/** The kernel's internal ENOTSUPP, which some map types return for missing batch ops. */
const ENOTSUPP = 524

/** Buffers of a batched dump, reused from one dump to the next. */
export interface BatchBuffers { keys: Buffer, values: Buffer, tokens: [Buffer, Buffer] }

export function batchBuffers (map: RawMap): BatchBuffers {
  // the position token is a key (generic batch ops, LPM tries) or a bucket index (hash maps)
  const tok = Math.max(8, map.ref.keySize)
  return { keys: Buffer.alloc(BATCH * map.ref.keySize), values: Buffer.alloc(BATCH * map.ref.valueSize), tokens: [Buffer.alloc(tok), Buffer.alloc(tok)] }
}

/**
 * Every entry of `map` through BPF_MAP_LOOKUP_BATCH, a few thousand per bpf() call, into `bufs`
 * (`each` gets the buffers and the entry's offsets; they are overwritten by the next batch).
 * Returns false, having read nothing, when the kernel has no batched lookup for the map type.
 * A walk with get_next_key costs two bpf() calls and two Buffers per entry: measured about 20
 * times slower on a 10,000-entry LPM trie.
 */
export function dumpBatched (map: RawMap, bufs: BatchBuffers,
  each: (keys: Buffer, kOff: number, values: Buffer, vOff: number) => void): boolean {
  const lib = libbpf()
  const ks = map.ref.keySize
  const vs = map.ref.valueSize
  let inBatch: Buffer | null = null
  let outBatch = bufs.tokens[0]
  const count = [0]
  for (;;) {
    count[0] = bufs.keys.length / ks
    const r = lib.lookupBatch(map.ref.fd, inBatch, outBatch, bufs.keys, bufs.values, count)
    if (r === -ENOSPC) {
      // a hash bucket holds more than a batch: a larger batch, from the same position
      bufs.keys = Buffer.alloc(bufs.keys.length * 2)
      bufs.values = Buffer.alloc(bufs.values.length * 2)
      continue
    }
    if (r < 0 && r !== -ENOENT) {
      if (inBatch === null && (r === -EINVAL || r === -ENOTSUPP || r === -EOPNOTSUPP)) return false
      throw new BpfError('bpf_map_lookup_batch', `map fd ${map.ref.fd}`, `errno ${-r}`, -r)
    }
    for (let i = 0; i < count[0]; i++) each(bufs.keys, i * ks, bufs.values, i * vs)
    if (r === -ENOENT) return true
    inBatch = outBatch
    outBatch = outBatch === bufs.tokens[0] ? bufs.tokens[1] : bufs.tokens[0]
  }
}

/** Every entry of a map, keys and values as latin1 strings. */
export function dumpMap (map: RawMap): Map<string, string> {
  const out = new Map<string, string>()
  const ks = map.ref.keySize
  const vs = map.ref.valueSize
  const batched = dumpBatched(map, batchBuffers(map), (keys, kOff, values, vOff) => {
    out.set(keys.toString('latin1', kOff, kOff + ks), values.toString('latin1', vOff, vOff + vs))
  })
  if (!batched) for (const [k, v] of map.entries()) out.set(k.toString('latin1'), v.toString('latin1'))
  return out
}

/**
 * Write the desired value of each key in `keys` (`want` answers undefined: remove it). `have`
 * is what the map is believed to hold; a key already holding its value is not written, and
 * `have` follows each write, so a failure part-way leaves it true.
 */
export function writeKeys (map: RawMap, have: Map<string, string>, want: (key: string) => string | undefined,
  keys: Iterable<string>): WriteCount {
  const count: WriteCount = { written: 0, deleted: 0 }
  const upserts: Array<[string, string]> = []
  for (const k of keys) {
    const v = want(k)
    if (v === undefined) {
      if (!have.has(k)) continue
      map.delete(Buffer.from(k, 'latin1'))
      have.delete(k)
      count.deleted++
    } else if (have.get(k) !== v) {
      upserts.push([k, v])
    }
  }
  for (const [k, v] of upserts) {
    map.set(Buffer.from(k, 'latin1'), Buffer.from(v, 'latin1'))
    have.set(k, v)
    count.written++
  }
  return count
}

/** Keys where a map's content (`dump`) differs from what it was believed to hold. */
export function countRepairs (dump: ReadonlyMap<string, string>, believed: ReadonlyMap<string, string>): number {
  let n = 0
  for (const [k, v] of dump) if (believed.get(k) !== v) n++
  for (const k of believed.keys()) if (!dump.has(k)) n++
  return n
}

/**
 * Make the map hold exactly `want`, comparing with what it really holds (`dump`). `believed`
 * is what the agent thought the map held (undefined when it does not know: at open, after a
 * failed apply); keys where the dump differs from it are counted as repairs. Returns the
 * writes made; on return `dump` equals `want`.
 */
export function syncWithDump (map: RawMap, dump: Map<string, string>, want: ReadonlyMap<string, string>,
  believed: ReadonlyMap<string, string> | undefined): SyncCount {
  const repairs = believed === undefined ? 0 : countRepairs(dump, believed)
  // keys only the dump has, then every wanted key (no union set: a full sync walks both anyway)
  function * keys (): Generator<string> {
    for (const k of dump.keys()) if (!want.has(k)) yield k
    yield * want.keys()
  }
  return { ...writeKeys(map, dump, (k) => want.get(k), keys()), repairs }
}
