/**
 * warden's DNS proxy: enforces `rules.dns` on redirected DNS traffic (denied names get REFUSED
 * and are never forwarded), forwards allowed queries to the server the workload asked, and
 * learns name -> IPv4 from the answers for toFQDNs, holding each answer until the kernel
 * allows its new IPs. Behaviour and Cilium's semantics: docs/dns-proxy.md.
 *
 * The agent opens the transparent listeners and wires them:
 *
 * ```ts
 * const dns = await createDnsProxy({ snapshot, lookupIdentity, udpOriginalDestination, learn, hasConnection, logger },
 *   { stateDir, minTtlSec, maxIpsPerName })
 * dns.attachUdp(udpListener)
 * tcpListener.on('connection', s => dns.handleTcpConnection(s))
 * ```
 */
import type * as net from 'node:net'
import { DnsCore, type ResolvedOptions } from './proxy.js'
import { RandomPool } from './ids.js'
import { TcpConnection, clientAndServer } from './tcp.js'
import { UdpForwarder } from './udp.js'
import { DnsProxyError } from './errors.js'
import { RCODE } from './wire.js'
import type { DnsProxy, DnsProxyDeps, DnsProxyOptions } from './types.js'
import type { UdpBatchSocket } from '../udp-batch.js'

export type { Addr, DnsProxy, DnsProxyDeps, DnsProxyOptions } from './types.js'
export { DnsProxyError, type DnsProxyErrorCode } from './errors.js'
export { compileNameMatcher, matchPatternSource, toFqdn, type NameMatcher } from './matchpattern.js'
/** Values of the DNS proxy's `metrics()` that go up and down (the rest only grow). */
export const DNS_GAUGES = ['inFlight', 'cachedNames', 'cachedIps', 'zombies'] as const

function intOption (name: string, v: number | undefined, dflt: number, min: number): number {
  const n = v ?? dflt
  if (!Number.isInteger(n) || n < min) throw new DnsProxyError('WARDEN_ERR_DNS_OPTIONS', `${name} must be an integer >= ${min}, got ${String(v)}`, { option: name, value: v })
  return n
}

function resolveOptions (o: DnsProxyOptions): ResolvedOptions {
  const r: ResolvedOptions = {
    minTtlSec: intOption('minTtlSec', o.minTtlSec, 0, 0),
    maxTtlSec: o.maxTtlSec === undefined ? undefined : intOption('maxTtlSec', o.maxTtlSec, 0, 1),
    maxIpsPerName: intOption('maxIpsPerName', o.maxIpsPerName, 1000, 1),
    maxNamesPerEndpoint: intOption('maxNamesPerEndpoint', o.maxNamesPerEndpoint, 10000, 1),
    maxZombiesPerEndpoint: intOption('maxZombiesPerEndpoint', o.maxZombiesPerEndpoint, 10000, 0),
    stateDir: o.stateDir,
    rejectRcode: (o.rejectCode ?? 'refused') === 'refused' ? RCODE.REFUSED : RCODE.NXDOMAIN,
    upstreamTimeoutMs: intOption('upstreamTimeoutMs', o.upstreamTimeoutMs, 10000, 1),
    holdMaxMs: intOption('holdMaxMs', o.holdMaxMs, 100, 0),
    gcIntervalMs: intOption('gcIntervalMs', o.gcIntervalMs, 1000, 10),
    zombieGraceMs: intOption('zombieGraceMs', o.zombieGraceMs, 60000, 1),
    maxPending: intOption('maxPending', o.maxPending, 10000, 1),
    upstreamSockets: intOption('upstreamSockets', o.upstreamSockets, 8, 1),
    upstreamSocketMark: intOption('upstreamSocketMark', o.upstreamSocketMark, 0, 0),
    proxyPort: o.proxyPort === undefined ? undefined : intOption('proxyPort', o.proxyPort, 0, 1),
    maxTcpPendingPerConnection: intOption('maxTcpPendingPerConnection', o.maxTcpPendingPerConnection, 32, 1),
    tcpIdleTimeoutMs: intOption('tcpIdleTimeoutMs', o.tcpIdleTimeoutMs, 10000, 1),
    now: o.now ?? Date.now
  }
  if (o.rejectCode !== undefined && o.rejectCode !== 'refused' && o.rejectCode !== 'nxdomain') {
    throw new DnsProxyError('WARDEN_ERR_DNS_OPTIONS', `rejectCode must be 'refused' or 'nxdomain', got ${String(o.rejectCode)}`, { option: 'rejectCode' })
  }
  if (r.maxTtlSec !== undefined && r.maxTtlSec < r.minTtlSec) {
    throw new DnsProxyError('WARDEN_ERR_DNS_OPTIONS', `maxTtlSec (${r.maxTtlSec}) is below minTtlSec (${r.minTtlSec})`, { option: 'maxTtlSec' })
  }
  return r
}

/**
 * Create the proxy: restores the persisted cache from `stateDir` (and pushes it to `learn`
 * before resolving), opens the upstream UDP sockets, starts expiry. Throws DnsProxyError
 * (WARDEN_ERR_DNS_OPTIONS) for bad options; an unreadable state file is logged, not fatal.
 */
export async function createDnsProxy (deps: DnsProxyDeps, options: DnsProxyOptions = {}): Promise<DnsProxy> {
  const opts = resolveOptions(options)
  const core = new DnsCore(deps, opts)
  const udp = new UdpForwarder(core, opts.upstreamSockets)
  await core.start()
  const tcp = new Set<TcpConnection>()
  const rnd = new RandomPool()
  const sweeper = setInterval(() => {
    const now = opts.now()
    udp.sweep(now, opts.upstreamTimeoutMs)
    for (const c of tcp) c.sweep(now, opts.upstreamTimeoutMs)
  }, Math.max(10, Math.min(250, Math.floor(opts.upstreamTimeoutMs / 4))))
  sweeper.unref()

  return {
    attachUdp (sock: UdpBatchSocket): void { udp.attach(sock) },
    handleTcpConnection (socket: net.Socket): void {
      const ends = clientAndServer(core, socket)
      if (ends === null || ends.server.port === opts.proxyPort) {
        core.counters.dropped++
        core.log.warn({ transport: 'tcp', verdict: 'dropped', reason: 'no-original-destination' }, 'dns query')
        socket.destroy()
        return
      }
      tcp.add(new TcpConnection(core, socket, ends.client, ends.server, rnd, c => tcp.delete(c)))
    },
    learned: () => core.learned(),
    cache: () => core.cache.toPersisted(opts.now()).entries,
    metrics: () => core.metrics(),
    async close (): Promise<void> {
      clearInterval(sweeper)
      for (const c of [...tcp]) c.close()
      udp.close()
      await core.stop()
    }
  }
}
