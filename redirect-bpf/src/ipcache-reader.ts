/**
 * Identity lookups in the pinned ipcache (longest-prefix match on an LPM trie).
 */
import { objGet, createMapRef, RawMap } from 'bpf'
import { RESERVED } from '../../policy-store/src/types.js'
import { SIZE, decodeIpcacheValue, encodeIpcacheKey } from './layout.js'
import { mapPath } from './loader.js'

/** The identity of one address in the ipcache (its /32 lookup, longest prefix); world when none. */
export function ipcacheIdentity (map: RawMap, ipv4: string): number {
  const v = map.get(encodeIpcacheKey(Buffer.alloc(SIZE.ipcacheKey), ipv4 + '/32'))
  return v === undefined ? RESERVED.WORLD : decodeIpcacheValue(v).identity
}

/**
 * Identity lookups in the pinned ipcache of an open datapath, for another thread (an HTTP
 * proxy worker) that cannot share the Datapath object: its own map handle, read only.
 */
export function openIpcacheReader (bpffs: string): { lookupIdentity: (ipv4: string) => number, close: () => void } {
  const ref = createMapRef(objGet(mapPath(bpffs, 'l7p_ipcache')), { transfer: true })
  const map = new RawMap(ref)
  return { lookupIdentity: (ipv4) => ipcacheIdentity(map, ipv4), close: () => { ref.close() } }
}
