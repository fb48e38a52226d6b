/**
 * Fixtures for the HTTP proxy tests (loopback only, no kernel): a backend that records every
 * byte it receives, the proxy on 127.0.0.1:0 with its original destination pointed at the
 * backend, raw clients bound to 127.0.0.x (one identity per address), a parsed access log, and
 * the seed billing policy's L7 table built by hand with RE2 matchers.
 *
 * TODO(http): switch billingSnapshot() to policy-store's loadSnapshot once policy-store/src/index.ts
 * exists (being written in parallel); the table shape is the contract in types.ts either way.
 */
import net from 'node:net'
import http from 'node:http'
import { Writable } from 'node:stream'
import pino from 'pino'
import RE2 from 're2'
import { DIR, PROTO, l7Key } from '../../policy-store/src/types.js'
import type { CompiledHttpRule, Endpoint, HttpPolicy, L7PortTable, RuleRef, Snapshot, StringMatcher } from '../../policy-store/src/types.js'
import { createHttpProxy, type HttpProxy, type HttpProxyOptions } from '../../proxy/src/http/index.js'

export const ID = { CHECKOUT: 1001, AUDITING: 1002, MONITORING: 1003, BILLING: 1004 } as const
/** Client source addresses: identity by address, as the ipcache would give it. */
export const ADDR = { CHECKOUT: '127.0.0.2', AUDITING: '127.0.0.3', MONITORING: '127.0.0.4', STRANGER: '127.0.0.5' } as const
const IDENTITY_BY_ADDR: Record<string, number> = { '127.0.0.2': ID.CHECKOUT, '127.0.0.3': ID.AUDITING, '127.0.0.4': ID.MONITORING }

function matcher (source: string): StringMatcher {
  const re = new RE2('^(?:' + source + ')$', 'u')
  return { source, test: (v: string) => re.test(v) }
}

function ref (index: number): RuleRef {
  return { file: 'billing-policy.yaml', line: 10 + index * 14, kind: 'CiliumNetworkPolicy', policy: 'default/billing-l7-policy', spec: 0, section: 'ingress', index }
}

export interface RuleSpec { method?: string, path?: string, host?: string, headers?: Array<{ name: string, value: string | null }> }

function policy (index: number, rules: RuleSpec[]): HttpPolicy {
  const compiled: CompiledHttpRule[] = rules.map((r, i) => ({
    method: r.method === undefined ? null : matcher(r.method),
    path: r.path === undefined ? null : matcher(r.path),
    host: r.host === undefined ? null : matcher(r.host),
    headers: r.headers ?? [],
    rule: ref(index),
    httpIndex: i
  }))
  return { allowAll: false, rules: compiled }
}

function ep (id: number, name: string, ipv4: string, identity: number): Endpoint {
  return {
    id, name, namespace: 'default', labels: { app: name },
    identityLabels: [`k8s:app=${name}`, 'k8s:io.kubernetes.pod.namespace=default'],
    identity, ipv4, interface: 'lo', line: 1
  }
}

let version = 0
/**
 * The seed billing policy (shared/seed/manifests/billing-policy.yaml) as the store would compile
 * it, for billing at 127.0.0.1:`port`. `overrides` replaces an identity's rules (policy edits).
 */
export function billingSnapshot (port: number, overrides: Partial<Record<number, RuleSpec[]>> = {}): Snapshot {
  const rules: Record<number, RuleSpec[]> = {
    [ID.CHECKOUT]: [{ method: 'POST', path: '/api/v1/charge' }],
    [ID.AUDITING]: [{ method: 'GET', path: '/api/v1/invoices/.*' }],
    [ID.MONITORING]: [{ method: 'GET', path: '/healthz' }],
    ...overrides
  }
  const byIdentity = new Map<number, HttpPolicy>()
  const order = [ID.CHECKOUT, ID.AUDITING, ID.MONITORING]
  for (const id of Object.keys(rules).map(Number)) byIdentity.set(id, policy(Math.max(0, order.indexOf(id as 1001)), rules[id] ?? []))
  const table: L7PortTable<HttpPolicy> = { endpointId: 1, direction: DIR.INGRESS, protocol: PROTO.TCP, port, byIdentity, anyIdentity: null }
  const endpoints = [ep(1, 'billing-service', '127.0.0.1', ID.BILLING), ep(2, 'checkout-service', ADDR.CHECKOUT, ID.CHECKOUT),
    ep(3, 'auditing-service', ADDR.AUDITING, ID.AUDITING), ep(4, 'monitoring', ADDR.MONITORING, ID.MONITORING)]
  return {
    version: ++version,
    createdAt: Date.now(),
    endpoints,
    identities: new Map(endpoints.map(e => [e.identity, e.identityLabels])),
    ipcache: endpoints.map(e => ({ prefix: e.ipv4 + '/32', identity: e.identity, endpointId: e.id })),
    kernel: [],
    http: new Map([[l7Key(1, DIR.INGRESS, port), table]]),
    dns: new Map(),
    fqdnSelectors: []
  }
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

/** Minimal type for what we use of tap's Test (avoids importing tap's types here). */
export interface Tap { teardown (fn: () => unknown): void }

export interface ProxyFixture {
  proxy: HttpProxy
  port: number
  /** Parsed access-log records. */
  logs: Array<Record<string, any>>
  setSnapshot (s: Snapshot): void
}

/** The proxy on 127.0.0.1:0; every connection's original destination is `dst`. */
export async function startProxy (t: Tap, dst: { ip: string, port: number }, snap: Snapshot,
  opts: Partial<HttpProxyOptions> = {}): Promise<ProxyFixture> {
  const logs: Array<Record<string, any>> = []
  const sink = new Writable({
    write (chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line !== '') logs.push(JSON.parse(line))
      cb()
    }
  })
  let current = snap
  const proxy = createHttpProxy({
    snapshot: () => current,
    lookupIdentity: (ip) => IDENTITY_BY_ADDR[ip] ?? 0,
    originalDestination: () => dst,
    logger: pino({ level: 'info' }, sink)
  }, { denyResponse: '403', ...opts })
  const server = net.createServer({ allowHalfOpen: true }, (s) => proxy.handleConnection(s))
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    await proxy.close()
    await new Promise<void>(resolve => server.close(() => resolve()))
  })
  return { proxy, port: (server.address() as net.AddressInfo).port, logs, setSnapshot: (s) => { current = s } }
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
