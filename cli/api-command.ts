/** What every API command shares: no positional it does not take, and an API error as one line, exit 1. */
import { ApiError } from './api-client.js'
import type { OptionValues } from './main.js'
import { EXIT, UsageError } from './usage.js'

export function apiCommand (fn: (v: OptionValues, positionals: string[]) => Promise<number>, positionals = 0):
(v: OptionValues, p: string[]) => Promise<number> {
  return async (v, p) => {
    if (p.length > positionals) throw new UsageError(`unexpected argument "${p[positionals]}"`)
    try {
      return await fn(v, p)
    } catch (err) {
      if (!(err instanceof ApiError)) throw err
      console.error(`warden: ${err.message} [${err.code}]`)
      return EXIT.FAILED
    }
  }
}
