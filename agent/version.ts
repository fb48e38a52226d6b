/** The agent's version: package.json's, read once (works from the sources and from dist/). */
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

let cached: string | undefined

export function agentVersion (): string {
  if (cached !== undefined) return cached
  let dir = dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 5 && cached === undefined; i++) {
    const p = join(dir, 'package.json')
    if (existsSync(p)) {
      const pkg = JSON.parse(readFileSync(p, 'utf8')) as { name?: string, version?: string }
      if (pkg.name === 'warden' && typeof pkg.version === 'string') cached = pkg.version
    }
    dir = dirname(dir)
  }
  cached ??= 'unknown'
  return cached
}
