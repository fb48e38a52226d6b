/**
 * Fixtures for the HTTP proxy tests (loopback only, no kernel): a backend that records every
 * byte it receives, the proxy on 127.0.0.1:0, raw clients bound to 127.0.0.x, a parsed access
 * log, and the policy as the real store compiles it: `loadSnapshot` on the seed manifest
 * demo/policies/billing-policy.yaml and test/fixtures/http-proxy/endpoints.yaml, whose workloads
 * sit on 127.0.0.x (checkout .2, auditing .3, prometheus .4, billing .10). So the proxy's
 * `lookupIdentity` is a real ipcache lookup in the snapshot, its original destination is
 * billing-service's address and port 8080 from the snapshot, and only the dialled address is
 * rewritten (the `upstreamAddress` seam) to the backend's ephemeral port on 127.0.0.1.
 */
import net from 'node:net'
import http from 'node:http'
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Writable } from 'node:stream'
import { AF_INET, errno, libc, SOCK_CLOEXEC, SOCK_STREAM } from '../../proxy/src/libc.js'
import pino from 'pino'
import { parseDocument } from 'yaml'
import { loadSnapshot, lookupIpcache, MemoryIdentityAllocator, formatPolicyError, type Snapshot } from '../../policy-store/src/index.js'
import { createHttpProxy, SERVER_OPTIONS, type HttpProxy, type HttpProxyOptions } from '../../proxy/src/http/index.js'
import type { HttpProxyDeps } from '../../proxy/src/http/context.js'

/** Client source addresses, as in the endpoints fixture; STRANGER is no endpoint (world). */
export const ADDR = { CHECKOUT: '127.0.0.2', AUDITING: '127.0.0.3', MONITORING: '127.0.0.4', STRANGER: '127.0.0.5' } as const
/** The port the seed policy's rules are for (the original destination port). */
export const BILLING_PORT = 8080

const SEED_POLICY = fileURLToPath(new URL('../../demo/policies/billing-policy.yaml', import.meta.url))
const ENDPOINTS = fileURLToPath(new URL('../fixtures/http-proxy/endpoints.yaml', import.meta.url))

/** One allocator per test process: a policy edit keeps every workload's identity, as in the agent. */
const allocator = new MemoryIdentityAllocator()

/** The seed's ingress rules, by the peer they are for (their index in `spec.ingress`). */
const RULE_INDEX = { checkout: 0, auditing: 1, monitoring: 2 } as const
export type Peer = keyof typeof RULE_INDEX

/** One `rules.http` item; `headers` become `headerMatches` (value null = must be present). */
export interface RuleSpec { method?: string, path?: string, host?: string, headers?: Array<{ name: string, value: string | null, mismatch?: string }> }

/**
 * The seed billing policy compiled by the policy store. `overrides` replaces the http rules of
 * a peer's ingress rule (a policy edit), and `ports` the port every ingress rule is for (8080)
 * by that list; the edited manifest is written to a temporary directory, loaded and removed
 * again (loadSnapshot does not watch).
 */
export async function billingSnapshot (overrides: Partial<Record<Peer, RuleSpec[]>> = {}, ports?: number[]): Promise<Snapshot> {
  const dir = await mkdtemp(join(tmpdir(), 'warden-http-test-'))
  try {
    const file = join(dir, 'billing-policy.yaml')
    const edits = Object.entries(overrides) as Array<[Peer, RuleSpec[]]>
    if (edits.length === 0 && ports === undefined) {
      await copyFile(SEED_POLICY, file)
    } else {
      const doc = parseDocument(await readFile(SEED_POLICY, 'utf8'))
      if (ports !== undefined) {
        for (const i of Object.values(RULE_INDEX)) {
          doc.setIn(['spec', 'ingress', i, 'toPorts', 0, 'ports'], doc.createNode(ports.map(p => ({ port: String(p), protocol: 'TCP' }))))
        }
      }
      for (const [peer, rules] of edits) {
        const http = rules.map(r => ({
          ...(r.method === undefined ? {} : { method: r.method }),
          ...(r.path === undefined ? {} : { path: r.path }),
          ...(r.host === undefined ? {} : { host: r.host }),
          ...(r.headers === undefined ? {} : { headerMatches: r.headers.map(h => ({ name: h.name, ...(h.value === null ? {} : { value: h.value }), ...(h.mismatch === undefined ? {} : { mismatch: h.mismatch }) })) })
        }))
        doc.setIn(['spec', 'ingress', RULE_INDEX[peer], 'toPorts', 0, 'rules', 'http'], doc.createNode(http))
      }
      await writeFile(file, doc.toString())
    }
    const { snapshot, errors } = await loadSnapshot({ policies: dir, endpoints: ENDPOINTS, allocator, watch: false })
    if (errors.length > 0) throw new Error('test policy does not load:\n' + errors.map(e => formatPolicyError(e)).join('\n'))
    return snapshot
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/** The identity the snapshot gave a workload (by endpoint name). */
export function identityOf (snap: Snapshot, name: string): number {
  const ep = snap.endpoints.find(e => e.name === name)
  if (ep === undefined) throw new Error(`no endpoint ${name} in the snapshot`)
  return ep.identity
}

/** A backend that records the raw bytes of every connection and answers with node:http. */
export interface Backend {
  port: number
  /** Raw bytes received, all connections, in arrival order. */
  received (): string
  connections: number
  requests: Array<{ method: string, url: string, headers: http.IncomingHttpHeaders, body: string }>
  server: http.Server
}

export async function startBackend (t: Tap, handler?: http.RequestListener): Promise<Backend> {
  const chunks: Buffer[] = []
  const b: Backend = {
    port: 0,
    received: () => Buffer.concat(chunks).toString('latin1'),
    connections: 0,
    requests: [],
    server: http.createServer({ keepAliveTimeout: 60_000 })
  }
  b.server.on('connection', (s: net.Socket) => { b.connections++; s.on('data', (d: Buffer) => chunks.push(d)) })
  b.server.on('request', (req, res) => {
    const body: Buffer[] = []
    req.on('data', (d: Buffer) => body.push(d))
    req.on('end', () => {
      b.requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(body).toString('latin1') })
      if (handler !== undefined) { handler(req, res); return }
      const text = `backend saw ${req.method ?? ''} ${req.url ?? ''}`
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(text) })
      res.end(text)
    })
  })
  await new Promise<void>(resolve => b.server.listen(0, '127.0.0.1', resolve))
  b.port = (b.server.address() as net.AddressInfo).port
  t.teardown(async () => {
    b.server.closeAllConnections()
    await new Promise<void>(resolve => b.server.close(() => resolve()))
  })
  return b
}

/**
 * A loopback port where TCP connects hang (no RST, no SYN-ACK): a listening socket made with
 * libc directly (so libuv never accepts on it), backlog 0, whose accept queue is then filled by
 * one connection of ours. Linux drops SYNs to a listener with a full accept queue
 * (tcp_conn_request: sk_acceptq_is_full -> drop; tcp_abort_on_overflow only concerns the final
 * ACK), so the next connect stays in SYN_SENT and retransmits -- on loopback only. Closed in
 * t.teardown.
 */
export async function unacceptingPort (t: Tap): Promise<number> {
  const c = libc()
  const fd = c.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)
  if (fd < 0) throw new Error(`socket: errno ${errno()}`)
  let filler: net.Socket | null = null
  t.teardown(() => { filler?.destroy(); c.close(fd) })
  const sa = Buffer.alloc(16)
  sa.writeUInt16LE(AF_INET, 0)
  sa.set([127, 0, 0, 1], 4) // port 0: the kernel picks one
  if (c.bind(fd, sa, 16) !== 0 || c.listen(fd, 0) !== 0) throw new Error(`bind/listen: errno ${errno()}`)
  const out = Buffer.alloc(16)
  if (c.getsockname(fd, out, [16]) !== 0) throw new Error(`getsockname: errno ${errno()}`)
  const port = out.readUInt16BE(2)
  const f = net.connect({ host: '127.0.0.1', port })
  filler = f
  await new Promise<void>((resolve, reject) => { f.once('connect', resolve); f.once('error', reject) })
  return port
}

/** Minimal type for what we use of tap's Test (avoids importing tap's types here). */
export interface Tap { teardown (fn: () => unknown): void }

export interface ProxyFixture {
  proxy: HttpProxy
  port: number
  /** Parsed access-log records. */
  logs: Array<Record<string, unknown>>
  /** The original destination every connection is given (billing-service's address). */
  dst: { ip: string, port: number }
  /** The listeners of `ProxyFixtureOptions.routes`, in their order. */
  routePorts: number[]
  setSnapshot (s: Snapshot): void
}

export interface ProxyFixtureOptions {
  /** Original destination port the proxy is told about. Default BILLING_PORT (the policy's port). */
  dstPort?: number
  /** Receives each exchange's decision (HttpProxyDeps.onDecision). */
  onDecision?: HttpProxyDeps['onDecision']
  /** The proxy's `upstreamSource` dependency (default: none, the connections leave from 127.0.0.1). */
  upstreamSource?: (clientIp: string, dst: { ip: string, port: number }) => string | undefined
  /**
   * More destinations, one listener each: a connection accepted there has billing-service's
   * address and `dstPort` as its original destination, and the proxy dials `backendPort`.
   */
  routes?: Array<{ dstPort: number, backendPort: number }>
}

/**
 * The proxy on 127.0.0.1:0. Every connection's original destination is billing-service's
 * address in `snap` and `dstPort`; the proxy dials 127.0.0.1:`backendPort` instead. Source
 * identities come from the current snapshot's ipcache.
 */
export async function startProxy (t: Tap, backendPort: number, snap: Snapshot,
  opts: Partial<HttpProxyOptions> = {}, fx: ProxyFixtureOptions = {}): Promise<ProxyFixture> {
  const logs: Array<Record<string, unknown>> = []
  const sink = new Writable({
    write (chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line !== '') logs.push(JSON.parse(line) as Record<string, unknown>)
      cb()
    }
  })
  let current = snap
  const billing = snap.endpoints.find(e => e.name === 'billing-service')
  if (billing === undefined) throw new Error('no billing-service endpoint in the snapshot')
  const dst = { ip: billing.ipv4, port: fx.dstPort ?? BILLING_PORT }
  const dstPortByListener = new Map<number, number>()
  const backendByDstPort = new Map((fx.routes ?? []).map(r => [r.dstPort, r.backendPort]))
  const proxy = createHttpProxy({
    snapshot: () => current,
    lookupIdentity: (ip) => lookupIpcache(current, ip),
    originalDestination: (s) => {
      const port = dstPortByListener.get(s.localPort ?? 0)
      return port === undefined ? dst : { ip: dst.ip, port }
    },
    upstreamAddress: (d) => ({ ip: '127.0.0.1', port: d === dst ? backendPort : backendByDstPort.get(d.port) ?? backendPort }),
    onDecision: fx.onDecision,
    ...(fx.upstreamSource === undefined ? {} : { upstreamSource: fx.upstreamSource }),
    logger: pino({ level: 'info' }, sink)
  }, { denyResponse: '403', ...opts })
  const servers: net.Server[] = []
  t.teardown(async () => {
    await proxy.close()
    for (const server of servers) await new Promise<void>(resolve => server.close(() => resolve()))
  })
  const listen = async (): Promise<number> => {
    const server = net.createServer(SERVER_OPTIONS, (s) => proxy.handleConnection(s))
    servers.push(server)
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
    return (server.address() as net.AddressInfo).port
  }
  const port = await listen()
  const routePorts: number[] = []
  for (const r of fx.routes ?? []) {
    const p = await listen()
    dstPortByListener.set(p, r.dstPort)
    routePorts.push(p)
  }
  return { proxy, port, logs, dst, routePorts, setSnapshot: (s) => { current = s } }
}

export interface Response { status: number, head: string, headers: Record<string, string>, body: string }

/** A raw client bound to `localAddress` that reads content-length framed responses. */
export class RawClient {
  readonly socket: net.Socket
  private buf = Buffer.alloc(0)
  private waiters: Array<() => void> = []
  closed = false
  reset = false

  private constructor (socket: net.Socket) {
    this.socket = socket
    socket.on('data', (d: Buffer) => { this.buf = Buffer.concat([this.buf, d]); this.wake() })
    socket.on('error', (e: NodeJS.ErrnoException) => { if (e.code === 'ECONNRESET') this.reset = true })
    socket.on('end', () => { this.closed = true; this.wake() }) // the proxy sent FIN
    socket.on('close', () => { this.closed = true; this.wake() })
  }

  static async connect (t: Tap, port: number, localAddress: string): Promise<RawClient> {
    const s = net.connect({ host: '127.0.0.1', port, localAddress, allowHalfOpen: true })
    await new Promise<void>((resolve, reject) => { s.once('connect', resolve); s.once('error', reject) })
    const c = new RawClient(s)
    t.teardown(() => { s.destroy() })
    return c
  }

  write (data: string | Buffer): void { this.socket.write(data) }

  private wake (): void { const w = this.waiters; this.waiters = []; for (const f of w) f() }

  private async changed (timeoutMs: number): Promise<boolean> {
    return await new Promise<boolean>(resolve => {
      const timer = setTimeout(() => resolve(false), timeoutMs)
      this.waiters.push(() => { clearTimeout(timer); resolve(true) })
    })
  }

  /** Next response (content-length framed), or null if the connection closed / time ran out. */
  async response (timeoutMs = 3000): Promise<Response | null> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const r = this.take()
      if (r !== null) return r
      if (this.closed) return null
      const left = deadline - Date.now()
      if (left <= 0) return null
      await this.changed(left)
    }
  }

  /** Wait until the peer closes (true) or the time runs out (false). */
  async waitClose (timeoutMs = 3000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs
    while (!this.closed) {
      const left = deadline - Date.now()
      if (left <= 0) return false
      await this.changed(left)
    }
    return true
  }

  /** Bytes not yet taken as responses. */
  rest (): string { return this.buf.toString('latin1') }

  private take (): Response | null {
    const end = this.buf.indexOf('\r\n\r\n')
    if (end === -1) return null
    const head = this.buf.subarray(0, end).toString('latin1')
    const lines = head.split('\r\n')
    const status = Number(lines[0].split(' ')[1])
    const headers: Record<string, string> = {}
    for (const l of lines.slice(1)) { const i = l.indexOf(':'); headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim() }
    const len = status === 101 || (status >= 100 && status < 200) ? 0 : Number(headers['content-length'] ?? 0)
    if (this.buf.length < end + 4 + len) return null
    const body = this.buf.subarray(end + 4, end + 4 + len).toString('latin1')
    this.buf = this.buf.subarray(end + 4 + len)
    return { status, head, headers, body }
  }
}

export function get (path: string, host = 'billing:8080', extra = ''): string {
  return `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n${extra}\r\n`
}

export function post (path: string, body: string, host = 'billing:8080'): string {
  return `POST ${path} HTTP/1.1\r\nHost: ${host}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
}

export async function sleep (ms: number): Promise<void> { await new Promise(resolve => setTimeout(resolve, ms)) }
