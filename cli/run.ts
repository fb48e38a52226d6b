import { availableParallelism, hostname } from 'node:os'
import type { AgentClusterOptions, AgentOptions } from '../agent/agent.js'
import { DEFAULT_LEASE_TTL_SECONDS } from '../cluster/src/cluster.js'
import { resolveKvstoreTarget } from '../cluster/src/etcd-config.js'
import { DEFAULT_RELEASE_GRACE_MS } from '../policy-store/src/index.js'
import { IDENTITY_LABEL_OPTIONS, identityLabelOptions } from './identity-labels.js'
import type { Command, OptionValues } from './main.js'
import { DEFAULT_IPCACHE_MAX_ENTRIES, IPCACHE_MAX_ENTRIES, IPCACHE_MIN_ENTRIES } from '../redirect-bpf/src/limits.js'
import { UsageError } from './usage.js'
import { DEFAULTS as HTTP_DEFAULTS } from '../proxy/src/http/context.js'
import { DEFAULT_API_SOCKET } from './api-client.js'
import { formatPolicyError, type PolicyError } from '../policy-store/src/errors.js'

const USAGE = `Usage: warden run --policies DIR --endpoints FILE [options]

Runs the node agent: compiles the policies, loads the tc program on every endpoint's interface, fills its
maps, and serves the transparent HTTP and DNS proxies. Needs root (eBPF, tc, ip rules).

Options:
  --policies DIR          CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy files (watched)
  --endpoints FILE        the node's workloads (watched)
  --uplink IFACE          also enforce on traffic entering from IFACE (repeatable)
  --proxy-port N          transparent HTTP proxy port (default 15001)
  --dns-proxy-port N      transparent DNS proxy port, UDP and TCP (default 15053)
  --bpffs DIR             where the maps are pinned (default /sys/fs/bpf/warden)
  --route-table N         policy-routing table for redirected packets (default 2004)
  --ipcache-max-entries N the kernel ipcache's size: addresses known with their identity, this node's and
                          (with --kvstore) the other nodes' (default 512000, Cilium's; 16384 to 16777216).
                          A pinned ipcache of another size is replaced, its entries copied, at start
  --host-routing MODE     bpf (default): traffic the kernel allows between local endpoints goes straight
                          into the destination's namespace; legacy: the host's IP stack routes it
  --state-dir DIR         identities and learned DNS names survive restarts here (default /var/lib/warden)
  --identity-labels LIST  label patterns that decide which labels count toward an identity, with Cilium's
                          --labels syntax: space-separated RE2 prefixes of the label key, \`!\` to exclude,
                          \`source:\` to restrict (e.g. "!job-name k8s:!team"); repeatable. Added to Cilium's
                          default list (which drops pod-template-hash, controller-revision-hash and other
                          per-pod labels); one inclusion pattern makes every other label not count
  --identity-labels-replace  the patterns replace Cilium's default list instead of adding to it
  --identity-release-grace SEC  an identity or endpoint id nothing uses stays reserved this long before
                          it can be reused (default 23400: 6.5 h, past the 6 h TCP conntrack lifetime)
  --deny-response MODE    403 (default, like Cilium) or reset
  --http-workers N|auto   HTTP proxies on the proxy port, one per thread (default 1; auto: one per CPU)
  --http-max-connections-per-source N  client connections one client address may hold, per proxy worker;
                          more are reset at accept (default 1250: an eighth of the 10000 per worker)
  --h2-max-concurrent-streams N  HTTP/2 streams open at once per client connection (default 100)
  --h2-max-header-list-size BYTES  an HTTP/2 request's decoded header list (default 16384)
  --h2-header-table-size BYTES  HPACK dynamic table a client may use toward the proxy (default 4096)
  --h2-initial-window-size BYTES  HTTP/2 flow-control window per stream, both sides (default 65535)
  --h2-stream-idle-timeout SEC  an HTTP/2 stream with no frame either way is reset (default 300)
  --h2-idle-timeout SEC   an HTTP/2 connection with no stream gets GOAWAY (default 60)
  --h2-max-resets-per-second N  streams a client may reset per second before GOAWAY (default 200)
  --h2-max-settings-per-second N  SETTINGS frames a client may send per second (default 100)
  --h2-max-upstream-sessions N  HTTP/2 sessions to backends open at once, per proxy worker (default 1024)
  --h2-max-upstream-sessions-per-source N  Of those, the sessions one client address may hold (default an eighth)
  --metrics HOST:PORT     serve Prometheus metrics at http://HOST:PORT/metrics
  --fqdn-min-ttl SEC      learned IPs live at least this long (default 0)
  --fqdn-max-ttl SEC      and at most this long (default: the record's TTL)
  --fqdn-max-ips-per-name N  (default 1000)
  --fqdn-max-names-per-endpoint N  names with live IPs kept per endpoint; beyond, those
                          expiring first are evicted (default 10000)
  --log-level LEVEL       pino level (default info)
  --api-socket PATH       the local API for \`warden status\` and \`warden observe\`: a unix socket, mode 0600
                          (default /run/warden/warden.sock)
  --observe-buffer N      recent events kept for \`warden observe --last\` (default 4096)
  --policy-audit-mode     audit instead of enforce on every endpoint: what policy would drop or deny is
                          let through and reported with the verdict audit

Cluster mode (docs/cluster.md):
  --kvstore URLS|etcd     join a cluster through etcd: etcd://HOST:PORT[,etcd://HOST2:PORT] (plain HTTP),
                          etcds://HOST:PORT (TLS), or etcd: the endpoints of the etcd.config file
  --kvstore-opt etcd.config=FILE  etcd's client configuration (Cilium's): endpoints, trusted-ca-file,
                          cert-file, key-file, username, password
  --node-name NAME        this node's name in the cluster (default: the host name)
  --node-ip IPV4          this node's address (default: the first IPv4 address of the first --uplink)
  --pod-cidr CIDR         this node's pod CIDR, published in its node record
  --cluster-name NAME     (default default)
  --kvstore-lease-ttl SEC this node's keys vanish this long after the agent stops renewing them
                          (default 900; Cilium's)

SIGTERM/SIGINT stop the agent and leave the program and maps in place: L3/L4 enforcement continues and
L7 ports fail closed until it starts again. \`warden uninstall\` removes everything.`

/** Client connections one HTTP proxy worker holds; the per-source share is bounded by it. */
const HTTP_MAX_CONNECTIONS = HTTP_DEFAULTS.maxConnections

function int (v: OptionValues[string], name: string, dflt: number, max = 0xffffffff, min = 0): number {
  if (v === undefined) return dflt
  const n = Number(v)
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be a whole number from ${min} to ${max}, got "${String(v)}"`)
  return n
}

function apiSocketPath (v: OptionValues[string]): string {
  if (v === undefined) return DEFAULT_API_SOCKET
  const p = String(v)
  if (!p.startsWith('/') || Buffer.byteLength(p) > 107) throw new Error(`--api-socket must be an absolute path of at most 107 bytes (a unix socket's limit), got "${p}"`)
  return p
}

/** One client address's share of the HTTP/2 upstream sessions: never more than all of them. */
function perSourceShare (v: OptionValues[string], maxSessions: number): number {
  const n = int(v, 'h2-max-upstream-sessions-per-source', 1, 1_000_000, 1)
  if (n > maxSessions) throw new Error(`--h2-max-upstream-sessions-per-source must not exceed --h2-max-upstream-sessions (${maxSessions}), got ${n}`)
  return n
}

function atLeastOne (n: number, name: string): number {
  if (n < 1) throw new Error(`--${name} must be from 1 to 256 (or auto), got 0`)
  return n
}

const NAME = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/

/** The cluster flags; undefined without --kvstore (then none of them may be given). */
function clusterOptions (v: OptionValues): AgentClusterOptions | undefined {
  const flags = ['kvstore-opt', 'node-name', 'node-ip', 'pod-cidr', 'cluster-name', 'kvstore-lease-ttl']
  if (v.kvstore === undefined) {
    const given = flags.filter((f) => v[f] !== undefined)
    if (given.length > 0) throw new Error(`--${given[0]} needs --kvstore`)
    return undefined
  }
  const target = resolveKvstoreTarget(String(v.kvstore), (v['kvstore-opt'] as string[] | undefined) ?? [])
  const nodeName = (v['node-name'] as string | undefined) ?? hostname()
  const clusterName = (v['cluster-name'] as string | undefined) ?? 'default'
  for (const [flag, name] of [['node-name', nodeName], ['cluster-name', clusterName]]) {
    if (!NAME.test(name)) throw new Error(`--${flag} must be a DNS-1123 subdomain (it is a kvstore key segment), got "${name}"`)
  }
  const nodeIP = v['node-ip'] as string | undefined
  if (nodeIP !== undefined && !/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.test(nodeIP)) throw new Error(`--node-ip must be an IPv4 address, got "${nodeIP}"`)
  const podCidr = v['pod-cidr'] as string | undefined
  if (podCidr !== undefined && !/^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\/\d{1,2}$/.test(podCidr)) throw new Error(`--pod-cidr must be an IPv4 prefix, got "${podCidr}"`)
  return {
    urls: target.urls,
    tls: target.tls,
    auth: target.auth,
    configFile: target.configFile,
    configWarnings: target.warnings,
    nodeName,
    nodeIP,
    podCidr,
    clusterName,
    leaseTtlSeconds: int(v['kvstore-lease-ttl'], 'kvstore-lease-ttl', DEFAULT_LEASE_TTL_SECONDS, 0xffffffff, 2)
  }
}

export const command: Command = {
  summary: 'run the node agent (kernel datapath + HTTP and DNS proxies)',
  usage: USAGE,
  options: {
    policies: { type: 'string' },
    endpoints: { type: 'string' },
    uplink: { type: 'string', multiple: true },
    'proxy-port': { type: 'string' },
    'dns-proxy-port': { type: 'string' },
    bpffs: { type: 'string' },
    'route-table': { type: 'string' },
    'ipcache-max-entries': { type: 'string' },
    'host-routing': { type: 'string' },
    'state-dir': { type: 'string' },
    ...IDENTITY_LABEL_OPTIONS,
    'identity-release-grace': { type: 'string' },
    'deny-response': { type: 'string' },
    'http-workers': { type: 'string' },
    'http-max-connections-per-source': { type: 'string' },
    'h2-max-concurrent-streams': { type: 'string' },
    'h2-max-header-list-size': { type: 'string' },
    'h2-header-table-size': { type: 'string' },
    'h2-initial-window-size': { type: 'string' },
    'h2-stream-idle-timeout': { type: 'string' },
    'h2-idle-timeout': { type: 'string' },
    'h2-max-resets-per-second': { type: 'string' },
    'h2-max-settings-per-second': { type: 'string' },
    'h2-max-upstream-sessions': { type: 'string' },
    'h2-max-upstream-sessions-per-source': { type: 'string' },
    metrics: { type: 'string' },
    'fqdn-min-ttl': { type: 'string' },
    'fqdn-max-ttl': { type: 'string' },
    'fqdn-max-ips-per-name': { type: 'string' },
    'fqdn-max-names-per-endpoint': { type: 'string' },
    'log-level': { type: 'string' },
    'api-socket': { type: 'string' },
    'observe-buffer': { type: 'string' },
    'policy-audit-mode': { type: 'boolean' },
    kvstore: { type: 'string' },
    'kvstore-opt': { type: 'string', multiple: true },
    'node-name': { type: 'string' },
    'node-ip': { type: 'string' },
    'pod-cidr': { type: 'string' },
    'cluster-name': { type: 'string' },
    'kvstore-lease-ttl': { type: 'string' }
  },
  async run (v) {
    if (typeof v.policies !== 'string' || typeof v.endpoints !== 'string') {
      throw new UsageError('--policies and --endpoints are required')
    }
    const deny = (v['deny-response'] as string | undefined) ?? '403'
    if (deny !== '403' && deny !== 'reset') {
      throw new UsageError(`--deny-response must be 403 or reset, got "${deny}"`)
    }
    const hostRouting = (v['host-routing'] as string | undefined) ?? 'bpf'
    if (hostRouting !== 'bpf' && hostRouting !== 'legacy') {
      throw new UsageError(`--host-routing must be bpf or legacy, got "${hostRouting}"`)
    }
    const { identityLabels, identityLabelsReplace } = identityLabelOptions(v)
    let opts: AgentOptions
    try {
      const maxSessions = int(v['h2-max-upstream-sessions'], 'h2-max-upstream-sessions', 1024, 1_000_000, 1)
      opts = {
        policies: v.policies,
        endpoints: v.endpoints,
        uplinks: (v.uplink as string[] | undefined) ?? [],
        proxyPort: int(v['proxy-port'], 'proxy-port', 15001, 65535, 1),
        dnsProxyPort: int(v['dns-proxy-port'], 'dns-proxy-port', 15053, 65535, 1),
        bpffs: (v.bpffs as string | undefined) ?? '/sys/fs/bpf/warden',
        routeTable: int(v['route-table'], 'route-table', 2004, 0xfffffffe),
        hostRouting: hostRouting === 'bpf',
        ipcacheMaxEntries: int(v['ipcache-max-entries'], 'ipcache-max-entries', DEFAULT_IPCACHE_MAX_ENTRIES, IPCACHE_MAX_ENTRIES, IPCACHE_MIN_ENTRIES),
        httpWorkers: v['http-workers'] === 'auto' ? availableParallelism() : atLeastOne(int(v['http-workers'], 'http-workers', 1, 256), 'http-workers'),
        stateDir: (v['state-dir'] as string | undefined) ?? '/var/lib/warden',
        identityLabels,
        identityLabelsReplace,
        identityReleaseGraceMs: int(v['identity-release-grace'], 'identity-release-grace', DEFAULT_RELEASE_GRACE_MS / 1000) * 1000,
        denyResponse: deny,
        http2: {
          maxConnectionsPerSource: int(v['http-max-connections-per-source'], 'http-max-connections-per-source', HTTP_MAX_CONNECTIONS / 8, HTTP_MAX_CONNECTIONS, 1),
          h2MaxConcurrentStreams: int(v['h2-max-concurrent-streams'], 'h2-max-concurrent-streams', 100, 0x7fffffff, 1),
          // RFC 9113 bounds: a window below 2^31, a header table the 32-bit setting holds
          h2MaxHeaderListSize: int(v['h2-max-header-list-size'], 'h2-max-header-list-size', 16384, 0xffffffff, 1024),
          h2HeaderTableSize: int(v['h2-header-table-size'], 'h2-header-table-size', 4096, 0xffffffff),
          h2InitialWindowSize: int(v['h2-initial-window-size'], 'h2-initial-window-size', 65535, 0x7fffffff),
          h2StreamIdleTimeoutMs: int(v['h2-stream-idle-timeout'], 'h2-stream-idle-timeout', 300, 86400, 1) * 1000,
          h2IdleTimeoutMs: int(v['h2-idle-timeout'], 'h2-idle-timeout', 60, 86400, 1) * 1000,
          h2MaxResetsPerSecond: int(v['h2-max-resets-per-second'], 'h2-max-resets-per-second', 200, 0xffffffff, 1),
          h2MaxSettingsPerSecond: int(v['h2-max-settings-per-second'], 'h2-max-settings-per-second', 100, 0xffffffff, 1),
          h2MaxUpstreamSessions: maxSessions,
          h2MaxUpstreamSessionsPerSource: v['h2-max-upstream-sessions-per-source'] === undefined
            ? undefined
            : perSourceShare(v['h2-max-upstream-sessions-per-source'], maxSessions)
        },
        metrics: v.metrics as string | undefined,
        fqdnMinTtl: int(v['fqdn-min-ttl'], 'fqdn-min-ttl', 0),
        fqdnMaxTtl: v['fqdn-max-ttl'] === undefined ? undefined : int(v['fqdn-max-ttl'], 'fqdn-max-ttl', 0, 0xffffffff, Math.max(1, int(v['fqdn-min-ttl'], 'fqdn-min-ttl', 0))),
        fqdnMaxIpsPerName: int(v['fqdn-max-ips-per-name'], 'fqdn-max-ips-per-name', 1000, 0xffffffff, 1),
        fqdnMaxNamesPerEndpoint: int(v['fqdn-max-names-per-endpoint'], 'fqdn-max-names-per-endpoint', 10000, 0xffffffff, 1),
        logLevel: (v['log-level'] as string | undefined) ?? 'info',
        apiSocket: apiSocketPath(v['api-socket']),
        observeBuffer: int(v['observe-buffer'], 'observe-buffer', 4096, 1_000_000, 1),
        policyAuditMode: v['policy-audit-mode'] === true,
        cluster: clusterOptions(v)
      }
    } catch (err) {
      // a typed error (an unusable etcd.config, ...) keeps its code in what is printed
      const e = err as Error & { code?: unknown }
      throw new UsageError(typeof e.code === 'string' && e.code.startsWith('WARDEN_ERR_') ? `${e.code}: ${e.message}` : e.message)
    }
    const { startAgent } = await import('../agent/agent.js')
    let agent
    try {
      agent = await startAgent(opts)
    } catch (err) {
      const e = err as Error & { errors?: PolicyError[] }
      if (Array.isArray(e.errors)) for (const x of e.errors) console.error(formatPolicyError(x))
      console.error(`warden run: ${e.message}`)
      return 1
    }
    await new Promise<void>((resolve) => {
      const stop = (sig: string): void => {
        agent.logger.info({ signal: sig }, 'stopping; the program and maps stay in place (L7 ports fail closed)')
        resolve()
      }
      process.once('SIGTERM', () => stop('SIGTERM'))
      process.once('SIGINT', () => stop('SIGINT'))
    })
    await agent.close()
    return 0
  }
}
