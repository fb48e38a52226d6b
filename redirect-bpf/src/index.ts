/**
 * The datapath API the agent (`warden run`) uses: open (load or reuse the pinned programs
 * and maps, install the proxy routing), apply snapshots to the kernel maps without
 * flushing, read what the kernel knows (identities, UDP original destinations, live
 * connections, flow events, counters), and uninstall.
 *
 * Where each part lives:
 *   open.ts            load or reuse (upgrade) the pinned programs and maps, install the routing
 *   datapath.ts        the open datapath: one apply queue, timers, flow events, counters
 *   map-writer.ts      snapshots into l7p_ipcache / l7p_policy / l7p_endpoints (diff or full sync)
 *   attachments.ts     tc filters on endpoint interfaces and uplinks
 *   conntrack.ts       CT garbage collection and live-connection lookups
 *   ipcache-reader.ts  identity lookups, also for other threads
 *   uninstall.ts       undo what an instance made
 */
export type { FlowEvent, FlowVerdict } from './events.js'
export { DatapathError, BpfError } from './errors.js'
export { DEFAULT_ROUTE_TABLE, PROXY_SOCKET_MARK } from './loader.js'
export { DEFAULT_IPCACHE_MAX_ENTRIES, IPCACHE_MAX_ENTRIES, IPCACHE_MIN_ENTRIES } from './limits.js'
export { openIpcacheReader } from './ipcache-reader.js'
export { uninstall } from './uninstall.js'
export { openDatapath } from './open.js'
export type { Datapath, DatapathInspection, DatapathOptions } from './datapath-api.js'
