/**
 * `warden uninstall`: undo what an instance made, from what it recorded in its pinned maps.
 */
import { objGet, createMapRef, RawMap } from 'bpf'
import { existsSync } from 'node:fs'
import { CFG_MADE_ROUTE, CFG_MADE_RULE, decodeAttach, decodeConfig } from './layout.js'
import { DEFAULT_ROUTE_TABLE, checkPinDir, mapPath, removePins, removeRouting } from './loader.js'
import { detachIfindex } from './attachments.js'
import { DatapathError } from './errors.js'

/**
 * Remove everything an instance made: its tc filters (and the clsact qdiscs it created),
 * its ip rule and route (only those it added), and its pins. Safe to run twice.
 *
 * The pin directory is checked before anything changes (`checkPinDir`: on bpffs, holding only
 * warden's names). An interface that cannot be detached keeps its record in `l7p_attach` and
 * every pin stays, so that a second run, once the cause is fixed, finishes the job.
 */
export async function uninstall (opts: { bpffs: string, routeTable?: number }): Promise<void> {
  const pinned = checkPinDir(opts.bpffs)
  let table = opts.routeTable ?? DEFAULT_ROUTE_TABLE
  let flags = 0
  let cfgFound = false
  const failed: Array<{ ifindex: number, err: Error }> = []
  const attachPath = mapPath(opts.bpffs, 'l7p_attach')
  const cfgPath = mapPath(opts.bpffs, 'l7p_config')
  if (pinned && existsSync(cfgPath)) {
    const m = new RawMap(createMapRef(objGet(cfgPath), { transfer: true }))
    const v = m.get(Buffer.alloc(4))
    m.ref.close()
    if (v !== undefined) {
      const cfg = decodeConfig(v)
      if (cfg.routeTable !== 0) table = cfg.routeTable
      flags = cfg.flags
      cfgFound = true
    }
  }
  if (pinned && existsSync(attachPath)) {
    const m = new RawMap(createMapRef(objGet(attachPath), { transfer: true }))
    try {
      for (const [k, v] of [...m.entries()]) {
        const ifindex = k.readUInt32LE(0)
        try {
          await detachIfindex(ifindex, decodeAttach(v))
          m.delete(k)
        } catch (err) {
          failed.push({ ifindex, err: err as Error })
        }
      }
    } finally {
      m.ref.close()
    }
  }
  // without a config record (pins already gone) the rule/route of `table` are ours by name
  await removeRouting(table, cfgFound ? (flags & CFG_MADE_RULE) !== 0 : true, cfgFound ? (flags & CFG_MADE_ROUTE) !== 0 : true)
  if (failed.length > 0) {
    const what = failed.map((f) => `ifindex ${f.ifindex}: ${f.err.message}`).join('; ')
    throw new DatapathError('WARDEN_ERR_DETACH',
      `could not detach ${failed.length} interface(s), pins kept in ${opts.bpffs} so that a second uninstall finishes: ${what}`,
      { bpffs: opts.bpffs })
  }
  removePins(opts.bpffs)
}

