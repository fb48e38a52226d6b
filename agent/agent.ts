/**
 * `warden run`: the node agent. Wiring only -- the policy store compiles snapshots, the datapath
 * puts them in the kernel, the proxies enforce L7. Order matters for failing closed:
 *
 *   1. the store loads every file (a bad file at startup is fatal, like Cilium's static CNP path);
 *   2. the datapath loads (or reuses) the program and its pinned maps and applies the snapshot;
 *   3. the transparent listeners open -- until then redirected flows find no socket and are dropped;
 *   4. later snapshots go to the kernel first; the proxies see a snapshot only once the kernel has it,
 *      so the proxy never allows what the kernel does not yet redirect, and vice versa (that
 *      ordering, its retries and waiters are the control plane's: control-plane.ts).
 */
import type { Server } from 'node:net'
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http'
import { networkInterfaces } from 'node:os'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import pino, { type Logger } from 'pino'
import { FileIdentityAllocator, openStore, RESERVED, type IdentityAllocator, type PolicyStore, type RemoteState, type Snapshot, type LearnedName } from '../policy-store/src/index.js'
import { ClusterStore, remoteEntriesCap, type ClusterOptions } from '../cluster/src/cluster.js'
import { ClusterError, ERR as CLUSTER_ERR } from '../cluster/src/errors.js'
import { upstreamSource } from './upstream-source.js'
import { DEFAULT_IPCACHE_MAX_ENTRIES, openDatapath, PROXY_SOCKET_MARK, type Datapath, type FlowEvent } from '../redirect-bpf/src/index.js'
import { createHttpProxy, HTTP_GAUGES, SERVER_OPTIONS, type Http2Limits, type HttpProxy } from '../proxy/src/http/index.js'
import { batchedDestination } from './log-destination.js'
import { createDnsProxy, DNS_GAUGES, type DnsProxy } from '../proxy/src/dns/index.js'
import { listenTransparentTcp, openTransparentUdp } from '../proxy/src/transparent.js'
import { ControlPlane } from './control-plane.js'
import { FlowLogLimiter } from './flow-log.js'
import { renderMetrics } from './metrics.js'
import { ReplySockets } from './reply-sockets.js'
import { HttpWorkers } from './workers/pool.js'
import { EnforcedVersions, type ProxyPolicy } from './workers/enforced-versions.js'
import { serveApi } from './api/server.js'
import type { ReportSources } from './api/reports.js'
import { fromDecision, fromFlow } from './observe/event.js'
import { EventRing } from './observe/ring.js'
import { agentVersion } from './version.js'
import type { L7Decision } from '../proxy/src/decision.js'
import { warnFallbacks } from '../proxy/src/fast-paths.js'

export interface AgentOptions {
  policies: string
  endpoints: string
  uplinks: string[]
  proxyPort: number
  dnsProxyPort: number
  bpffs: string
  routeTable: number
  /** BPF host routing between local endpoints (default true); see DatapathOptions.hostRouting. */
  hostRouting?: boolean
  /**
   * max_entries of the kernel ipcache (default Cilium's 512,000; DatapathOptions.ipcacheMaxEntries).
   * In cluster mode it also bounds the other nodes' entries kept (remoteEntriesCap).
   */
  ipcacheMaxEntries?: number
  /**
   * HTTP proxies on the proxy port (default 1): the main thread's and N - 1 worker threads, the
   * kernel spreading connections over them (agent/workers/). Needs the agent's own log
   * destination (no `logger` option): the workers' lines are written with the main thread's.
   */
  httpWorkers?: number
  stateDir: string
  /** Identity label patterns (StoreOptions.identityLabels) and whether they replace Cilium's defaults. */
  identityLabels?: readonly string[]
  identityLabelsReplace?: boolean
  /** How long an unused identity or endpoint id stays reserved (StoreOptions.releaseGraceMs). */
  identityReleaseGraceMs?: number
  denyResponse: '403' | 'reset'
  /** HTTP/2 limits (HttpProxyOptions' h2* fields); the proxy's defaults where absent. */
  http2?: Http2Limits
  /** `host:port` for Prometheus text metrics, or undefined. */
  metrics?: string
  fqdnMinTtl: number
  fqdnMaxTtl?: number
  fqdnMaxIpsPerName: number
  /** Names with live IPs kept per endpoint in the FQDN cache (default 10000). */
  fqdnMaxNamesPerEndpoint?: number
  logger?: Logger
  logLevel?: string
  /** Unix socket of the local API (`warden status`, `warden observe`); undefined: none. */
  apiSocket?: string
  /** Recent events kept for `warden observe --last` (default 4096). */
  observeBuffer?: number
  /**
   * Node-wide policy audit mode: what policy would drop or deny is let through and reported
   * with the verdict `audit` (per endpoint: `audit: true` in the endpoints file).
   */
  policyAuditMode?: boolean
  /** Cluster mode (docs/cluster.md): share identities, endpoints and nodes through etcd. */
  cluster?: AgentClusterOptions
}

export interface AgentClusterOptions {
  /** etcd client URLs, `http(s)://host:port` (cluster/src/etcd-config.ts). */
  urls: string[]
  /** TLS files and etcd credentials, from `--kvstore-opt etcd.config=FILE`. */
  tls?: ClusterOptions['tls']
  auth?: ClusterOptions['auth']
  configFile?: string
  /** What the etcd configuration reader ignored: logged once at start. */
  configWarnings?: string[]
  nodeName: string
  /** Default: the first IPv4 address of the first uplink. */
  nodeIP?: string
  podCidr?: string
  clusterName: string
  leaseTtlSeconds: number
  /** Tests: how often etcd is checked and the lease renewed, and the reconnect backoff. */
  probeMs?: ClusterOptions['probeMs']
  backoffMaxMs?: ClusterOptions['backoffMaxMs']
}

export interface Agent {
  readonly logger: Logger
  /** The snapshot the kernel and the proxies currently enforce. */
  active (): Snapshot
  metrics (): Record<string, number>
  close (): Promise<void>
}

/** Every IPv4 address of this node: traffic from them is the reserved `host` identity. */
function hostAddresses (): string[] {
  const out: string[] = []
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4') out.push(a.address)
  }
  return out
}

export async function startAgent (opts: AgentOptions): Promise<Agent> {
  const closers: Array<() => Promise<void> | void> = []
  const workers = opts.httpWorkers ?? 1
  if (!Number.isInteger(workers) || workers < 1 || workers > 256) {
    throw Object.assign(new Error(`httpWorkers must be a whole number from 1 to 256, got ${String(workers)}`), { code: 'WARDEN_ERR_CONFIG' })
  }
  if (workers > 1 && opts.logger !== undefined) {
    throw Object.assign(new Error('httpWorkers > 1 needs the agent\'s own log destination (no logger option)'), { code: 'WARDEN_ERR_CONFIG' })
  }
  let logger = opts.logger
  let dest: ReturnType<typeof batchedDestination> | undefined
  if (logger === undefined) {
    // One access-log line per request: lines are joined and written once per 16 KiB or 100 ms
    // (cheaper per line than pino.destination: bench/micro/access-log.ts), bounded,
    // in order; a stalled log reader blocks a pool thread, never the proxy.
    const d = batchedDestination(1)
    dest = d
    logger = pino({ level: opts.logLevel ?? 'info', base: { component: 'warden' } }, d)
    closers.push(() => d.end())
  }
  const log = logger.child({ module: 'agent' })
  warnFallbacks(log)
  const close = async (): Promise<void> => {
    while (closers.length > 0) {
      const fn = closers.pop() as () => Promise<void> | void
      try { await fn() } catch (err) { log.error({ err }, 'error while stopping') }
    }
  }

  const startedAt = Date.now()
  try {
    const ring = new EventRing(opts.observeBuffer ?? 4096)
    // Cluster mode: identities come from etcd, other nodes' pods and addresses too. The cluster
    // store never waits for etcd here: it starts from the state it persisted.
    let cluster: ClusterStore | undefined
    let allocator: IdentityAllocator | undefined
    let remote: RemoteState | undefined
    if (opts.cluster !== undefined) {
      const c = opts.cluster
      const local = await FileIdentityAllocator.open(opts.stateDir, { releaseGraceMs: opts.identityReleaseGraceMs })
      const kvLog = logger.child({ module: 'kvstore' })
      for (const w of c.configWarnings ?? []) kvLog.warn({ file: c.configFile }, w)
      cluster = await ClusterStore.open({
        urls: c.urls,
        tls: c.tls,
        auth: c.auth,
        configFile: c.configFile,
        nodeName: c.nodeName,
        nodeIP: c.nodeIP ?? uplinkAddress(opts.uplinks),
        podCidr: c.podCidr,
        clusterName: c.clusterName,
        leaseTtlSeconds: c.leaseTtlSeconds,
        stateDir: opts.stateDir,
        local,
        releaseGraceMs: opts.identityReleaseGraceMs,
        gcGraceMs: opts.identityReleaseGraceMs,
        probeMs: c.probeMs,
        backoffMaxMs: c.backoffMaxMs,
        maxRemoteEntries: remoteEntriesCap(opts.ipcacheMaxEntries ?? DEFAULT_IPCACHE_MAX_ENTRIES),
        logger: kvLog
      })
      const cs = cluster
      closers.push(async () => await cs.close())
      allocator = cluster.allocator
      remote = cluster.current()
    }
    const store: PolicyStore = await openStore({
      policies: opts.policies,
      endpoints: opts.endpoints,
      stateDir: opts.stateDir,
      identityLabels: opts.identityLabels,
      identityLabelsReplace: opts.identityLabelsReplace,
      releaseGraceMs: opts.identityReleaseGraceMs,
      hostIPs: hostAddresses(),
      auditAll: opts.policyAuditMode === true,
      allocator,
      remote,
      watch: true,
      logger
    })
    closers.push(async () => await store.close())
    if (cluster !== undefined) {
      const cs = cluster
      // Each etcd change reaches the store, which recompiles (debounced) and diffs: one changed
      // remote entry is one ipcache write.
      cs.onRemote((r) => store.setRemote(r))
      // The IDs nobody references any more are collected periodically (Cilium's allocator GC).
      const gc = setInterval(() => { cs.allocator.collect(Date.now()).catch((err: Error) => log.warn({ err: err.message }, 'kvstore: identity collection failed')) }, CLUSTER_GC_INTERVAL_MS)
      gc.unref()
      closers.push(() => clearInterval(gc))
    }
    closers.push(store.onRejected((errors) => {
      for (const e of errors) log.error({ file: e.file, line: e.line, col: e.col, path: e.path, code: e.code }, e.message)
    }))

    const datapath: Datapath = await openDatapath({
      bpffs: opts.bpffs,
      proxyPort: opts.proxyPort,
      dnsProxyPort: opts.dnsProxyPort,
      uplinks: opts.uplinks,
      routeTable: opts.routeTable,
      hostRouting: opts.hostRouting,
      ipcacheMaxEntries: opts.ipcacheMaxEntries,
      logger
    })
    closers.push(async () => await datapath.close())

    const control = await ControlPlane.start({ store, datapath, logger: log })
    closers.push(async () => await control.close())
    const active = (): Snapshot => control.active()
    if (cluster !== undefined) {
      // This node's endpoints are published once the kernel enforces them.
      const cs = cluster
      control.onActive((snap) => cs.publishEndpoints(snap.endpoints))
      cs.publishEndpoints(active().endpoints)
    }
    const lookupIdentity = (ip: string): number => control.lookupIdentity(ip)
    let httpWorkers: HttpWorkers | undefined
    // Which version each HTTP proxy enforces: the main thread's is the active snapshot's, the
    // workers report theirs once applied. Compared with what the store compiled (status, metrics).
    const enforced = new EnforcedVersions(workers)
    enforced.compiled(store.current().version)
    closers.push(store.onSnapshot((snap) => enforced.compiled(snap.version)))
    enforced.enforced(0, active().version)
    control.onActive((snap) => enforced.enforced(0, snap.version))
    // the workers get a copy of the HTTP part of each snapshot the kernel has
    control.onActive((snap) => httpWorkers?.update(snap))
    const flowLog = new FlowLogLimiter(logger.child({ module: 'flow' }), 100)
    datapath.onFlow((ev: FlowEvent) => { flowLog.logEvent(ev); ring.push(fromFlow(ev, active())) })
    const onDecision = (d: L7Decision): void => { ring.push(fromDecision(d, active())) }
    closers.push(() => flowLog.close())

    // L7 HTTP proxy on the transparent listener the datapath assigns sockets to.
    const http: HttpProxy = createHttpProxy({
      snapshot: active,
      lookupIdentity,
      upstreamSource: upstreamSource(opts.uplinks.length > 0, active),
      onDecision,
      logger: logger.child(workers > 1 ? { module: 'http-proxy', worker: 0 } : { module: 'http-proxy' })
    }, { ...opts.http2, denyResponse: opts.denyResponse, upstreamSocketMark: PROXY_SOCKET_MARK })
    const httpServer: Server = await listenTransparentTcp(opts.proxyPort, '0.0.0.0', 511, SERVER_OPTIONS, PROXY_SOCKET_MARK)
    httpServer.on('connection', (socket) => http.handleConnection(socket))
    closers.push(async () => { await closeServer(httpServer); await http.close() })
    if (workers > 1 && dest !== undefined) {
      const out = dest
      const startedWith = active()
      httpWorkers = await HttpWorkers.start({
        count: workers - 1,
        proxyPort: opts.proxyPort,
        bpffs: opts.bpffs,
        denyResponse: opts.denyResponse,
        hasUplinks: opts.uplinks.length > 0,
        http2: opts.http2 ?? {},
        logLevel: opts.logLevel ?? 'info',
        snapshot: startedWith,
        logger: log,
        writeLog: (batch) => out.writeBytes(batch),
        onEnforced: (index, version) => enforced.enforced(index, version),
        onStopped: (index) => enforced.stopped(index),
        onDecisions: (batch) => { for (const d of batch) onDecision(d) }
      })
      // a snapshot that reached the kernel while they were starting
      if (active() !== startedWith) httpWorkers.update(active())
      const pool = httpWorkers
      closers.push(async () => await pool.close())
      log.info({ workers }, 'HTTP proxy workers listening')
    }

    // DNS proxy: UDP and TCP on the DNS proxy port. Answers go back FROM the server's address.
    const replySockets = new ReplySockets(MAX_DNS_REPLY_SOCKETS, (ip, port) => openTransparentUdp(port, ip))
    const dns: DnsProxy = await createDnsProxy({
      snapshot: active,
      lookupIdentity,
      // The listener asks for IP_ORIGDSTADDR: each datagram names the server it was sent to
      // (one sent to the proxy port itself is dropped: the proxyPort option below).
      udpOriginalDestination: (_ip, _port, received) => received,
      replySocket: (ip, port) => replySockets.get(ip, port),
      learn: async (names: readonly LearnedName[]) => { await control.learn(names) },
      hasConnection: (ip) => datapath.hasConnection(ip),
      onDecision,
      upstreamSource: upstreamSource(opts.uplinks.length > 0, active),
      logger: logger.child({ module: 'dns-proxy' })
    }, {
      minTtlSec: opts.fqdnMinTtl,
      maxTtlSec: opts.fqdnMaxTtl,
      maxIpsPerName: opts.fqdnMaxIpsPerName,
      maxNamesPerEndpoint: opts.fqdnMaxNamesPerEndpoint,
      stateDir: opts.stateDir,
      rejectCode: 'refused',
      proxyPort: opts.dnsProxyPort,
      upstreamSocketMark: PROXY_SOCKET_MARK
    })
    const dnsUdp = openTransparentUdp(opts.dnsProxyPort, '0.0.0.0', true)
    dns.attachUdp(dnsUdp)
    const dnsTcp = await listenTransparentTcp(opts.dnsProxyPort)
    // DNS over TCP is rare (truncated answers, zone-sized replies); a cap keeps a client that
    // opens connections in a loop from exhausting file descriptors. Beyond it, new ones are closed.
    dnsTcp.maxConnections = 1024
    dnsTcp.on('connection', (socket) => dns.handleTcpConnection(socket))
    closers.push(async () => {
      await closeServer(dnsTcp)
      dnsUdp.close()
      replySockets.closeAll()
      await dns.close()
    })

    // The agent's own health, for operators and the soak: memory and how late its loop runs.
    const loopDelay = monitorEventLoopDelay({ resolution: 10 })
    loopDelay.enable()
    closers.push(() => { loopDelay.disable() })
    const metrics = (): Record<string, number> => ({
      warden_process_resident_memory_bytes: process.memoryUsage.rss(),
      warden_process_heap_used_bytes: process.memoryUsage().heapUsed,
      warden_event_loop_delay_p99_seconds: loopDelay.percentile(99) / 1e9,
      warden_event_loop_delay_max_seconds: loopDelay.max / 1e9,
      warden_policy_version: active().version,
      warden_endpoints: active().endpoints.length,
      // endpoints with the init identity: their labels could not be numbered (etcd unreachable)
      warden_endpoints_init: active().endpoints.reduce((n, e) => e.identity === RESERVED.INIT ? n + 1 : n, 0),
      warden_kernel_entries: active().kernel.length,
      // log lines dropped because stdout stalled (the workers' are in warden_http_log_dropped)
      warden_log_dropped: dest?.dropped ?? 0,
      ...prefixed('warden_datapath_', datapath.counters()),
      ...prefixed('warden_http_', httpWorkers === undefined ? http.metrics() : sumCounters(http.metrics(), httpWorkers.metrics())),
      ...prefixed('warden_dns_', dns.metrics()),
      ...(cluster === undefined ? {} : prefixed('warden_kvstore_', cluster.metrics())),
      ...workerMetrics(enforced.report())
    })
    if (opts.metrics !== undefined) {
      const srv = await serveMetrics(opts.metrics, metrics)
      closers.push(async () => await closeServer(srv))
    }
    if (opts.apiSocket !== undefined) {
      const clusterStore = cluster
      const sources: ReportSources = {
        version: agentVersion(),
        startedAt,
        compiled: () => store.current(),
        active,
        inventory: () => store.inventory(),
        inspect: () => datapath.inspect(),
        httpProxies: () => enforced.report(),
        auditAll: opts.policyAuditMode === true,
        metrics,
        fqdnCache: () => dns.cache(),
        ring,
        ...(clusterStore === undefined ? {} : { cluster: () => clusterStore.status() })
      }
      const api = await serveApi(opts.apiSocket, sources, (err) => log.error({ err }, 'local API request failed'))
      closers.push(async () => await api.close())
    }

    log.info({
      proxyPort: opts.proxyPort,
      dnsProxyPort: opts.dnsProxyPort,
      bpffs: opts.bpffs,
      apiSocket: opts.apiSocket,
      policyAuditMode: opts.policyAuditMode === true,
      policyVersion: active().version,
      endpoints: active().endpoints.map((e) => `${e.namespace}/${e.name}`),
      ...(opts.cluster === undefined ? {} : { node: opts.cluster.nodeName, cluster: opts.cluster.clusterName, kvstore: cluster?.conn.current })
    }, 'warden agent ready')

    return { logger, active, metrics, close }
  } catch (err) {
    await close()
    throw err
  }
}

/** How often the cluster's unreferenced identities are looked for (Cilium's allocator GC runs every few minutes). */
const CLUSTER_GC_INTERVAL_MS = 60_000

/** The node's address for the cluster: the first IPv4 address of the first uplink. */
function uplinkAddress (uplinks: readonly string[]): string {
  const ifs = networkInterfaces()
  for (const name of uplinks.slice(0, 1)) for (const a of ifs[name] ?? []) if (a.family === 'IPv4') return a.address
  throw new ClusterError(CLUSTER_ERR.KVSTORE_CONFIG, `--kvstore needs the node's address: give --node-ip, or an --uplink with an IPv4 address${uplinks.length > 0 ? ` (${uplinks[0]} has none)` : ''}`, { uplinks })
}

/** DNS reply sockets kept at most (reply-sockets.ts). */
const MAX_DNS_REPLY_SOCKETS = 256

/** The agent's metrics that go up and down; every other one is a counter (metrics.ts). */
const GAUGES: ReadonlySet<string> = new Set([
  'warden_process_resident_memory_bytes', 'warden_process_heap_used_bytes',
  'warden_event_loop_delay_p99_seconds', 'warden_event_loop_delay_max_seconds',
  'warden_policy_version', 'warden_endpoints', 'warden_endpoints_init', 'warden_kernel_entries',
  'warden_datapath_ipcache_left_out',
  'warden_http_worker_running', 'warden_http_worker_policy_version', 'warden_http_worker_policy_behind_seconds',
  'warden_kvstore_connected', 'warden_kvstore_keysHeld', 'warden_kvstore_clusterIdentities', 'warden_kvstore_remoteEndpoints', 'warden_kvstore_remoteNodes',
  ...HTTP_GAUGES.map((g) => 'warden_http_' + g),
  ...DNS_GAUGES.map((g) => 'warden_dns_' + g)
])

/** One series per HTTP proxy, labelled by worker (0: the main thread's); no version while it has none. */
function workerMetrics (proxies: readonly ProxyPolicy[]): Record<string, number> {
  const out: Record<string, number> = {}
  for (const p of proxies) {
    const label = `{worker="${p.worker}"}`
    out['warden_http_worker_running' + label] = p.running ? 1 : 0
    if (p.policyVersion !== null) out['warden_http_worker_policy_version' + label] = p.policyVersion
    out['warden_http_worker_policy_behind_seconds' + label] = p.behindSeconds
  }
  return out
}

function sumCounters (a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const out = { ...a }
  for (const [k, v] of Object.entries(b)) out[k] = (out[k] ?? 0) + v
  return out
}

function prefixed (prefix: string, rec: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [k, v] of Object.entries(rec)) out[prefix + k.replace(/[^a-zA-Z0-9_]/g, '_')] = v
  return out
}

async function closeServer (srv: Server | HttpServer): Promise<void> {
  await new Promise<void>((resolve) => srv.close(() => resolve()))
}

async function serveMetrics (addr: string, metrics: () => Record<string, number>): Promise<HttpServer> {
  const i = addr.lastIndexOf(':')
  const host = i > 0 ? addr.slice(0, i) : '127.0.0.1'
  const port = Number(addr.slice(i + 1))
  // node:http is fine here: an operator's scrape every few seconds, not the data path.
  const srv = createHttpServer((req, res) => {
    if (req.url !== '/metrics') { res.statusCode = 404; res.end(); return }
    res.setHeader('content-type', 'text/plain; version=0.0.4')
    res.end(renderMetrics(metrics(), GAUGES))
  })
  await new Promise<void>((resolve, reject) => { srv.once('error', reject); srv.listen(port, host, () => resolve()) })
  return srv
}
