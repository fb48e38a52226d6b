/**
 * Helpers for DNS proxy tests: a real dnsmasq (authoritative only, never forwarding) on a
 * 127.0.53.x address, a DNS client that sends from a chosen loopback address (the
 * "endpoint"), a minimal Snapshot with DNS tables, and the proxy on loopback with injected
 * deps. Everything started here is stopped in t.teardown, by PID for processes.
 */
import { spawn } from 'node:child_process'
import * as dgram from 'node:dgram'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import * as net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import dnsPacket from 'dns-packet'
import pino from 'pino'
import { createDnsProxy, compileNameMatcher, type DnsProxy, type DnsProxyDeps, type DnsProxyOptions } from '../../proxy/src/dns/index.js'
import { bindUdp } from '../../proxy/src/udp-batch.js'
import { DIR, l7Key, RESERVED } from '../../policy-store/src/types.js'
import type { DnsPolicy, Endpoint, FqdnSelector, L7PortTable, LearnedName, RuleRef, Snapshot } from '../../policy-store/src/types.js'

/** The subset of tap's Test these helpers use. */
export interface TestLike { teardown (fn: () => unknown): void }

export const DNSMASQ = '/usr/sbin/dnsmasq'

export interface Dnsmasq {
  ip: string
  port: number
  pid: number
  logPath: string
  /** Replace the hosts file (name -> IPs) and make dnsmasq re-read it. */
  setHosts (hosts: Record<string, string[]>): Promise<void>
  /** How many queries for `name` dnsmasq has logged. */
  queriesFor (name: string): Promise<number>
  /** End it now (its port is then closed: queries draw ICMP port unreachable). */
  stop (): Promise<void>
}

function hostsText (hosts: Record<string, string[]>): string {
  return Object.entries(hosts).flatMap(([name, ips]) => ips.map(ip => `${ip} ${name}\n`)).join('')
}

async function freePort (ip: string): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = 20000 + Math.floor(Math.random() * 40000)
    const ok = await new Promise<boolean>(resolve => {
      const u = dgram.createSocket('udp4')
      u.once('error', () => { u.close(); resolve(false) })
      u.bind(port, ip, () => {
        const s = net.createServer()
        s.once('error', () => { u.close(); resolve(false) })
        s.listen(port, ip, () => { s.close(); u.close(); resolve(true) })
      })
    })
    if (ok) return port
  }
  throw new Error(`no free port on ${ip}`)
}

/**
 * Start dnsmasq on `ip` (a 127.0.53.x address of the calling test's own), authoritative for
 * `hosts` (via an addn-hosts file, so setHosts + SIGHUP can change answers) and `cnames`,
 * with TTL `ttl`. Queries are logged to a file so tests can prove what was (not) forwarded.
 */
export async function startDnsmasq (t: TestLike, opts: { ip: string, hosts: Record<string, string[]>, cnames?: [string, string][], ttl?: number, port?: number }): Promise<Dnsmasq> {
  const dir = await mkdtemp(join(tmpdir(), 'warden-dnsmasq-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const hostsPath = join(dir, 'hosts')
  const logPath = join(dir, 'log')
  await writeFile(hostsPath, hostsText(opts.hosts))
  await writeFile(logPath, '')
  const port = opts.port ?? await freePort(opts.ip)
  const args = [
    '--keep-in-foreground', '--no-resolv', '--no-hosts', '--conf-file=/dev/null', '--user=root',
    `--addn-hosts=${hostsPath}`, `--local-ttl=${opts.ttl ?? 60}`, `--port=${port}`,
    `--listen-address=${opts.ip}`, '--bind-interfaces', `--pid-file=${join(dir, 'pid')}`,
    '--log-queries', `--log-facility=${logPath}`, '--cache-size=0',
    ...(opts.cnames ?? []).map(([alias, target]) => `--cname=${alias},${target}`)
  ]
  const child = spawn(DNSMASQ, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', d => { stderr += String(d) })
  const pid = child.pid
  if (pid === undefined) throw new Error('dnsmasq did not start')
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      process.kill(pid, 'SIGTERM')
      await once(child, 'exit')
    }
  }
  t.teardown(stop)
  // Ready when it answers.
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`dnsmasq exited: ${stderr}`)
    try {
      await query({ ip: opts.ip, port }, 'ready.invalid', { timeoutMs: 200 })
      break
    } catch (err) {
      if (i > 30) throw err
      await sleep(50)
    }
  }
  return {
    ip: opts.ip,
    port,
    pid,
    logPath,
    async setHosts (hosts) {
      await writeFile(hostsPath, hostsText(hosts))
      const before = (await readFile(logPath, 'utf8')).split('\n').filter(l => l.includes(`read ${hostsPath}`)).length
      process.kill(pid, 'SIGHUP')
      for (let i = 0; i < 100; i++) {
        const n = (await readFile(logPath, 'utf8')).split('\n').filter(l => l.includes(`read ${hostsPath}`)).length
        if (n > before) return
        await sleep(20)
      }
      throw new Error('dnsmasq did not re-read its hosts file')
    },
    stop,
    async queriesFor (name) {
      const text = await readFile(logPath, 'utf8')
      return text.split('\n').filter(l => / query\[/.test(l) && l.includes(` ${name} from `)).length
    }
  }
}

export type Packet = ReturnType<typeof dnsPacket.decode>

/** One query over UDP (from `opts.from`, default 127.0.0.1) or TCP; resolves with the answer. */
export async function query (server: { ip: string, port: number }, name: string,
  opts: { type?: string, from?: string, tcp?: boolean, timeoutMs?: number, id?: number } = {}): Promise<Packet> {
  const msg = dnsPacket.encode({
    type: 'query', id: opts.id ?? Math.floor(Math.random() * 65536), flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type: opts.type ?? 'A', name }]
  })
  const raw = opts.tcp === true ? await rawTcp(server, [msg], 1, opts) : [await rawUdp(server, msg, opts)]
  return dnsPacket.decode(raw[0])
}

/** Send raw bytes over UDP; resolves with the first datagram back, rejects on timeout. */
export async function rawUdp (server: { ip: string, port: number }, msg: Buffer, opts: { from?: string, timeoutMs?: number } = {}): Promise<Buffer> {
  const sock = dgram.createSocket('udp4')
  try {
    sock.bind(0, opts.from ?? '127.0.0.1')
    await once(sock, 'listening')
    const got = once(sock, 'message') as Promise<[Buffer, dgram.RemoteInfo]>
    sock.send(msg, server.port, server.ip)
    const ac = new AbortController()
    const timeout = sleep(opts.timeoutMs ?? 2000, undefined, { signal: ac.signal }).then(() => { throw new Error('udp: no answer') })
    try {
      const [buf] = await Promise.race([got, timeout])
      return buf
    } finally {
      ac.abort()
    }
  } finally {
    sock.close()
  }
}

/**
 * Open one TCP connection from `opts.from`, write `msgs` framed (in one write, pipelined),
 * collect `expect` framed answers. `chunked` writes byte by byte.
 */
export async function rawTcp (server: { ip: string, port: number }, msgs: Buffer[], expect: number,
  opts: { from?: string, timeoutMs?: number, chunked?: boolean, unframed?: Buffer } = {}): Promise<Buffer[]> {
  const sock = net.connect({ host: server.ip, port: server.port, localAddress: opts.from ?? '127.0.0.1' })
  sock.on('error', () => {})
  await once(sock, 'connect')
  const data = Buffer.concat([...msgs.map(m => { const l = Buffer.alloc(2); l.writeUInt16BE(m.length); return Buffer.concat([l, m]) }), opts.unframed ?? Buffer.alloc(0)])
  const out: Buffer[] = []
  return await new Promise<Buffer[]>((resolve, reject) => {
    let buf = Buffer.alloc(0)
    const timer = setTimeout(() => { sock.destroy(); reject(new Error(`tcp: ${out.length}/${expect} answers`)) }, opts.timeoutMs ?? 3000)
    sock.on('data', chunk => {
      buf = Buffer.concat([buf, chunk])
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        out.push(buf.subarray(2, 2 + buf.readUInt16BE(0)))
        buf = buf.subarray(2 + buf.readUInt16BE(0))
      }
      if (out.length >= expect) { clearTimeout(timer); sock.destroy(); resolve(out) }
    })
    sock.on('close', () => { clearTimeout(timer); if (out.length < expect) reject(new Error(`tcp closed after ${out.length}/${expect} answers`)) })
    if (opts.chunked === true) {
      void (async () => { for (const b of data) { sock.write(Buffer.from([b])); await sleep(1) } })()
    } else {
      sock.write(data)
    }
  })
}

export const RULE: RuleRef = { file: 'test.yaml', line: 1, kind: 'CiliumNetworkPolicy', policy: 'default/test', spec: 0, section: 'egress', index: 0 }

export interface SnapshotSpec {
  endpoints: { id: number, name: string, ipv4: string, namespace?: string }[]
  /** DNS rules per (endpoint, port): names as matchPattern (`*`...) or matchName. */
  dns: { endpointId: number, port: number, identity?: number, matchPatterns?: string[], matchNames?: string[] }[]
  /** toFQDNs selectors on the node. */
  fqdn?: { matchName?: string, matchPattern?: string }[]
}

/** A Snapshot with only what the DNS proxy reads. DNS rules apply to `identity` (default: any). */
export function makeSnapshot (spec: SnapshotSpec, version = 1): Snapshot {
  const endpoints: Endpoint[] = spec.endpoints.map(e => ({
    id: e.id, name: e.name, namespace: e.namespace ?? 'default', labels: { app: e.name },
    identityLabels: [`k8s:app=${e.name}`], identity: 1000 + e.id, ipv4: e.ipv4, interface: `lxc${e.id}`, ports: [], line: 1
  }))
  const dns = new Map<number, L7PortTable<DnsPolicy>>()
  for (const d of spec.dns) {
    const rules = [...(d.matchPatterns ?? []).map(p => ({ matchPattern: p })), ...(d.matchNames ?? []).map(n => ({ matchName: n }))]
      .map(sel => { const m = compileNameMatcher(sel); return { pattern: m.pattern, test: (f: string) => m.test(f), rule: RULE } })
    const policy: DnsPolicy = { allowAll: false, rules }
    dns.set(l7Key(d.endpointId, DIR.EGRESS, d.port), {
      endpointId: d.endpointId, direction: DIR.EGRESS, protocol: 17, port: d.port, endPort: d.port,
      byIdentity: d.identity === undefined ? new Map() : new Map([[d.identity, policy]]),
      anyIdentity: d.identity === undefined ? policy : null
    })
  }
  const fqdnSelectors: FqdnSelector[] = (spec.fqdn ?? []).map(s => { const m = compileNameMatcher(s); return { key: m.key, test: (f: string) => m.test(f) } })
  return {
    version, createdAt: Date.now(), endpoints, identities: new Map([[RESERVED.WORLD, ['reserved:world']]]),
    ipcache: [], kernel: [], http: new Map(), dns, fqdnSelectors
  }
}

export interface ProxyHarness {
  proxy: DnsProxy
  /** Where clients send UDP and TCP queries. */
  udp: { ip: string, port: number }
  tcp: { ip: string, port: number }
  /** Every set passed to learn(), in order. */
  learnCalls: LearnedName[][]
  /** IPs with a "live connection" for hasConnection(). */
  connections: Set<string>
  logs: Record<string, unknown>[]
  /** The same lines as written, byte for byte. */
  lines: string[]
  setSnapshot (s: Snapshot): void
  /** Make learn() take this long (ms), or never resolve (Infinity). */
  setLearnDelay (ms: number): void
  close (): Promise<void>
}

/**
 * The proxy on 127.0.53.1 (port 0, UDP and TCP) whose original destination is always
 * `upstream` (as the kernel map would say), with a recording learn() and a pino sink.
 */
export async function startProxy (t: TestLike, opts: { snapshot: Snapshot, upstream: { ip: string, port: number }, options?: DnsProxyOptions, serverIdentity?: number, connections?: string[], loggerOptions?: pino.LoggerOptions, onDecision?: DnsProxyDeps['onDecision'] }): Promise<ProxyHarness> {
  let snapshot = opts.snapshot
  let learnDelay = 0
  const learnCalls: LearnedName[][] = []
  const connections = new Set<string>(opts.connections)
  const logs: Record<string, unknown>[] = []
  const lines: string[] = []
  const logger = pino({ level: 'debug', ...opts.loggerOptions }, { write (s: string) { lines.push(s); logs.push(JSON.parse(s) as Record<string, unknown>) } })
  const proxy = await createDnsProxy({
    snapshot: () => snapshot,
    lookupIdentity: () => opts.serverIdentity ?? RESERVED.WORLD,
    udpOriginalDestination: () => opts.upstream,
    tcpOriginalDestination: () => opts.upstream,
    learn: async names => {
      learnCalls.push([...names])
      if (learnDelay === Infinity) await new Promise(() => {})
      if (learnDelay > 0) await sleep(learnDelay)
    },
    hasConnection: ip => connections.has(ip),
    onDecision: opts.onDecision,
    logger
  }, { upstreamTimeoutMs: 2000, gcIntervalMs: 50, ...opts.options })
  const udpSock = bindUdp('127.0.53.1', 0)
  proxy.attachUdp(udpSock)
  const server = net.createServer(s => proxy.handleTcpConnection(s))
  server.listen(0, '127.0.53.1')
  await once(server, 'listening')
  let closed = false
  const close = async (): Promise<void> => {
    if (closed) return
    closed = true
    await proxy.close()
    udpSock.close()
    await new Promise(resolve => server.close(resolve))
  }
  t.teardown(close)
  return {
    proxy,
    udp: { ip: '127.0.53.1', port: udpSock.localAddress().port },
    tcp: { ip: '127.0.53.1', port: (server.address() as net.AddressInfo).port },
    learnCalls,
    connections,
    logs,
    lines,
    setSnapshot (s) { snapshot = s },
    setLearnDelay (ms) { learnDelay = ms },
    close
  }
}

/** The IPs the last learn() call gave for `name` ([] if none or never called). */
export function lastLearned (h: ProxyHarness, name: string): string[] {
  const last = h.learnCalls[h.learnCalls.length - 1]
  return [...(last?.find(n => n.name === name)?.ipv4 ?? [])]
}

/** A-record data of an answer. */
export function aRecords (p: Packet): string[] {
  return p.answers.filter(a => a.type === 'A').map(a => String(a.data))
}

/** Poll `cond` every 20 ms until true or `ms` pass. */
export async function waitFor (cond: () => boolean | Promise<boolean>, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await cond()) return true
    await sleep(20)
  }
  return cond()
}
