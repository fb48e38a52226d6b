/**
 * The hot path's shortcuts through Node internals, and which of them are unavailable on the
 * Node.js this process runs on.
 *
 * Each shortcut has a public-API fallback with the same behaviour (slower): the socket writer
 * without `stream_wrap`'s WriteWrap goes through `net.Socket.write`, log lines without pino's
 * internal symbols go through pino's own methods. A module that finds its internal missing at
 * load calls `fellBack`; the agent logs them once at start, so an operator on another Node
 * version learns why the proxy is slower rather than guessing. The llhttp binding has no
 * fallback: without it the HTTP proxy cannot parse, and loading fails with an error that says so.
 */

const missing = new Map<string, string>()

/** Record that the fast path `name` is off, and why (what was missing). */
export function fellBack (name: string, why: string): void {
  missing.set(name, why)
}

/** The fast paths that fell back, by name, with what was missing. */
export function fallbacks (): Record<string, string> {
  return Object.fromEntries(missing)
}

interface WarnLogger { warn (obj: object, msg: string): void }

/** One warning line naming every fast path that fell back; nothing when none did. */
export function warnFallbacks (logger: WarnLogger): void {
  if (missing.size === 0) return
  logger.warn({ fallbacks: fallbacks(), node: process.version },
    `fast paths unavailable on this Node.js, using public APIs: ${[...missing.keys()].join(', ')}`)
}
