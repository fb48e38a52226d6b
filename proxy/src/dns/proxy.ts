/**
 * The DNS proxy core, shared by both transports: decide a query (Cilium's ServeDNS), learn
 * from the answer, hold the answer until the kernel has new IPs, expire and persist the cache
 * (docs/dns-proxy.md).
 *
 * Transports (udp.ts, tcp.ts) only frame bytes and match answers to queries; they call
 * `admit()` for each query and `complete()` for each answer that passed their checks.
 */
import type { Logger } from 'pino'
import { decideDns } from '../../../policy-store/src/l7-match.js'
import { DIR, l7Key } from '../../../policy-store/src/types.js'
import type { DnsPolicy, Endpoint, L7PortTable, LearnedName, RuleRef, Snapshot } from '../../../policy-store/src/types.js'
import qtypes from 'dns-packet/types.js'
import { bindingsOf, fastLineOk, jsonString, LEVEL, LineWriter, needsJsonEscape } from '../log-line.js'
import rcodes from 'dns-packet/rcodes.js'
import { FqdnCache, type IpEvent, type PersistedCache } from './cache.js'
import { LearnSync } from './sync.js'
import { DEBOUNCE_MS, REFRESH_DEBOUNCE_MS, StateFile } from './state.js'
import {
  HEADER_LEN, OPCODE_QUERY, RCODE, TYPE_A, TYPE_CNAME, errorReply, isResponse, opcodeOf, parseQuestion, rcodeOf,
  walkAnswers, type NameCursor, type Question
} from './wire.js'
import type { Addr, DnsProxyDeps } from './types.js'
import { ruleRef, type L7Verdict } from '../decision.js'

/** A query is a question plus EDNS options; anything bigger is not a query we forward. */
export const MAX_QUERY = 4096
/** CNAME hops followed from the question name (resolvers stop around 8-16). */
const MAX_CHAIN = 16

export type Transport = 'udp' | 'tcp'

export interface ResolvedOptions {
  minTtlSec: number
  maxTtlSec: number | undefined
  maxIpsPerName: number
  maxNamesPerEndpoint: number
  maxZombiesPerEndpoint: number
  stateDir: string | undefined
  rejectRcode: number
  upstreamTimeoutMs: number
  holdMaxMs: number
  gcIntervalMs: number
  zombieGraceMs: number
  maxPending: number
  upstreamSockets: number
  upstreamSocketMark: number
  proxyPort?: number
  maxTcpPendingPerConnection: number
  tcpIdleTimeoutMs: number
  now: () => number
}

/** A forwarded query waiting for its answer. */
export class Pending {
  /** Upstream ID, set by the transport. */
  id = 0
  constructor (
    readonly clientId: number,
    /** The client's query (its ID bytes may be overwritten by the transport). */
    readonly query: Buffer,
    readonly q: Question,
    readonly client: Addr,
    readonly server: Addr,
    readonly transport: Transport,
    readonly endpoint: Endpoint,
    readonly table: L7PortTable<DnsPolicy> | undefined,
    readonly remoteIdentity: number,
    /** The allowing rule; null when policy refused the query and the endpoint audits. */
    readonly rule: RuleRef | null,
    readonly started: number,
    /** Sends bytes to the client (UDP: from the server's address; TCP: framed). */
    readonly reply: (msg: Buffer) => void,
    /** With `rule` null: why policy would have refused the query. */
    readonly auditReason = ''
  ) {}
}

/** A cached query logger and what pino serialised for its bindings (log-line.ts writes them as they are). */
interface QueryLogger { logger: Logger, bindings: string, endpoint: Endpoint, ip: string, port: number, identity: number, transport: Transport }

const MSG_DNS_QUERY = jsonString('dns query')

/** The `dns query` line of an answered query, written when the answer is released (held or not). */
interface AnswerLog { write (ms: number, held: boolean, heldTimeout: boolean): void }

class PinoAnswerLog implements AnswerLog {
  constructor (private readonly logger: Logger, private readonly rec: Record<string, unknown>) {}
  write (ms: number, held: boolean, heldTimeout: boolean): void {
    this.rec.ms = ms
    if (held) { this.rec.held = true; this.rec.heldTimeout = heldTimeout }
    this.logger.info(this.rec, 'dns query')
  }
}

class LineAnswerLog implements AnswerLog {
  constructor (private readonly lines: LineWriter, private readonly bindings: string, private readonly fields: string) {}
  write (ms: number, held: boolean, heldTimeout: boolean): void {
    this.lines.write(LEVEL.info, this.bindings, this.fields + ',"ms":' + String(ms) +
      (held ? ',"held":true,"heldTimeout":' + String(heldTimeout) : ''), MSG_DNS_QUERY)
  }
}

/** A rule of the DNS table that refused a query (names the policy that put DNS rules on the port). */
function checkedDnsRule (table: L7PortTable<DnsPolicy> | undefined, remoteIdentity: number): RuleRef | null {
  if (table === undefined) return null
  const p = table.byIdentity.get(remoteIdentity) ?? table.anyIdentity
  if (p !== null && p.rules.length > 0) return p.rules[0].rule
  for (const q of table.byIdentity.values()) if (q.rules.length > 0) return q.rules[0].rule
  return table.anyIdentity?.rules[0]?.rule ?? null
}

function ruleName (r: RuleRef | null | undefined): string | undefined {
  return r == null ? undefined : `${r.file}:${r.line}`
}

// Fields of the answered line that take few values, as JSON, made once per value.
const qtypeFields = new Map<number, string>()
function qtypeField (type: number): string {
  let f = qtypeFields.get(type)
  if (f === undefined) { f = ',"qtype":' + jsonString(qtypes.toString(type)); qtypeFields.set(type, f) } // 16 bits: bounded
  return f
}
const rcodeFields = Array.from({ length: 16 }, (_, r) => ',"rcode":' + jsonString(rcodes.toString(r)))
const ruleFields = new WeakMap<RuleRef, string>()
function ruleField (r: RuleRef | null | undefined): string {
  if (r == null) return ''
  let f = ruleFields.get(r)
  if (f === undefined) { f = ',"rule":' + jsonString(`${r.file}:${r.line}`); ruleFields.set(r, f) }
  return f
}

/**
 * `,"qtype":..,"verdict":"allowed","rule":..` per rule and type, made once: the part of an
 * allowed query's line between its name and its rcode. A rule's entry keeps its last type only
 * (nearly every query is for A); another type makes the string again.
 */
const allowedFields = new WeakMap<RuleRef, { type: number, json: string }>()
function allowedField (r: RuleRef, type: number): string {
  let f = allowedFields.get(r)
  if (f === undefined || f.type !== type) {
    f = { type, json: qtypeField(type) + ',"verdict":"allowed"' + ruleField(r) }
    allowedFields.set(r, f)
  }
  return f.json
}

/**
 * An answered query's fields in log-line.ts's form (the keys and order pino gave them). Through
 * pino's generic path the line was a large share of the proxy's CPU per query
 * (docs/design/hot-paths.md).
 * `answer` holds dotted quads only (walkAnswers makes them): nothing to escape. The address
 * and port are quoted as they are when the address needs no escaping (always, for what
 * inet_ntop writes): a `jsonString` of the joined text would flatten it first.
 */
function answerFields (p: Pending, rcode: number, answer: string[], minTtl: number, chain: string[]): string {
  const ip = p.client.ip
  const src = needsJsonEscape(ip) ? jsonString(ip + ':' + String(p.client.port)) : '"' + ip + ':' + String(p.client.port) + '"'
  const verdict = p.rule === null ? qtypeField(p.q.type) + ',"verdict":"audit","reason":' + jsonString(p.auditReason) : allowedField(p.rule, p.q.type)
  return ',"src":' + src + ',"name":' + jsonString(p.q.name) + verdict + rcodeFields[rcode & 0x0f] +
    (answer.length === 0 ? ',"answer":[]' : answer.length === 1 ? ',"answer":["' + answer[0] + '"]' : ',"answer":["' + answer.join('","') + '"]') +
    (minTtl === Infinity ? '' : ',"ttl":' + String(minTtl)) +
    (chain.length > 1 ? ',"cname":' + JSON.stringify(chain.slice(1)) : '')
}

/**
 * `namespace/name` per endpoint, made once: the cache's Map lookups then hash the same string
 * object every time (V8 keeps a string's hash in it) instead of a new one per answer.
 */
const endpointKeys = new WeakMap<Endpoint, string>()
function endpointKey (ep: Endpoint): string {
  let k = endpointKeys.get(ep)
  if (k === undefined) { k = `${ep.namespace}/${ep.name}`; endpointKeys.set(ep, k) }
  return k
}

const endpointIndex = new WeakMap<Snapshot, Map<string, Endpoint>>()
/**
 * The previous lookup: a client asks many questions in a row. Comparing the address with the
 * last one costs less than a Map lookup (hashing a new string per TCP query; udp-batch.ts memoises
 * the UDP ones) and fails at the first differing byte.
 * Keyed by the snapshot too, so a new snapshot always looks up again (this keeps the last one
 * referenced until the next query).
 */
let lastSnap: Snapshot | null = null
let lastIp = ''
let lastEp: Endpoint | undefined
function endpointByIp (snap: Snapshot, ip: string): Endpoint | undefined {
  if (snap === lastSnap && ip === lastIp) return lastEp
  let m = endpointIndex.get(snap)
  if (m === undefined) {
    m = new Map(snap.endpoints.map(e => [e.ipv4, e]))
    endpointIndex.set(snap, m)
  }
  const ep = m.get(ip)
  lastSnap = snap
  lastIp = ip
  lastEp = ep
  return ep
}

function whoFields (ep: Endpoint, serverIdentity: number): Record<string, unknown> {
  return { endpoint: `${ep.namespace}/${ep.name}`, endpointId: ep.id, serverIdentity }
}

/** `::ffff:a.b.c.d` (dual-stack sockets) -> `a.b.c.d`. */
export function plainIpv4 (ip: string): string {
  return ip.startsWith('::ffff:') ? ip.slice(7) : ip
}

export class DnsCore {
  readonly log: Logger
  readonly cache: FqdnCache
  readonly sync: LearnSync
  readonly counters = {
    queries: 0,
    queriesUdp: 0,
    queriesTcp: 0,
    allowed: 0,
    refused: 0,
    /** Queries policy would refuse, forwarded because the endpoint audits. */
    audited: 0,
    formerr: 0,
    notimp: 0,
    dropped: 0,
    forwarded: 0,
    answered: 0,
    upstreamTimeouts: 0,
    upstreamErrors: 0,
    /** UDP datagrams the kernel would not take (full socket buffer, pending ICMP error): lost. */
    sendErrors: 0,
    overload: 0,
    spoofedAnswers: 0,
    malformedAnswers: 0,
    held: 0,
    holdTimeouts: 0,
    learnedIps: 0,
    expiredIps: 0,
    evictedIps: 0,
    zombieIps: 0
  }

  /** Forwarded queries in flight, all transports (kept by the transports). */
  inFlight = 0
  // Made once, not per answer.
  private readonly hasConnection = (ip: string): boolean => this.deps.hasConnection(ip)
  private readonly persisted = (): PersistedCache => this.cache.toPersisted(this.opts.now())
  private readonly cur: NameCursor = { name: '', end: 0 }
  /** The per-query line's writer (log-line.ts), or null when the logger needs pino's own path. */
  private readonly lines: LineWriter | null
  private readonly state: StateFile | undefined
  private gcTimer: NodeJS.Timeout | undefined
  private lastSelectors: Snapshot['fqdnSelectors'] | undefined
  private lastPushAt = 0
  /** Names in the last push: while there are any, their lease is renewed. */
  private pushedNames = 0

  constructor (readonly deps: DnsProxyDeps, readonly opts: ResolvedOptions) {
    this.log = deps.logger.child({ component: 'dns-proxy' })
    this.lines = fastLineOk(deps.logger) ? new LineWriter(deps.logger) : null
    this.cache = new FqdnCache({
      minTtlSec: opts.minTtlSec,
      maxTtlSec: opts.maxTtlSec,
      maxIpsPerName: opts.maxIpsPerName,
      maxNamesPerEndpoint: opts.maxNamesPerEndpoint,
      maxZombiesPerEndpoint: opts.maxZombiesPerEndpoint,
      zombieGraceMs: opts.zombieGraceMs
    })
    this.sync = new LearnSync(names => { this.lastPushAt = this.opts.now(); this.pushedNames = names.length; return deps.learn(names) },
      () => this.cache.learned(this.opts.now(), this.opts.zombieGraceMs), this.log, 10_000)
    this.state = opts.stateDir === undefined ? undefined : new StateFile(opts.stateDir, this.log)
  }

  /** Load the persisted cache, expire what is due, push the set; then start the GC timer. */
  async start (): Promise<void> {
    if (this.state !== undefined) {
      const data = await this.state.load()
      if (data !== undefined) {
        const r = this.cache.restore(data)
        this.log.info({ restored: r.restored, skipped: r.skipped }, 'dns: restored the FQDN cache')
        this.applyGc(this.opts.now())
        await this.sync.request()
      }
    }
    this.lastSelectors = this.deps.snapshot().fqdnSelectors
    this.gcTimer = setInterval(() => this.tick(), this.opts.gcIntervalMs)
    this.gcTimer.unref()
  }

  async stop (): Promise<void> {
    clearInterval(this.gcTimer)
    if (this.state !== undefined) await this.state.save(this.cache.toPersisted(this.opts.now()))
  }

  /**
   * Decide one query. Answers it here (FORMERR, NOTIMP, REFUSED/NXDOMAIN, SERVFAIL on
   * overload) and returns null, or returns the Pending the transport must forward.
   */
  admit (buf: Buffer, client: Addr, server: Addr, transport: Transport, reply: (msg: Buffer) => void): Pending | null {
    const c = this.counters
    c.queries++
    if (transport === 'udp') c.queriesUdp++; else c.queriesTcp++
    if (buf.length < HEADER_LEN || isResponse(buf)) {
      // Not a query: nothing sensible to answer, and answering responses invites loops.
      c.dropped++
      this.log.info({ src: `${client.ip}:${client.port}`, server: `${server.ip}:${server.port}`, transport, verdict: 'dropped', reason: 'not-a-query', bytes: buf.length }, 'dns query')
      return null
    }
    const q = buf.length > MAX_QUERY ? -1 : parseQuestion(buf, this.cur)
    if (typeof q === 'number') {
      c.formerr++
      reply(errorReply(buf, 0, RCODE.FORMERR))
      this.log.info({ src: `${client.ip}:${client.port}`, server: `${server.ip}:${server.port}`, transport, verdict: 'malformed', rcode: 'FORMERR', bytes: buf.length }, 'dns query')
      return null
    }
    const snap = this.deps.snapshot()
    const ep = endpointByIp(snap, client.ip)
    if (opcodeOf(buf) !== OPCODE_QUERY) {
      c.notimp++
      reply(errorReply(buf, q.end, RCODE.NOTIMP))
      this.log.info({ ...this.baseFields(client, server, transport, q), endpoint: ep && `${ep.namespace}/${ep.name}`, verdict: 'denied', reason: 'opcode', rcode: 'NOTIMP' }, 'dns query')
      return null
    }
    if (ep === undefined) {
      // Only local endpoints are redirected here; anything else fails closed.
      c.refused++
      reply(errorReply(buf, q.end, this.opts.rejectRcode))
      this.log.info({ ...this.baseFields(client, server, transport, q), verdict: 'denied', reason: 'unknown-endpoint', rcode: rcodes.toString(this.opts.rejectRcode) }, 'dns query')
      return null
    }
    const table = snap.dns.get(l7Key(ep.id, DIR.EGRESS, server.port))
    const remoteIdentity = this.deps.lookupIdentity(server.ip)
    const rule = decideDns(table, remoteIdentity, q.name)
    // The log fields of a refused query are built only here: the allowed path logs on the answer.
    let auditReason = ''
    if (rule === null && ep.audit === true) {
      // audit mode: forwarded as if allowed, reported with the reason policy would refuse it
      c.audited++
      auditReason = table === undefined ? 'no-dns-table' : 'no-rule-matches'
      this.log.warn({ ...this.baseFields(client, server, transport, q), ...whoFields(ep, remoteIdentity), verdict: 'audit', reason: auditReason }, 'dns query')
    } else if (rule === null) {
      c.refused++
      reply(errorReply(buf, q.end, this.opts.rejectRcode))
      const reason = table === undefined ? 'no-dns-table' : 'no-rule-matches'
      this.log.info({ ...this.baseFields(client, server, transport, q), ...whoFields(ep, remoteIdentity), verdict: 'denied', reason, rcode: rcodes.toString(this.opts.rejectRcode) }, 'dns query')
      this.report(client, server, ep.identity, remoteIdentity, q, 'denied', reason, checkedDnsRule(table, remoteIdentity), rcodes.toString(this.opts.rejectRcode))
      return null
    }
    if (this.inFlight >= this.opts.maxPending) {
      c.overload++
      reply(errorReply(buf, q.end, RCODE.SERVFAIL))
      this.log.warn({ ...this.baseFields(client, server, transport, q), ...whoFields(ep, remoteIdentity), verdict: 'overload', rcode: 'SERVFAIL', inFlight: this.inFlight }, 'dns query')
      return null
    }
    if (rule !== null) c.allowed++
    this.report(client, server, ep.identity, remoteIdentity, q, rule === null ? 'audit' : 'allowed', auditReason, rule ?? checkedDnsRule(table, remoteIdentity))
    return new Pending(buf.readUInt16BE(0), buf, q, client, server, transport, ep, table, remoteIdentity, rule, this.opts.now(), reply, auditReason)
  }

  /** The query's decision, for the agent's event ring (`warden observe`). */
  private report (client: Addr, server: Addr, srcIdentity: number, dstIdentity: number, q: Question, verdict: L7Verdict, reason: string, rule: RuleRef | null, rcode?: string): void {
    const sink = this.deps.onDecision
    if (sink === undefined) return
    sink({
      type: 'dns',
      time: Date.now(),
      srcIp: client.ip,
      srcPort: client.port,
      dstIp: server.ip,
      dstPort: server.port,
      srcIdentity,
      dstIdentity,
      verdict,
      reason,
      rule: ruleRef(rule),
      dns: { name: q.name, qtype: qtypes.toString(q.type), rcode }
    })
  }

  private baseFields (client: Addr, server: Addr, transport: Transport, q: Question): Record<string, unknown> {
    return { src: `${client.ip}:${client.port}`, server: `${server.ip}:${server.port}`, transport, name: q.name, qtype: qtypes.toString(q.type) }
  }

  /**
   * An answer that matched `p` (ID, question, source: checked by the transport). Returns false
   * when its records are malformed: nothing is learned or sent, the transport decides whether
   * to keep waiting (UDP: a spoofer may have sent it) or to fail the query (TCP).
   */
  complete (p: Pending, resp: Buffer): boolean {
    // The transport has checked sameQuestion, so the question's rendered name can be reused.
    const recs = walkAnswers(resp, p.q.end, this.cur, p.q.name)
    if (typeof recs === 'number') {
      this.counters.malformedAnswers++
      this.log.warn({ server: `${p.server.ip}:${p.server.port}`, name: p.q.name, error: recs }, 'dns: malformed answer ignored')
      return false
    }
    const now = this.opts.now()
    const rcode = rcodeOf(resp)
    // Follow the CNAME chain from the question; only records on it count (RFC 1034 §3.6.2).
    // Plain loops: this runs once per answer (bench/dns-proxy.ts).
    const chain = [p.q.name]
    let chainTtl = Infinity
    for (let hop = 0; hop < MAX_CHAIN; hop++) {
      const last = chain[chain.length - 1]
      let next: string | undefined
      for (let i = 0; i < recs.length; i++) {
        const r = recs[i]
        if (r.type === TYPE_CNAME && r.owner === last) { next = r.data; chainTtl = Math.min(chainTtl, r.ttl); break }
      }
      if (next === undefined || chain.includes(next)) break
      chain.push(next)
    }
    const ips: { ip: string, ttl: number }[] = []
    const answer: string[] = []
    let minTtl = Infinity
    for (let i = 0; i < recs.length; i++) {
      const r = recs[i]
      if (r.type !== TYPE_A || !chain.includes(r.owner)) continue
      const ttl = Math.min(r.ttl, chainTtl)
      minTtl = Math.min(minTtl, ttl)
      const k = answer.indexOf(r.data)
      if (k < 0) { answer.push(r.data); ips.push({ ip: r.data, ttl }) } else if (ips[k].ttl < ttl) ips[k].ttl = ttl
    }
    let hold = false
    if (rcode === RCODE.NOERROR && ips.length > 0) hold = this.learn(p, chain, ips, now)
    resp.writeUInt16BE(p.clientId, 0)
    this.counters.answered++
    if (!hold) {
      p.reply(resp)
      this.writeAnswerLog(p, rcode, answer, minTtl, chain, now - p.started)
      return true
    }
    const log = this.answerLog(p, rcode, answer, minTtl, chain)
    this.counters.held++
    // The transport's bytes may be valid only during this call (UDP reads into a reused area).
    const held = Buffer.from(resp)
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<boolean>(resolve => { timer = setTimeout(resolve, this.opts.holdMaxMs, false) })
    void Promise.race([this.sync.request().then(() => true), timeout]).then(inKernel => {
      clearTimeout(timer)
      if (!inKernel) this.counters.holdTimeouts++
      p.reply(held)
      log?.write(this.opts.now() - p.started, true, !inKernel)
    })
    return true
  }

  /**
   * The line of an answer released at once (most): written here, without the AnswerLog object
   * a held answer needs to carry its line until release.
   */
  private writeAnswerLog (p: Pending, rcode: number, answer: string[], minTtl: number, chain: string[], ms: number): void {
    const q = this.queryLogger(p)
    if (this.lines !== null) {
      if (q.logger.isLevelEnabled('info')) this.lines.write(LEVEL.info, q.bindings, answerFields(p, rcode, answer, minTtl, chain) + ',"ms":' + String(ms), MSG_DNS_QUERY)
      return
    }
    this.answerLog(p, rcode, answer, minTtl, chain)?.write(ms, false, false)
  }

  /** The answered query's log line, to write once the answer is released; null when info is off. */
  private answerLog (p: Pending, rcode: number, answer: string[], minTtl: number, chain: string[]): AnswerLog | null {
    // Fields constant per (endpoint, server, transport) live in a cached child logger: pino
    // serialises them once, which halves the cost of the per-query line (bench/dns-proxy.ts).
    const q = this.queryLogger(p)
    const qlog = q.logger
    if (!qlog.isLevelEnabled('info')) return null
    const lines = this.lines
    if (lines !== null) return new LineAnswerLog(lines, q.bindings, answerFields(p, rcode, answer, minTtl, chain))
    return new PinoAnswerLog(qlog, {
      src: p.client.ip + ':' + p.client.port, name: p.q.name, qtype: qtypes.toString(p.q.type), verdict: p.rule === null ? 'audit' : 'allowed',
      reason: p.rule === null ? p.auditReason : undefined, rule: ruleName(p.rule), rcode: rcodes.toString(rcode), answer, ttl: minTtl === Infinity ? undefined : minTtl,
      cname: chain.length > 1 ? chain.slice(1) : undefined, ms: 0
    })
  }

  /** An allowed query whose answer never came: no reply (the client retries), one log line. */
  timeout (p: Pending, reason: 'upstream-timeout' | 'upstream-closed' = 'upstream-timeout'): void {
    if (reason === 'upstream-timeout') this.counters.upstreamTimeouts++; else this.counters.upstreamErrors++
    this.queryLogger(p).logger.info({
      src: `${p.client.ip}:${p.client.port}`, name: p.q.name, qtype: qtypes.toString(p.q.type),
      verdict: p.rule === null ? 'audit' : 'allowed', rule: ruleName(p.rule), rcode: reason === 'upstream-closed' ? 'SERVFAIL' : undefined, reason, ms: this.opts.now() - p.started
    }, 'dns query')
  }

  private readonly queryLoggers = new Map<string, Logger>()
  /** The previous answer's logger and what it was for: consecutive queries mostly share it. */
  private lastQlog: QueryLogger | null = null

  /** The child logger carrying endpoint, server, server identity and transport (bounded cache), with its serialised bindings. */
  private queryLogger (p: Pending): QueryLogger {
    const last = this.lastQlog
    if (last !== null && last.endpoint === p.endpoint && last.port === p.server.port && last.ip === p.server.ip &&
      last.identity === p.remoteIdentity && last.transport === p.transport) return last
    const l = this.queryLoggerSlow(p)
    const q = { logger: l, bindings: bindingsOf(l), endpoint: p.endpoint, ip: p.server.ip, port: p.server.port, identity: p.remoteIdentity, transport: p.transport }
    this.lastQlog = q
    return q
  }

  private queryLoggerSlow (p: Pending): Logger {
    const key = p.endpoint.id + '|' + p.endpoint.namespace + '/' + p.endpoint.name + '|' + p.server.ip + ':' + p.server.port + '|' + p.remoteIdentity + '|' + p.transport
    let l = this.queryLoggers.get(key)
    if (l === undefined) {
      if (this.queryLoggers.size >= 4096) this.queryLoggers.clear()
      l = this.log.child({
        endpoint: p.endpoint.namespace + '/' + p.endpoint.name, endpointId: p.endpoint.id,
        server: p.server.ip + ':' + p.server.port, serverIdentity: p.remoteIdentity, transport: p.transport
      })
      this.queryLoggers.set(key, l)
    }
    return l
  }

  /**
   * Put the answer's IPs into the cache for the question name and for every name on the CNAME
   * chain that the endpoint's DNS rules also allow (so a server cannot make an endpoint learn
   * IPs for a name it may not ask about). Returns whether the answer must be held.
   */
  private learn (p: Pending, chain: string[], list: { ip: string, ttl: number }[], now: number): boolean {
    const epKey = endpointKey(p.endpoint)
    const changesBefore = this.cache.changes
    let relevant = false
    let touched = false
    for (let i = 0; i < chain.length; i++) {
      const name = chain[i]
      if (i > 0 && decideDns(p.table, p.remoteIdentity, name) === null) continue
      const r = this.cache.add(epKey, name, list, now, this.hasConnection)
      for (const ev of r.fresh) this.logIp('learned', ev)
      for (const ev of r.evicted) this.logIp('evicted', ev)
      for (const ev of r.zombified) this.logIp('zombie', ev)
      this.counters.learnedIps += r.fresh.length
      this.counters.evictedIps += r.evicted.length
      this.counters.zombieIps += r.zombified.length
      touched = true
      // Most answers only refresh known IPs: the selectors are read only when the set changed.
      if (r.fresh.length + r.evicted.length > 0 && this.deps.snapshot().fqdnSelectors.some(s => s.test(name))) relevant = true
    }
    if (touched) this.state?.schedule(this.persisted, this.cache.changes !== changesBefore ? DEBOUNCE_MS : REFRESH_DEBOUNCE_MS)
    return relevant
  }

  private logIp (what: 'learned' | 'expired' | 'evicted' | 'zombie', ev: IpEvent): void {
    this.log.info({ endpoint: ev.endpoint, name: ev.name, ip: ev.ip, expiresAt: new Date(ev.expiresAt).toISOString() }, `dns: ip ${what}`)
  }

  private applyGc (now: number): { changed: boolean, relevant: boolean } {
    const r = this.cache.gc(now, ip => this.deps.hasConnection(ip))
    for (const ev of r.expired) this.logIp('expired', ev)
    for (const ev of r.zombified) this.logIp('zombie', ev)
    this.counters.expiredIps += r.expired.length
    this.counters.zombieIps += r.zombified.length
    const selectors = this.deps.snapshot().fqdnSelectors
    const touched = [...r.expired, ...r.zombified]
    return { changed: touched.length > 0, relevant: touched.some(ev => selectors.some(s => s.test(ev.name))) }
  }

  /** GC tick: expire, re-push when the kernel's view must change, persist. */
  private tick (): void {
    const now = this.opts.now()
    const { changed, relevant } = this.applyGc(now)
    const selectors = this.deps.snapshot().fqdnSelectors
    const selectorsChanged = selectors !== this.lastSelectors
    this.lastSelectors = selectors
    // Every pushed IP is a lease of zombieGraceMs (cache.learned): renew it at half-time.
    const leaseDue = this.pushedNames > 0 && now - this.lastPushAt > this.opts.zombieGraceMs / 2
    if (relevant || selectorsChanged || leaseDue) void this.sync.request()
    if (changed) this.state?.schedule(() => this.cache.toPersisted(now))
  }

  learned (): LearnedName[] {
    return this.cache.learned(this.opts.now())
  }

  metrics (): Record<string, number> {
    const k = this.cache.counts()
    return {
      ...this.counters,
      inFlight: this.inFlight,
      cachedNames: k.names,
      cachedIps: k.ips,
      zombies: k.zombies,
      evictedNames: this.cache.namesEvicted,
      learnCalls: this.sync.calls,
      learnFailures: this.sync.failures
    }
  }
}
