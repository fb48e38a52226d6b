/**
 * Opening the datapath: the programs loaded or the pinned ones reused (reloaded over the same
 * maps when the object on disk is another build or the ipcache was resized), the proxy rule and
 * route installed, the config map written, events read.
 */
import { objGet, createMapRef, RawMap } from 'bpf'
import {
  CFG_MADE_ROUTE, CFG_MADE_RULE, FEAT_HOST_ROUTING, HOOK_EGRESS, HOOK_INGRESS, SIZE, decodeAttach, decodeConfig, encodeConfig
} from './layout.js'
import {
  DEFAULT_ROUTE_TABLE, attachHook, ensureBpffs, ifnameOf, installRouting,
  loadObject, mapPath, objectPath, objectTag, pinsComplete, programsUseMap, promoteProgs
} from './loader.js'
import type { Datapath, DatapathOptions } from './datapath-api.js'
import { DatapathImpl } from './datapath.js'
import { DatapathError } from './errors.js'
import { prepareIpcache, promoteIpcache } from './ipcache-resize.js'
import { DEFAULT_IPCACHE_MAX_ENTRIES, IPCACHE_MAX_ENTRIES, IPCACHE_MIN_ENTRIES } from './limits.js'
import { openMaps } from './maps.js'

function checkPort (name: string, v: number): void {
  if (!Number.isInteger(v) || v < 1 || v > 65535) throw new DatapathError('WARDEN_ERR_CONFIG', `${name} must be 1..65535, got ${v}`)
}

/**
 * Open the datapath: mount bpffs if needed, load the programs or reuse the pinned ones
 * (reloading, with the same maps, when the object on disk is a different build), install
 * the proxy rule and route, start reading events.
 */
export async function openDatapath (opts: DatapathOptions): Promise<Datapath> {
  checkPort('proxyPort', opts.proxyPort)
  checkPort('dnsProxyPort', opts.dnsProxyPort)
  const table = opts.routeTable ?? DEFAULT_ROUTE_TABLE
  const log = opts.logger
  const ipcacheMax = opts.ipcacheMaxEntries ?? DEFAULT_IPCACHE_MAX_ENTRIES
  if (!Number.isInteger(ipcacheMax) || ipcacheMax < IPCACHE_MIN_ENTRIES || ipcacheMax > IPCACHE_MAX_ENTRIES) {
    throw new DatapathError('WARDEN_ERR_CONFIG', `ipcacheMaxEntries must be ${IPCACHE_MIN_ENTRIES}..${IPCACHE_MAX_ENTRIES}, got ${ipcacheMax}`)
  }
  await ensureBpffs(opts.bpffs)
  const tag = objectTag(objectPath())
  let upgrade = false
  const complete = pinsComplete(opts.bpffs)
  const ipcachePin = await prepareIpcache(opts.bpffs, ipcacheMax)
  const resized = ipcachePin !== mapPath(opts.bpffs, 'l7p_ipcache')
  if (!complete) {
    await loadObject(opts.bpffs, 'progs', ipcachePin)
    // filters left from an interrupted start are re-attached by the first apply
    promoteIpcache(opts.bpffs)
    log.info({ bpffs: opts.bpffs, ipcacheMaxEntries: ipcacheMax }, 'datapath loaded and pinned')
  } else {
    const cfgMap = new RawMap(createMapRef(objGet(mapPath(opts.bpffs, 'l7p_config')), { transfer: true }))
    const cur = cfgMap.get(Buffer.alloc(4))
    cfgMap.ref.close()
    // a resized ipcache needs programs that use it, as a new build does; so do programs left
    // bound to another ipcache than the pinned one by a start killed part-way (see below)
    const stale = !resized && !await programsUseMap(opts.bpffs, ipcachePin)
    if (stale) log.warn({ bpffs: opts.bpffs }, 'the pinned programs do not use the pinned ipcache (an interrupted start); reloading them')
    upgrade = cur === undefined || decodeConfig(cur).progTag !== tag || resized || stale
    if (upgrade) await loadObject(opts.bpffs, 'progs_new', ipcachePin)
    log.info({ bpffs: opts.bpffs, upgrade, ipcacheResized: resized, ipcacheMaxEntries: ipcacheMax }, 'datapath reusing pinned maps')
  }
  if (upgrade) {
    // point every attached filter at the new programs (and the new ipcache), then retire the
    // old pins; the old ipcache goes when the last program holding it is released. Programs
    // first, the ipcache pin last: a kill between the two leaves `progs/` on the new map and the
    // old map pinned at its old size, which the next start resizes again; the other order would
    // leave `progs/` on a map no longer pinned, which nobody writes.
    const attach = new RawMap(createMapRef(objGet(mapPath(opts.bpffs, 'l7p_attach')), { transfer: true }))
    try {
      for (const [k, v] of attach.entries()) {
        const rec = decodeAttach(v)
        const name = ifnameOf(k.readUInt32LE(0))
        if (name === undefined) continue
        if ((rec.hooks & HOOK_INGRESS) !== 0) await attachHook(opts.bpffs, name, 'ingress', 'progs_new')
        if ((rec.hooks & HOOK_EGRESS) !== 0) await attachHook(opts.bpffs, name, 'egress', 'progs_new')
      }
    } finally {
      attach.ref.close()
    }
    promoteProgs(opts.bpffs)
    promoteIpcache(opts.bpffs)
  }
  const { maps, refs } = openMaps(opts.bpffs)
  const zero = Buffer.alloc(4)
  const prev = maps.l7p_config.get(zero)
  const prevCfg = prev === undefined ? undefined : decodeConfig(prev)
  let flags = prevCfg !== undefined && prevCfg.routeTable === table ? prevCfg.flags : 0
  const made = await installRouting(table)
  if (made.rule) flags |= CFG_MADE_RULE
  if (made.route) flags |= CFG_MADE_ROUTE
  maps.l7p_config.set(zero, encodeConfig(Buffer.alloc(SIZE.config), {
    proxyPort: opts.proxyPort,
    dnsProxyPort: opts.dnsProxyPort,
    routeTable: table,
    flags,
    features: opts.hostRouting === false ? 0 : FEAT_HOST_ROUTING,
    progTag: tag
  }))
  const dp = new DatapathImpl(opts, maps, refs)
  dp.startEvents()
  return dp
}
