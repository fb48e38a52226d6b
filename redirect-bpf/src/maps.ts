/**
 * The pinned maps the agent reads and writes through bpf() (`bpf`'s RawMap), opened by path.
 */
import { objGet, createMapRef, RawMap, type MapRef } from 'bpf'
import { MAP_NAMES, mapPath, type MapName } from './loader.js'

export type Maps = Record<MapName, RawMap>

/** Open every pinned map but the ones read through libbpf and the programs' own cache. */
export function openMaps (bpffs: string): { maps: Maps, refs: MapRef[] } {
  const refs: MapRef[] = []
  const maps = {} as Maps
  for (const name of MAP_NAMES) {
    if (name === 'l7p_events' || name === 'l7p_counters') continue // read through libbpf
    if (name === 'l7p_fib') continue // the programs' own cache
    const ref = createMapRef(objGet(mapPath(bpffs, name)), { transfer: true })
    refs.push(ref)
    maps[name] = new RawMap(ref)
  }
  return { maps, refs }
}
