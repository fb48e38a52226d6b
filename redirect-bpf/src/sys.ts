/**
 * The commands the loader drives (ip, tc, bpftool) and small host facts. Async so that the
 * agent's proxies keep serving while interfaces are attached.
 */
import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { BpfError } from './errors.js'

export interface RunResult { stdout: string, stderr: string }

export async function run (cmd: string, args: string[]): Promise<RunResult> {
  return await new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err !== null) {
        reject(new BpfError(cmd, args.join(' '), (stderr || err.message).trim()))
        return
      }
      resolve({ stdout, stderr })
    })
  })
}

/** Like run, but a failure whose stderr matches `ok` counts as success (e.g. "File exists"). */
export async function runTolerant (cmd: string, args: string[], ok: RegExp): Promise<boolean> {
  try {
    await run(cmd, args)
    return true
  } catch (err) {
    if (ok.test((err as Error).message)) return false
    throw err
  }
}

/** ifindex of a network interface in this namespace, or undefined when it does not exist. */
export function ifindexOf (name: string): number | undefined {
  if (name === '' || name.includes('/') || name.includes('..')) return undefined
  const p = `/sys/class/net/${name}/ifindex`
  if (!existsSync(p)) return undefined
  const n = Number(readFileSync(p, 'utf8').trim())
  return Number.isInteger(n) ? n : undefined
}

/** Is a bpf filesystem mounted at (or above) dir? */
export function bpffsMountedAt (dir: string): boolean {
  const mounts = readFileSync('/proc/self/mounts', 'utf8').split('\n')
  return mounts.some((l) => {
    const [, mnt, type] = l.split(' ')
    return type === 'bpf' && (dir === mnt || dir.startsWith(mnt.endsWith('/') ? mnt : mnt + '/'))
  })
}

/** Is dir itself the mount point of a filesystem? */
export function isMountPoint (dir: string): boolean {
  const d = dir.length > 1 && dir.endsWith('/') ? dir.slice(0, -1) : dir
  return readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === d)
}
