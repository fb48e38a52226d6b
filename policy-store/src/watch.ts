/**
 * File watching for the directory policy source and the endpoints file. fs.watch (inotify)
 * only says "something changed"; the store then rescans and compares contents, so lost or
 * duplicated events cost nothing but a rescan. Watching the directory (not the file) catches
 * editors' write-to-temp-then-rename.
 */
import { watch, type FSWatcher } from 'node:fs'

/** Slow safety-net rescan, for filesystems where inotify misses events (e.g. some mounts). */
const POLL_MS = 2000

export function watchPaths (dirs: readonly string[], recursive: boolean, filter: (name: string | null) => boolean, onChange: () => void): () => void {
  const watchers: FSWatcher[] = []
  for (const dir of dirs) {
    try {
      const w = watch(dir, { recursive, persistent: false }, (_event, name) => {
        if (filter(name === null ? null : String(name))) onChange()
      })
      w.on('error', () => { /* the poll below keeps going */ })
      watchers.push(w)
    } catch {
      // Directory missing or not watchable: rely on the poll.
    }
  }
  const timer = setInterval(onChange, POLL_MS)
  timer.unref()
  return () => {
    clearInterval(timer)
    for (const w of watchers) w.close()
  }
}
