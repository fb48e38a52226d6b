/** How a command ends: its exit codes, and the error for a command called wrongly. */

/**
 * Exit codes of every command: 0 done, 1 it ran and failed (a policy error, a datapath error),
 * 2 it was called wrongly (unknown command or flag, a missing or malformed value).
 */
export const EXIT = { OK: 0, FAILED: 1, USAGE: 2 } as const

/** A command called wrongly: printed with the command's usage, exit 2. */
export class UsageError extends Error {
  readonly code = 'WARDEN_ERR_USAGE'
  constructor (message: string) {
    super(message)
    this.name = 'UsageError'
  }
}
