/**
 * Loading, pinning and attaching, done with bpftool and tc (iproute2):
 * - bpftool `prog loadall` loads both programs of the object, pins them, and can reuse
 *   maps that are already pinned (`map name X pinned PATH`): that is what makes a restart
 *   or an upgrade keep the CT, policy and ipcache state. tc alone pins maps only under
 *   its own /sys/fs/bpf/tc/globals, which parallel instances (and tests) would share.
 * - tc attaches the pinned programs (`object-pinned`) as classic clsact filters, which
 *   stay attached when the agent exits: no gap for L3/L4 between two runs. (tcx links
 *   would need a pinned link per interface and a newer bpftool than Debian 12's 7.1.)
 *
 * Layout under the bpffs dir: `l7p_*` maps, `progs/from_workload`, `progs/to_workload`
 * (bpffs refuses names with a dot, hence `progs_new` and `l7p_ipcache_new` during an upgrade).
 *
 * The ipcache is the one map whose size is configuration (`ipcacheMaxEntries`): the loader
 * creates it itself, before the object is loaded, and the load reuses it. bpftool's
 * `map name X pinned PATH` takes the pinned map as it is (libbpf's bpf_map__reuse_fd adopts
 * the map's max_entries), so the object's own size is only a placeholder.
 */
import { createHash } from 'node:crypto'
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmdirSync, rmSync, statfsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { bpffsMountedAt, isMountPoint, run, runTolerant } from './sys.js'
import { DatapathError } from './errors.js'
import { COUNTER_SLOTS } from './layout.js'
export { DEFAULT_IPCACHE_MAX_ENTRIES } from './limits.js'
import { IPCACHE_NEW } from './ipcache-resize.js'

export const MAP_NAMES = [
  'l7p_config', 'l7p_endpoints', 'l7p_attach', 'l7p_ipcache', 'l7p_policy', 'l7p_ct',
  'l7p_events', 'l7p_counters', 'l7p_fib'
] as const
/**
 * Maps an older build pinned that this one no longer has; their pins go at load (programs of
 * that build still attached keep the map until they are replaced). l7p_udp_orig: the DNS
 * proxy reads IP_ORIGDSTADDR instead.
 */
export const RETIRED_MAPS = ['l7p_udp_orig'] as const
export type MapName = typeof MAP_NAMES[number]
/** Where a load pins the object's maps before those it created are moved into place. */
const MAPS_NEW = 'maps_new'
export const PROGS = ['from_workload', 'to_workload'] as const

/** tc filter priority and handle of warden's filters (one per hook per interface). */
export const TC_PREF = 7
export const TC_HANDLE = '0x77'
export const MARK_TO_PROXY = '0x200/0xf00'
/** SO_MARK of the proxies' own TCP sockets (l7p.h L7P_MARK_PROXY): their data segments skip conntrack in to_workload. */
export const PROXY_SOCKET_MARK = 0x400
export const RULE_PREF = 9 // Cilium's RulePriorityToProxyIngress
export const DEFAULT_ROUTE_TABLE = 2004

/** The directory holding package.json: works from redirect-bpf/src and dist/redirect-bpf/src. */
function projectRoot (): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'redirect-bpf'))) return dir
    dir = dirname(dir)
  }
  throw new DatapathError('WARDEN_ERR_BPF_OBJECT', 'cannot find the project root (redirect-bpf/)')
}

export function objectPath (): string {
  const p = join(projectRoot(), 'redirect-bpf/build/warden.bpf.o')
  if (!existsSync(p)) {
    throw new DatapathError('WARDEN_ERR_BPF_OBJECT', `${p} is missing: run \`npm run build\` (needs clang)`, { path: p })
  }
  return p
}

/** First 8 bytes of the object's sha256: tells whether the pinned programs are this build. */
export function objectTag (path: string): bigint {
  return createHash('sha256').update(readFileSync(path)).digest().readBigUInt64LE(0)
}

export function mapPath (bpffs: string, name: MapName): string { return join(bpffs, name) }
export function progPath (bpffs: string, name: typeof PROGS[number]): string { return join(bpffs, 'progs', name) }

export async function ensureBpffs (dir: string): Promise<void> {
  if (!bpffsMountedAt(dir)) {
    const mnt = dir.startsWith('/sys/fs/bpf/') || dir === '/sys/fs/bpf' ? '/sys/fs/bpf' : dir
    mkdirSync(mnt, { recursive: true })
    await run('mount', ['-t', 'bpf', 'bpf', mnt])
  }
  mkdirSync(dir, { recursive: true })
}

export function pinsComplete (bpffs: string): boolean {
  return MAP_NAMES.every((m) => existsSync(mapPath(bpffs, m))) && PROGS.every((p) => existsSync(progPath(bpffs, p)))
}

/**
 * Load the object into `<bpffs>/<progDir>`, reusing every map already pinned in bpffs and
 * pinning the ones that are not; the ipcache from `ipcachePin` (see prepareIpcache). Returns
 * nothing; the pins are the result.
 */
export async function loadObject (bpffs: string, progDir: string, ipcachePin = mapPath(bpffs, 'l7p_ipcache')): Promise<void> {
  const obj = objectPath()
  const target = join(bpffs, progDir)
  if (existsSync(target)) rmSync(target, { recursive: true, force: true })
  await retireReshapedCounters(bpffs)
  for (const m of RETIRED_MAPS) rmSync(join(bpffs, m), { force: true })
  const args = ['prog', 'loadall', obj, target, 'type', 'tc']
  const pinned = MAP_NAMES.filter((m) => existsSync(mapPath(bpffs, m)))
  for (const m of pinned) args.push('map', 'name', m, 'pinned', m === 'l7p_ipcache' ? ipcachePin : mapPath(bpffs, m))
  // Every map of the object is pinned under MAPS_NEW (the reused ones a second time: pinning them
  // at their own path would fail, it exists), then the ones this load created -- all but the
  // ipcache on a first start, a map an upgrade adds -- are moved into place; the rest of the
  // directory goes. Programs hold their maps, so the extra pins are only names.
  const staging = join(bpffs, MAPS_NEW)
  rmSync(staging, { recursive: true, force: true })
  args.push('pinmaps', staging)
  try {
    await run('bpftool', args)
    for (const m of MAP_NAMES) {
      if (!existsSync(mapPath(bpffs, m)) && existsSync(join(staging, m))) renameSync(join(staging, m), mapPath(bpffs, m))
    }
  } finally {
    rmSync(staging, { recursive: true, force: true })
  }
  const still = MAP_NAMES.filter((m) => !existsSync(mapPath(bpffs, m)))
  if (still.length > 0) throw new DatapathError('WARDEN_ERR_BPF_PIN', `maps not pinned: ${still.join(', ')}`, { bpffs })
}

/**
 * A pinned map is reused only when its shape matches the object's, or the load fails. The
 * counters hold no state worth keeping: when an older build pinned them with fewer slots,
 * drop that pin (programs still attached keep their map until they are replaced) and let
 * the load create and pin the new one. Every other map keeps its shape across builds.
 */
async function retireReshapedCounters (bpffs: string): Promise<void> {
  const pin = mapPath(bpffs, 'l7p_counters')
  if (!existsSync(pin)) return
  const info = JSON.parse((await run('bpftool', ['-j', 'map', 'show', 'pinned', pin])).stdout) as { max_entries?: number }
  if (info.max_entries !== COUNTER_SLOTS) rmSync(pin)
}

/**
 * Do the pinned programs (`<bpffs>/progs`) use the map pinned at `mapPin`? A start that was
 * killed part-way through an upgrade or resize can leave programs bound to a map whose pin was
 * replaced: they would read a map nobody writes any more. Compared by map id (bpftool's
 * `map_ids` of each program).
 */
export async function programsUseMap (bpffs: string, mapPin: string): Promise<boolean> {
  const map = JSON.parse((await run('bpftool', ['-j', 'map', 'show', 'pinned', mapPin])).stdout) as { id?: number }
  for (const p of PROGS) {
    const prog = JSON.parse((await run('bpftool', ['-j', 'prog', 'show', 'pinned', progPath(bpffs, p)])).stdout) as { map_ids?: number[] }
    if (map.id === undefined || prog.map_ids?.includes(map.id) !== true) return false
  }
  return true
}

/** Swap `<bpffs>/progs_new` in for `<bpffs>/progs` (after filters point at the new ones). */
export function promoteProgs (bpffs: string): void {
  const cur = join(bpffs, 'progs')
  if (existsSync(cur)) rmSync(cur, { recursive: true, force: true })
  renameSync(join(bpffs, 'progs_new'), cur)
}

export function ifnameOf (ifindex: number): string | undefined {
  for (const name of readdirSync('/sys/class/net')) {
    try {
      if (Number(readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8')) === ifindex) return name
    } catch { /* raced with a removal */ }
  }
  return undefined
}

/** Attach one hook; returns whether this call created the clsact qdisc. */
export async function attachHook (bpffs: string, ifname: string, hook: 'ingress' | 'egress', progDir = 'progs'): Promise<boolean> {
  const made = await runTolerant('tc', ['qdisc', 'add', 'dev', ifname, 'clsact'], /File exists|Exclusivity flag on/)
  const prog = join(bpffs, progDir, hook === 'ingress' ? 'from_workload' : 'to_workload')
  await run('tc', ['filter', 'replace', 'dev', ifname, hook, 'pref', String(TC_PREF), 'handle', TC_HANDLE,
    'bpf', 'da', 'object-pinned', prog])
  return made
}

export async function detachHook (ifname: string, hook: 'ingress' | 'egress'): Promise<void> {
  await runTolerant('tc', ['filter', 'del', 'dev', ifname, hook, 'pref', String(TC_PREF), 'handle', TC_HANDLE, 'bpf'],
    /No such file|Cannot find|not found|Invalid handle|does not exist/i)
}

/** Remove the clsact qdisc when no filter is left on it (we created it; nobody else uses it). */
export async function removeQdiscIfEmpty (ifname: string): Promise<void> {
  for (const hook of ['ingress', 'egress']) {
    let out: string
    try { out = (await run('tc', ['filter', 'show', 'dev', ifname, hook])).stdout } catch { return }
    if (out.trim() !== '') return
  }
  await runTolerant('tc', ['qdisc', 'del', 'dev', ifname, 'clsact'], /No such file|Cannot find|Invalid handle/i)
}

interface IpRule { priority?: number, fwmark?: string, fwmask?: string, table?: string, src?: string }

export async function hasRule (table: number): Promise<boolean> {
  const rules = JSON.parse((await run('ip', ['-j', 'rule', 'show'])).stdout || '[]') as IpRule[]
  return rules.some((r) => r.fwmark === '0x200' && r.fwmask === '0xf00' && r.table === String(table))
}

export async function hasRoute (table: number): Promise<boolean> {
  let out
  try {
    out = (await run('ip', ['-j', 'route', 'show', 'table', String(table)])).stdout
  } catch { return false }
  const routes = JSON.parse(out || '[]') as Array<{ type?: string, dst?: string, dev?: string }>
  return routes.some((r) => r.type === 'local' && r.dst === 'default' && r.dev === 'lo')
}

/** Install the rule and the route if absent; returns which ones this call added. */
export async function installRouting (table: number): Promise<{ rule: boolean, route: boolean }> {
  let route = false
  let rule = false
  if (!await hasRoute(table)) {
    await run('ip', ['route', 'add', 'local', '0.0.0.0/0', 'dev', 'lo', 'table', String(table)])
    route = true
  }
  if (!await hasRule(table)) {
    await run('ip', ['rule', 'add', 'fwmark', MARK_TO_PROXY, 'lookup', String(table), 'pref', String(RULE_PREF)])
    rule = true
  }
  return { rule, route }
}

export async function removeRouting (table: number, rule: boolean, route: boolean): Promise<void> {
  if (rule) {
    while (await hasRule(table)) {
      await run('ip', ['rule', 'del', 'fwmark', MARK_TO_PROXY, 'lookup', String(table)])
    }
  }
  if (route) {
    await runTolerant('ip', ['route', 'del', 'local', '0.0.0.0/0', 'dev', 'lo', 'table', String(table)], /No such process|not found|does not exist/i)
  }
}

/** statfs f_type of a bpf filesystem (linux/magic.h BPF_FS_MAGIC). */
const BPF_FS_MAGIC = 0xcafe4a11
/** Every name warden creates directly under its pin directory. */
const OWNED_NAMES: ReadonlySet<string> = new Set([...MAP_NAMES, ...RETIRED_MAPS, IPCACHE_NEW, 'progs', 'progs_new', MAPS_NEW])
/** The directories warden creates there, and the names each holds. */
const OWNED_DIRS: ReadonlyMap<string, readonly string[]> = new Map<string, readonly string[]>([['progs', PROGS], ['progs_new', PROGS], [MAPS_NEW, MAP_NAMES]])

/**
 * Check that `bpffs` is a pin directory warden may clear: a directory (not a link) on a bpf
 * filesystem that holds only names warden creates. Uninstall runs as root with a path an
 * operator typed: `/sys/fs/bpf` itself, another tool's directory or a typo must be refused
 * before anything is removed. Returns false when the directory does not exist (nothing to do).
 */
export function checkPinDir (bpffs: string): boolean {
  let st
  try { st = lstatSync(bpffs) } catch { return false }
  if (!st.isDirectory()) throw new DatapathError('WARDEN_ERR_PIN_DIR', `${bpffs} is not a directory`, { bpffs })
  if (statfsSync(bpffs).type !== BPF_FS_MAGIC) {
    throw new DatapathError('WARDEN_ERR_PIN_DIR', `${bpffs} is not on a bpf filesystem: not a warden pin directory`, { bpffs })
  }
  const foreign: string[] = []
  for (const name of readdirSync(bpffs)) {
    if (!OWNED_NAMES.has(name)) { foreign.push(name); continue }
    const inside = OWNED_DIRS.get(name)
    if (inside === undefined) continue
    for (const p of readdirSync(join(bpffs, name))) {
      if (!inside.includes(p)) foreign.push(`${name}/${p}`)
    }
  }
  if (foreign.length > 0) {
    const shown = foreign.slice(0, 5).join(', ') + (foreign.length > 5 ? `, and ${foreign.length - 5} more` : '')
    throw new DatapathError('WARDEN_ERR_PIN_DIR', `${bpffs} holds pins warden did not create (${shown}): refusing to remove anything`, { bpffs })
  }
  return true
}

/**
 * Remove the pins warden creates under `bpffs` (checked with `checkPinDir` first), then the
 * directory itself when it is empty and not a mount point.
 */
export function removePins (bpffs: string): void {
  if (!checkPinDir(bpffs)) return
  for (const name of readdirSync(bpffs)) {
    const path = join(bpffs, name)
    if (OWNED_DIRS.has(name)) {
      for (const p of readdirSync(path)) rmSync(join(path, p))
      rmdirSync(path)
    } else {
      rmSync(path)
    }
  }
  if (!isMountPoint(bpffs) && readdirSync(bpffs).length === 0) rmdirSync(bpffs)
}
