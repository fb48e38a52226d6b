import { availableParallelism, hostname } from 'node:os'
import type { AgentClusterOptions } from '../agent/agent.js'
import { DEFAULT_LEASE_TTL_SECONDS } from '../cluster/src/cluster.js'
import { parseKvstoreUrls } from '../cluster/src/kv.js'
import { DEFAULT_RELEASE_GRACE_MS } from '../policy-store/src/index.js'
import { IDENTITY_LABEL_OPTIONS, identityLabelOptions } from './identity-labels.js'
import type { Command } from './main.js'
import { UsageError } from './usage.js'
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
  --metrics HOST:PORT     serve Prometheus metrics at http://HOST:PORT/metrics
  --fqdn-min-ttl SEC      learned IPs live at least this long (default 0)
  --fqdn-max-ttl SEC      and at most this long (default: the record's TTL)
  --fqdn-max-ips-per-name N  (default 1000)
  --fqdn-max-names-per-endpoint N  names with live IPs kept per endpoint; beyond, those
                          expiring first are evicted (default 10000)
  --log-level LEVEL       pino level (default info)

Cluster mode (docs/cluster.md):
  --kvstore URLS          join a cluster through etcd: etcd://HOST:PORT[,etcd://HOST2:PORT] (plain HTTP)
  --node-name NAME        this node's name in the cluster (default: the host name)
  --node-ip IPV4          this node's address (default: the first IPv4 address of the first --uplink)
  --pod-cidr CIDR         this node's pod CIDR, published in its node record
  --cluster-name NAME     (default default)
  --kvstore-lease-ttl SEC this node's keys vanish this long after the agent stops renewing them
                          (default 900; Cilium's)

SIGTERM/SIGINT stop the agent and leave the program and maps in place: L3/L4 enforcement continues and
L7 ports fail closed until it starts again. \`warden uninstall\` removes everything.`

function int (v: unknown, name: string, dflt: number, max = 0xffffffff, min = 0): number {
  if (v === undefined) return dflt
  const n = Number(v)
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be a whole number from ${min} to ${max}, got "${String(v)}"`)
  return n
}

function atLeastOne (n: number, name: string): number {
  if (n < 1) throw new Error(`--${name} must be from 1 to 256 (or auto), got 0`)
  return n
}

const NAME = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/

/** The cluster flags; undefined without --kvstore (then none of them may be given). */
function clusterOptions (v: Record<string, unknown>): AgentClusterOptions | undefined {
  const flags = ['node-name', 'node-ip', 'pod-cidr', 'cluster-name', 'kvstore-lease-ttl']
  if (v.kvstore === undefined) {
    const given = flags.filter((f) => v[f] !== undefined)
    if (given.length > 0) throw new Error(`--${given[0]} needs --kvstore`)
    return undefined
  }
  const urls = parseKvstoreUrls(String(v.kvstore))
  const nodeName = (v['node-name'] as string | undefined) ?? hostname()
  const clusterName = (v['cluster-name'] as string | undefined) ?? 'default'
  for (const [flag, name] of [['node-name', nodeName], ['cluster-name', clusterName]]) {
    if (!NAME.test(name)) throw new Error(`--${flag} must be a DNS-1123 subdomain (it is a kvstore key segment), got "${name}"`)
  }
  const nodeIP = v['node-ip'] as string | undefined
  if (nodeIP !== undefined && !/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.test(nodeIP)) throw new Error(`--node-ip must be an IPv4 address, got "${nodeIP}"`)
  const podCidr = v['pod-cidr'] as string | undefined
  if (podCidr !== undefined && !/^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\/\d{1,2}$/.test(podCidr)) throw new Error(`--pod-cidr must be an IPv4 prefix, got "${podCidr}"`)
  return { urls, nodeName, nodeIP, podCidr, clusterName, leaseTtlSeconds: int(v['kvstore-lease-ttl'], 'kvstore-lease-ttl', DEFAULT_LEASE_TTL_SECONDS, 0xffffffff, 2) }
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
    'host-routing': { type: 'string' },
    'state-dir': { type: 'string' },
    ...IDENTITY_LABEL_OPTIONS,
    'identity-release-grace': { type: 'string' },
    'deny-response': { type: 'string' },
    'http-workers': { type: 'string' },
    metrics: { type: 'string' },
    'fqdn-min-ttl': { type: 'string' },
    'fqdn-max-ttl': { type: 'string' },
    'fqdn-max-ips-per-name': { type: 'string' },
    'fqdn-max-names-per-endpoint': { type: 'string' },
    'log-level': { type: 'string' },
    kvstore: { type: 'string' },
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
    let opts
    try {
      opts = {
        policies: v.policies,
        endpoints: v.endpoints,
        uplinks: (v.uplink as string[] | undefined) ?? [],
        proxyPort: int(v['proxy-port'], 'proxy-port', 15001, 65535, 1),
        dnsProxyPort: int(v['dns-proxy-port'], 'dns-proxy-port', 15053, 65535, 1),
        bpffs: (v.bpffs as string | undefined) ?? '/sys/fs/bpf/warden',
        routeTable: int(v['route-table'], 'route-table', 2004, 0xfffffffe),
        hostRouting: hostRouting === 'bpf',
        httpWorkers: v['http-workers'] === 'auto' ? availableParallelism() : atLeastOne(int(v['http-workers'], 'http-workers', 1, 256), 'http-workers'),
        stateDir: (v['state-dir'] as string | undefined) ?? '/var/lib/warden',
        identityLabels,
        identityLabelsReplace,
        identityReleaseGraceMs: int(v['identity-release-grace'], 'identity-release-grace', DEFAULT_RELEASE_GRACE_MS / 1000) * 1000,
        denyResponse: deny as '403' | 'reset',
        metrics: v.metrics as string | undefined,
        fqdnMinTtl: int(v['fqdn-min-ttl'], 'fqdn-min-ttl', 0),
        fqdnMaxTtl: v['fqdn-max-ttl'] === undefined ? undefined : int(v['fqdn-max-ttl'], 'fqdn-max-ttl', 0, 0xffffffff, Math.max(1, int(v['fqdn-min-ttl'], 'fqdn-min-ttl', 0))),
        fqdnMaxIpsPerName: int(v['fqdn-max-ips-per-name'], 'fqdn-max-ips-per-name', 1000, 0xffffffff, 1),
        fqdnMaxNamesPerEndpoint: int(v['fqdn-max-names-per-endpoint'], 'fqdn-max-names-per-endpoint', 10000, 0xffffffff, 1),
        logLevel: (v['log-level'] as string | undefined) ?? 'info',
        cluster: clusterOptions(v)
      }
    } catch (err) {
      throw new UsageError((err as Error).message)
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
