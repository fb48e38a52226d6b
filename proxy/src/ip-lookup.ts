/**
 * A `lookup` for dgram sockets that only ever send to IP literals (the DNS proxy's replies).
 * dgram resolves every destination through dns.lookup, which for a literal answers on the next
 * tick after validating its arguments. This answers in a microtask (never synchronously: bind()
 * emits 'listening' from this callback, and callers attach that listener after bind() returns)
 * and leaves names to dns.lookup, so it is safe for any caller.
 */
import dns from 'node:dns'
import net from 'node:net'

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string, family: number) => void

export function ipLiteralLookup (hostname: string, options: dns.LookupOneOptions | number, callback: LookupCallback): void {
  if (net.isIPv4(hostname)) { queueMicrotask(() => { callback(null, hostname, 4) }); return }
  dns.lookup(hostname, typeof options === 'number' ? { family: options } : options, callback)
}
