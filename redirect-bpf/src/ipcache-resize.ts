/**
 * The kernel ipcache's size is configuration: the loader creates the map at that size before the
 * object is loaded, and replaces a pinned ipcache of another size -- an older build's, or the
 * size changed -- by a copy of the configured size, with no moment where an attached program
 * sees an empty or missing ipcache (docs/datapath.md, "The ipcache's size is configuration").
 */
import { existsSync, renameSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { createMapRef, objGet, RawMap } from 'bpf'
import { DatapathError } from './errors.js'
import { run } from './sys.js'

/** Pin of a resized ipcache between its copy and the swap (see prepareIpcache). */
export const IPCACHE_NEW = 'l7p_ipcache_new'
/** The kernel's ipcache key and value sizes (l7p.h). */
const IPCACHE_KEY_SIZE = 8
const IPCACHE_VALUE_SIZE = 8
/** BPF_F_NO_PREALLOC, as warden.bpf.c declares every LPM trie. */
const BPF_F_NO_PREALLOC = 1

/** max_entries of a pinned map. */
export async function pinnedMaxEntries (pin: string): Promise<number> {
  const info = JSON.parse((await run('bpftool', ['-j', 'map', 'show', 'pinned', pin])).stdout) as { max_entries?: number }
  if (!Number.isInteger(info.max_entries)) throw new DatapathError('WARDEN_ERR_BPF_PIN', `${pin}: bpftool reports no max_entries`, { pin })
  return info.max_entries as number
}

async function createIpcache (pin: string, maxEntries: number): Promise<void> {
  await run('bpftool', ['map', 'create', pin, 'type', 'lpm_trie', 'key', String(IPCACHE_KEY_SIZE),
    'value', String(IPCACHE_VALUE_SIZE), 'entries', String(maxEntries), 'name', 'l7p_ipcache', 'flags', String(BPF_F_NO_PREALLOC)])
}

/**
 * Make sure an ipcache of `maxEntries` is pinned for the next load. Returns the pin the load
 * must use: `l7p_ipcache` itself when it is absent (created at that size) or has that size;
 * otherwise (an older build's size, or the flag changed) a new map at `l7p_ipcache_new` holding
 * a copy of every entry of the pinned one. The programs attached meanwhile keep reading the old
 * map, which nobody writes while the agent starts, so the copy is exact; the pin is swapped
 * (promoteIpcache) only once the filters run programs that use the new map: at no moment does
 * an attached program see a missing or empty ipcache (every source would be `world`).
 * Throws WARDEN_ERR_IPCACHE_SIZE, changing nothing, when the entries to keep do not fit.
 */
export async function prepareIpcache (bpffs: string, maxEntries: number): Promise<string> {
  const pin = join(bpffs, 'l7p_ipcache')
  const next = join(bpffs, IPCACHE_NEW)
  rmSync(next, { force: true }) // an interrupted resize: start it again from the live map
  if (!existsSync(pin)) {
    await createIpcache(pin, maxEntries)
    return pin
  }
  if (await pinnedMaxEntries(pin) === maxEntries) return pin
  await createIpcache(next, maxEntries)
  try {
    copyIpcache(pin, next, maxEntries)
  } catch (err) {
    rmSync(next, { force: true })
    throw err
  }
  return next
}

/** Swap the resized ipcache's pin in (after the filters point at programs that use it). */
export function promoteIpcache (bpffs: string): void {
  const next = join(bpffs, IPCACHE_NEW)
  if (existsSync(next)) renameSync(next, join(bpffs, 'l7p_ipcache'))
}

/**
 * Copy every entry of the pinned ipcache `from` into `to` (a new, empty map of `max` entries).
 * The entries are read first and counted: when they do not fit, nothing is written and the
 * agent stops with WARDEN_ERR_IPCACHE_SIZE (shrinking below what is enforced would leave
 * addresses without their identity). Returns how many were copied.
 */
function copyIpcache (from: string, to: string, max: number): number {
  const src = createMapRef(objGet(from), { transfer: true })
  const dst = createMapRef(objGet(to), { transfer: true })
  try {
    const entries: Array<[Buffer, Buffer]> = []
    for (const [k, v] of new RawMap(src).entries()) entries.push([Buffer.from(k), Buffer.from(v)])
    if (entries.length > max) {
      throw new DatapathError('WARDEN_ERR_IPCACHE_SIZE',
        `the pinned ipcache ${from} holds ${entries.length} entries, more than the ${max} configured: give a larger ipcache size (or stop the agents that publish them)`,
        { pin: from, entries: entries.length, max })
    }
    const out = new RawMap(dst)
    for (const [k, v] of entries) out.set(k, v)
    return entries.length
  } finally {
    src.close()
    dst.close()
  }
}
