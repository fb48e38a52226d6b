/**
 * Other nodes' ipcache entries by prefix, kept as the etcd changes come: one change costs the
 * prefixes it touches, not the size of the cluster. Several etcd keys may claim one prefix (a
 * node's address also published as a pod's, a pod address reused before the old key expired):
 * a node address wins over a pod entry, then the first claim.
 */
import type { IpcacheChanges, IpcacheEntry } from '../../policy-store/src/index.js'

interface Claim { key: string, node: boolean, entry: IpcacheEntry }

export class RemoteIpcache {
  /** Who claims each prefix, in claim order. */
  private readonly claims = new Map<string, Claim[]>()
  private readonly winners = new Map<string, IpcacheEntry>()
  /** Prefixes whose claims changed since the last flush. */
  private readonly dirty = new Set<string>()
  private list: readonly IpcacheEntry[] = []

  /** The list of winners as of the last flush. */
  get current (): readonly IpcacheEntry[] { return this.list }

  /** The etcd key `key` now claims `next` instead of `old` (either may be empty). */
  replace (key: string, node: boolean, old: readonly IpcacheEntry[], next: readonly IpcacheEntry[]): void {
    for (const o of old) {
      const list = this.claims.get(o.prefix)
      if (list === undefined) continue
      const i = list.findIndex((c) => c.key === key)
      if (i >= 0) list.splice(i, 1)
      if (list.length === 0) this.claims.delete(o.prefix)
      this.dirty.add(o.prefix)
    }
    for (const entry of next) {
      let list = this.claims.get(entry.prefix)
      if (list === undefined) this.claims.set(entry.prefix, list = [])
      list.push({ key, node, entry })
      this.dirty.add(entry.prefix)
    }
  }

  /**
   * The winners after the changes since the last flush, as a list, and which prefixes changed
   * from the previous list (the compiler applies those). Undefined when no winner changed.
   */
  flush (): { ipcache: readonly IpcacheEntry[], changes: IpcacheChanges } | undefined {
    const changed: Array<{ prefix: string, entry: IpcacheEntry | null }> = []
    for (const prefix of this.dirty) {
      const list = this.claims.get(prefix)
      const win = list === undefined ? undefined : (list.find((c) => c.node) ?? list[0]).entry
      if (win === this.winners.get(prefix)) continue
      if (win === undefined) this.winners.delete(prefix)
      else this.winners.set(prefix, win)
      changed.push({ prefix, entry: win ?? null })
    }
    this.dirty.clear()
    if (changed.length === 0) return undefined
    const from = this.list
    this.list = [...this.winners.values()]
    return { ipcache: this.list, changes: { from, changed } }
  }
}
