/**
 * An etcd mutex as Cilium takes one (kvstore.LockPath over etcd's concurrency.Mutex): each
 * contender writes `<lock path>/<lease id in hex>` under its session's lock lease, and holds the
 * lock when its key has the lowest create revision under the path. A contender that dies loses
 * its key with that lease, so a lock is never held by a dead agent for longer than the lock
 * lease's TTL (25 s, Cilium's LockLeaseTTL).
 */
import { ClusterError, ERR } from './errors.js'
import type { Session } from './connection.js'

export interface Unlock { (): Promise<void> }

export async function lockPath (s: Session, path: string, timeoutMs: number): Promise<Unlock> {
  const mine = `${path}/${BigInt(s.lockLease).toString(16)}`
  await s.kv.createIfAbsent(mine, [{ key: mine, value: '', lease: s.lockLease }])
  const unlock: Unlock = async () => { await s.kv.delete(mine).catch(() => {}) }
  const deadline = Date.now() + timeoutMs
  let wait = 5
  try {
    for (;;) {
      const list = await s.kv.list(path + '/')
      let first: { key: string, createRevision: number } | null = null
      for (const kv of list.kvs) if (first === null || kv.createRevision < first.createRevision) first = kv
      if (first === null) throw new ClusterError(ERR.KVSTORE_UNAVAILABLE, `lock ${mine} vanished (lease lost)`, { lock: mine })
      if (first.key === mine) return unlock
      if (Date.now() > deadline) throw new ClusterError(ERR.KVSTORE_UNAVAILABLE, `lock ${path} still held by ${first.key} after ${timeoutMs} ms`, { lock: path, holder: first.key })
      await new Promise((resolve) => setTimeout(resolve, wait))
      wait = Math.min(100, wait * 2)
    }
  } catch (err) {
    await unlock()
    throw err
  }
}
