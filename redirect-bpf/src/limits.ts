/**
 * The datapath's configurable sizes, without the modules that load native code (the CLI checks
 * flags against them before anything is loaded).
 */

/**
 * Cilium's ipcache size (pkg/maps/ipcache MaxEntries). An LPM trie with BPF_F_NO_PREALLOC
 * allocates a node per entry inserted, not max_entries up front: a large maximum costs nothing
 * until it is used.
 */
export const DEFAULT_IPCACHE_MAX_ENTRIES = 512000
/** The bounds of the ipcache size: room for a node's own endpoints at least; a sane cap. */
export const IPCACHE_MIN_ENTRIES = 16384
export const IPCACHE_MAX_ENTRIES = 16 * 1024 * 1024
