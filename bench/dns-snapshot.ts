/**
 * What the DNS benches give the proxy (bench/dns-proxy.ts, bench/micro/dns-query.ts): the snapshot
 * below, the world identity for the server, `server` as every query's original destination, and
 * the agent's logger (pino with base {component}, through the batching destination, to /dev/null)
 * or a silent one. Nothing is learned into a store and no connection is live.
 */
export function benchDnsDeps (clientIp: string, server: { ip: string, port: number }, log: boolean): DnsProxyDeps {
  const snapshot = benchDnsSnapshot(clientIp, server.port)
  return {
    snapshot: () => snapshot,
    lookupIdentity: () => RESERVED.WORLD,
    udpOriginalDestination: () => server,
    learn: async () => {},
    hasConnection: () => false,
    logger: log ? pino({ base: { component: 'warden' } }, batchedDestination(openSync('/dev/null', 'w'))) : pino({ level: 'silent' })
  }
}

/**
 * The snapshot the DNS benches enforce (bench/dns-proxy.ts, bench/micro/dns-query.ts): one client
 * endpoint whose DNS rule allows every name (`matchPattern: *`) on `port`, and one toFQDNs selector
 * (api.github.com) so that answers are learned as in the agent.
 */
import { openSync } from 'node:fs'
import pino from 'pino'
import { compileNameMatcher, type DnsProxyDeps } from '../proxy/src/dns/index.js'
import { batchedDestination } from '../agent/log-destination.js'
import { DIR, l7Key, RESERVED, type Snapshot } from '../policy-store/src/types.js'

export function benchDnsSnapshot (clientIp: string, port: number): Snapshot {
  const rule = { file: 'bench.yaml', line: 1, kind: 'CiliumNetworkPolicy' as const, policy: 'default/bench', spec: 0, section: 'egress' as const, index: 0 }
  const star = compileNameMatcher({ matchPattern: '*' })
  const policy = { allowAll: false, rules: [{ pattern: '*', test: (f: string) => star.test(f), rule }] }
  const sel = compileNameMatcher({ matchName: 'api.github.com' })
  return {
    version: 1,
    createdAt: Date.now(),
    ipcache: [],
    kernel: [],
    http: new Map(),
    endpoints: [{ id: 7, name: 'bench-client', namespace: 'default', labels: {}, identityLabels: [], identity: 1007, ipv4: clientIp, interface: 'lxc7', ports: [], line: 1 }],
    identities: new Map([[RESERVED.WORLD, ['reserved:world']]]),
    dns: new Map([[l7Key(7, DIR.EGRESS, port), { endpointId: 7, direction: DIR.EGRESS, protocol: 17 as const, port, endPort: port, byIdentity: new Map(), anyIdentity: policy }]]),
    fqdnSelectors: [{ key: sel.key, test: (f: string) => sel.test(f) }]
  }
}
