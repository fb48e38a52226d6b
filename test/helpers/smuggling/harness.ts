/**
 * The differential smuggling harness's moving parts, shared by the datapath test (workload and
 * backend in lab namespaces, `warden run` between them) and the loopback fuzz test (the proxy in
 * the test process):
 * - a raw recording backend: a net server that records every byte of every connection and
 *   answers each request it can find (its own lenient reading) with a fixed, echoing response,
 *   or, when the request carries `X-Respond: <mode>`, with one of the response framings below;
 * - a client driver: writes a case's segments on one connection and returns every byte that
 *   came back;
 * - the oracle (`runCase`): the backend's bytes under every interpretation of parse.ts, the
 *   client's responses, the next client on the pooled upstream connection, and the proxy's life.
 * Backend and driver are small `node -e` programs, so they run inside a namespace as well as on
 * loopback; each is ended by its PID in t.teardown.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { forbiddenIn, parseRequests, parseResponses, header, allowed, type Resp } from './parse.js'
import { normalEcho, normalRequest, type Case, type Forwarded } from './corpus.js'

/** Response framings the backend produces on `X-Respond: <mode>`. */
export const RESPONSE_MODES = ['close', 'http10', 'trailers', 'chunked', '1xx', 'extra', 'early', 'stall'] as const
export type ResponseMode = typeof RESPONSE_MODES[number]

const BACKEND = String.raw`
const net = require('net')
const { createInterface } = require('readline')
const [host, port] = process.argv.slice(1)
let conns = []
let nextId = 1
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const len = (s) => Buffer.byteLength(s, 'latin1')
const fixed = (text) => 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ' + len(text) + '\r\n\r\n' + text
const echo = (q) => 'saw ' + q.method + ' ' + q.target + ' body=' + JSON.stringify(q.body.slice(0, 200))
function line (s, p) {
  const i = s.indexOf('\n', p)
  if (i < 0) return null
  let l = s.slice(p, i)
  if (l.endsWith('\r')) l = l.slice(0, -1)
  return [l, i + 1]
}
// lenient: bare LF, obs-fold, '_' as '-', TE wins when its last coding is chunked, else the first CL
function parseHead (s) {
  let p = 0, r
  do { r = line(s, p); if (r === null) return null; p = r[1] } while (r[0] === '')
  const parts = r[0].trim().split(/[ \t]+/)
  if (parts.length === 2) return { method: parts[0], target: parts[1], bodyAt: p, kind: 'length', length: 0, mode: '' }
  if (parts.length !== 3 || !/^HTTP\/\d\.\d$/i.test(parts[2])) throw new Error('request line')
  const headers = []
  for (;;) {
    r = line(s, p)
    if (r === null) return null
    p = r[1]
    if (r[0] === '') break
    if (/^[ \t]/.test(r[0]) && headers.length > 0) { headers[headers.length - 1][1] += ' ' + r[0].trim(); continue }
    const i = r[0].indexOf(':')
    if (i <= 0) throw new Error('header')
    headers.push([r[0].slice(0, i).trim().toLowerCase().replace(/_/g, '-'), r[0].slice(i + 1).trim()])
  }
  const get = (n) => headers.filter((h) => h[0] === n).map((h) => h[1])
  const codings = get('transfer-encoding').join(',').split(',').map((x) => x.trim().toLowerCase()).filter((x) => x !== '')
  let kind = 'length', length = 0
  if (codings.length > 0 && codings[codings.length - 1] === 'chunked') kind = 'chunked'
  else if (get('content-length').length > 0) { length = parseInt(get('content-length')[0], 10); if (!(length >= 0)) throw new Error('length') }
  return { method: parts[0], target: parts[1], bodyAt: p, kind, length, mode: get('x-respond')[0] || '' }
}
function parseBody (s, h) {
  if (h.kind !== 'chunked') return s.length - h.bodyAt >= h.length ? [s.slice(h.bodyAt, h.bodyAt + h.length), h.bodyAt + h.length] : null
  let p = h.bodyAt, body = ''
  for (;;) {
    let r = line(s, p)
    if (r === null) return null
    const n = parseInt(r[0].trim(), 16)
    if (!(n >= 0)) throw new Error('chunk size')
    p = r[1]
    if (n === 0) {
      for (;;) { r = line(s, p); if (r === null) return null; p = r[1]; if (r[0] === '') return [body, p] }
    }
    if (s.length < p + n + 2) return null
    body += s.slice(p, p + n)
    p += n + 2
  }
}
function respond (c, q) {
  const text = echo(q)
  const w = (s) => c.sock.write(s, 'latin1')
  switch (q.mode) {
    case 'close': c.done = true; c.sock.end('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n' + text, 'latin1'); return
    case 'http10': c.done = true; c.sock.end('HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n' + text, 'latin1'); return
    case 'trailers': w('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n' + len(text).toString(16) + '\r\n' + text + '\r\n0\r\nX-Checksum: abc\r\n\r\n'); return
    case 'chunked': { const a = text.slice(0, 5), b = text.slice(5); w('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n' + len(a).toString(16) + '\r\n' + a + '\r\n' + len(b).toString(16) + '\r\n' + b + '\r\n0\r\n\r\n'); return }
    case '1xx': w('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n' + fixed(text)); return
    case 'extra': w(fixed(text) + fixed('unsolicited-response')); return
    default: w(fixed(text))
  }
}
function feed (c) {
  while (!c.done && c.buf.length > 0) {
    let h, b
    try {
      h = parseHead(c.buf)
      if (h === null) return
      if (h.mode === 'stall') { c.stalled = true; c.sock.pause(); return } // stop reading for good
      if (h.mode === 'early' && !c.early) { c.early = true; respond(c, { method: h.method, target: h.target, body: '', mode: '' }) }
      b = parseBody(c.buf, h)
    } catch (e) {
      c.done = true
      c.sock.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
      return
    }
    if (b === null) return
    c.buf = c.buf.slice(b[1])
    const answered = h.mode === 'early'
    c.early = false
    if (!answered) respond(c, { method: h.method, target: h.target, body: b[0], mode: h.mode })
  }
}
const srv = net.createServer((sock) => {
  const c = { id: nextId++, sock, chunks: [], buf: '', done: false, stalled: false, early: false, closed: false, remotePort: sock.remotePort }
  conns.push(c)
  sock.on('data', (d) => { c.chunks.push(d); if (c.stalled) return; c.buf += d.toString('latin1'); feed(c) })
  sock.on('error', () => {})
  sock.on('close', () => { c.closed = true })
})
srv.listen(+port, host, () => out({ ready: srv.address().port }))
createInterface({ input: process.stdin }).on('line', (l) => {
  const cmd = JSON.parse(l)
  if (cmd.op === 'dump') out({ id: cmd.id, conns: conns.map((c) => ({ id: c.id, bytes: Buffer.concat(c.chunks).toString('base64'), closed: c.closed, stalled: c.stalled, remotePort: c.remotePort })) })
  if (cmd.op === 'reset') { for (const c of conns) c.sock.destroy(); conns = []; out({ id: cmd.id }) }
})
process.stdin.on('end', () => process.exit(0))
`

const DRIVER = String.raw`
const net = require('net')
const { createInterface } = require('readline')
const [host, port, localAddress] = process.argv.slice(1)
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const open = new Map()
function connect () {
  return net.connect({ host, port: +port, ...(localAddress ? { localAddress } : {}) })
}
function session (cmd) {
  const sock = connect()
  const got = []
  const until = cmd.until === '' ? null : Buffer.from(cmd.until, 'base64').toString('latin1')
  let text = ''
  let closed = false, reset = false, writing = true, last = Date.now(), finished = false, error = '', connected = false
  const start = Date.now()
  const finish = () => {
    if (finished) return
    finished = true
    clearInterval(timer)
    out({ id: cmd.id, bytes: Buffer.concat(got).toString('base64'), closed, reset, error, connected, localPort: sock.localPort })
    sock.destroy()
  }
  sock.on('data', (d) => { got.push(d); if (until !== null) text += d.toString('latin1'); last = Date.now() })
  sock.on('end', () => { closed = true })
  sock.on('close', () => { closed = true })
  sock.on('error', (e) => { if (e.code === 'ECONNRESET') reset = true; else if (e.code !== 'EPIPE') error = e.code })
  sock.on('connect', async () => {
    connected = true
    for (const s of cmd.segments) {
      if (closed) break
      sock.write(Buffer.from(s, 'base64'))
      last = Date.now()
      await sleep(cmd.gapMs)
    }
    writing = false
    last = Date.now()
  })
  // Done: when the connection closed; with 'until', once it arrived and then nothing more came
  // for graceMs (extra bytes would be a failure); without, after idleMs without a byte.
  const timer = setInterval(() => {
    const quiet = Date.now() - last
    if (Date.now() - start > cmd.maxMs) finish()
    else if (writing) return
    else if (closed) finish()
    else if (until !== null ? text.includes(until) && quiet > cmd.graceMs : quiet > cmd.idleMs) finish()
  }, 10)
}
// Upload a body of cmd.total bytes after cmd.head; count the bytes the kernel took (write
// callbacks); report when no write completed for cmd.stallMs. The connection stays open until
// {op:'close'} so its queues can be measured.
function upload (cmd) {
  const sock = connect()
  open.set(cmd.id, sock)
  const chunk = Buffer.alloc(cmd.chunk, 0x61)
  let written = 0, queued = 0, progress = Date.now(), done = false, error = ''
  sock.on('error', (e) => { error = e.code })
  const report = () => { if (done) return; done = true; clearInterval(timer); out({ id: cmd.id, written, localPort: sock.localPort, error }) }
  const pump = () => {
    while (queued < cmd.total && !done) {
      const n = Math.min(cmd.chunk, cmd.total - queued)
      queued += n
      const ok = sock.write(n === cmd.chunk ? chunk : chunk.subarray(0, n), (e) => { if (!e) { written += n; progress = Date.now(); if (written >= cmd.total) report() } })
      if (!ok) { sock.once('drain', pump); return }
    }
  }
  const timer = setInterval(() => { if (Date.now() - progress > cmd.stallMs) report() }, 50)
  sock.on('connect', () => { sock.write(Buffer.from(cmd.head, 'base64')); progress = Date.now(); pump() })
}
out({ ready: true })
createInterface({ input: process.stdin }).on('line', (l) => {
  const cmd = JSON.parse(l)
  if (cmd.op === 'session') session(cmd)
  if (cmd.op === 'upload') upload(cmd)
  if (cmd.op === 'close') { open.get(cmd.ref)?.destroy(); open.delete(cmd.ref); out({ id: cmd.id }) }
})
process.stdin.on('end', () => process.exit(0))
`

interface TapLike { teardown: (fn: () => unknown) => void }

/** A JSON line from the helper: an answer to call `id`, the ready line, or the exit notice. */
type Reply = Record<string, unknown> & { id?: number, ready?: unknown, exited?: string }

/** A `node -e` program (in namespace `ns`, or here) spoken to in JSON lines. */
export class Proc {
  private readonly waiters = new Map<number, (o: Reply) => void>()
  private exited: string | null = null
  private nextId = 1
  private ready: Promise<Reply>
  private stderr = ''
  readonly child: ChildProcess

  private constructor (t: TapLike, ns: string | null, script: string, args: string[]) {
    const argv = [process.execPath, '-e', script, ...args]
    this.child = ns === null ? spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] }) : spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['pipe', 'pipe', 'pipe'] })
    const pid = this.child.pid
    t.teardown(async () => {
      if (this.child.exitCode !== null || this.child.signalCode !== null || pid === undefined) return
      const gone = new Promise<void>(resolve => this.child.once('exit', () => resolve()))
      process.kill(pid, 'SIGKILL')
      await gone
    })
    this.child.stderr?.on('data', (d) => { this.stderr += String(d) })
    // A command written as the helper dies fails with EPIPE on its stdin: without a handler that
    // is an uncaught error that ends the whole test file. The exit handler below already fails
    // the waiting calls with the helper's stderr.
    this.child.stdin?.on('error', () => {})
    this.child.once('exit', (code, signal) => {
      this.exited = `helper process exited (${code ?? signal ?? '?'}): ${this.stderr}`
      for (const w of this.waiters.values()) w({ exited: this.exited })
      this.waiters.clear()
    })
    let onReady: (o: Reply) => void = () => {}
    this.ready = new Promise((resolve, reject) => {
      onReady = resolve
      this.child.once('exit', (code) => reject(new Error(`helper process exited ${code}: ${this.stderr}`)))
    })
    createInterface({ input: this.child.stdout! }).on('line', (l) => {
      const o = JSON.parse(l) as Reply
      if (o.ready !== undefined) { onReady(o); return }
      if (o.id === undefined) return
      const w = this.waiters.get(o.id)
      this.waiters.delete(o.id)
      w?.(o)
    })
  }

  static async start (t: TapLike, ns: string | null, script: string, args: string[]): Promise<{ proc: Proc, ready: Reply }> {
    const p = new Proc(t, ns, script, args)
    return { proc: p, ready: await p.ready }
  }

  /** Sends `cmd`; resolves with the helper's answer, whose fields the caller names as T. */
  async call<T> (cmd: Record<string, unknown>, timeoutMs = 120_000): Promise<T> {
    const id = this.nextId++
    if (this.exited !== null) throw new Error(this.exited)
    return await new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`helper process: no answer to ${String(cmd.op)} in ${timeoutMs} ms (${this.stderr})`)), timeoutMs)
      this.waiters.set(id, (o) => { clearTimeout(timer); if (o.exited !== undefined) reject(new Error(o.exited)); else resolve(o as T) })
      this.child.stdin!.write(JSON.stringify({ ...cmd, id }) + '\n')
    })
  }
}

export interface BackendConn { id: number, bytes: string, closed: boolean, stalled: boolean, remotePort: number }

export class RecordingBackend {
  private constructor (readonly proc: Proc, readonly port: number) {}
  /** Listen on host:port (port 0: any) inside `ns` (null: here). */
  static async start (t: TapLike, ns: string | null, host: string, port: number): Promise<RecordingBackend> {
    const { proc, ready } = await Proc.start(t, ns, BACKEND, [host, String(port)])
    return new RecordingBackend(proc, ready.ready as number)
  }

  async dump (): Promise<BackendConn[]> {
    const o = await this.proc.call<{ conns: BackendConn[] }>({ op: 'dump' })
    return o.conns.map(c => ({ ...c, bytes: Buffer.from(c.bytes, 'base64').toString('latin1') }))
  }

  /** Close every connection and forget what was recorded. */
  async reset (): Promise<void> { await this.proc.call({ op: 'reset' }) }
}

export interface ClientResult { bytes: string, closed: boolean, reset: boolean, error: string, localPort: number, connected?: boolean }
export interface SessionOptions {
  gapMs?: number
  /** Without `until`: the session ends after this long without a byte (or when closed). */
  idleMs?: number
  /** The session ends once this text arrived and graceMs passed without more (or when closed). */
  until?: string
  graceMs?: number
  /** Bound on the whole session. */
  maxMs?: number
}

export class ClientDriver {
  private constructor (readonly proc: Proc) {}
  /** Connects to host:port from `ns` (null: here), from localAddress if given. */
  static async start (t: TapLike, ns: string | null, host: string, port: number, localAddress = ''): Promise<ClientDriver> {
    const { proc } = await Proc.start(t, ns, DRIVER, [host, String(port), localAddress])
    return new ClientDriver(proc)
  }

  async session (segments: string[], o: SessionOptions = {}): Promise<ClientResult> {
    const r = await this.proc.call<ClientResult>({ op: 'session', segments: segments.map(s => Buffer.from(s, 'latin1').toString('base64')), gapMs: o.gapMs ?? 10, idleMs: o.idleMs ?? 500, until: Buffer.from(o.until ?? '', 'latin1').toString('base64'), graceMs: o.graceMs ?? 150, maxMs: o.maxMs ?? 5000 })
    return { bytes: Buffer.from(r.bytes, 'base64').toString('latin1'), closed: r.closed, reset: r.reset, error: r.error, localPort: r.localPort, connected: r.connected }
  }

  /** Start an upload; resolves once the writes stalled (or all were taken). Close it with close(ref). */
  async upload (head: string, total: number, stallMs: number): Promise<{ ref: number, written: number, localPort: number, error: string }> {
    const r = await this.proc.call<{ id: number, written: number, localPort: number, error: string }>({ op: 'upload', head: Buffer.from(head, 'latin1').toString('base64'), total, chunk: 65536, stallMs }, 180_000)
    return { ref: r.id, written: r.written, localPort: r.localPort, error: r.error }
  }

  async close (ref: number): Promise<void> { await this.proc.call({ op: 'close', ref }) }
}

/** What a test needs of the system under test. */
export interface Rig {
  backend: RecordingBackend
  client: ClientDriver
  /** null while the proxy lives; else what happened to it (and it has been restarted). */
  checkAlive: () => Promise<string | null>
  /** The upstream connections the proxy keeps idle in its pool. */
  idleUpstreams: () => Promise<number>
}

function describe (r: ClientResult): string {
  const p = parseResponses(r.bytes, r.closed)
  const rs = p.responses.map(x => `${x.status} ${JSON.stringify(x.body.slice(0, 70))}`).join(', ')
  return `${r.connected === false ? '(never connected) ' : ''}${r.error !== '' ? `(error ${r.error}) ` : ''}[${rs}]${p.garbage !== undefined ? ` garbage: ${p.garbage}` : ''}${p.truncated ? ' (a response did not complete)' : ''}${r.closed ? ' closed' : ''}${r.reset ? ' reset' : ''}`
}

const SAW = /^saw (\S+) (\S+) body=/

/** Client-side checks of one connection's responses. */
export function checkResponses (r: ClientResult, what: string): string[] {
  const fails: string[] = []
  const p = parseResponses(r.bytes, r.closed)
  if (p.garbage !== undefined) fails.push(`${what}: corrupted response stream: ${p.garbage}; got ${describe(r)}`)
  if (p.truncated) fails.push(`${what}: a response was cut short or never completed: ${describe(r)}`)
  for (const x of p.responses) {
    const m = SAW.exec(x.body)
    if (m !== null && !allowed({ method: m[1], target: m[2] })) fails.push(`${what}: received the backend's answer to a forbidden ${m[1]} ${m[2]}`)
    if (x.body.includes('unsolicited-response')) fails.push(`${what}: received a response meant for no request of it (${JSON.stringify(x.body)})`)
  }
  return fails
}

/** The one final response a single-request client must get: exactly the echo of its marker. */
export function checkExactly (r: ClientResult, marker: string, what: string, allow1xx = false): string[] {
  const fails = checkResponses(r, what)
  const p = parseResponses(r.bytes, r.closed)
  const finals = p.responses.filter(x => x.status >= 200)
  const interim = p.responses.filter(x => x.status < 200)
  if (finals.length !== 1 || finals[0].status !== 200 || finals[0].body !== normalEcho(marker)) fails.push(`${what}: expected exactly 200 ${JSON.stringify(normalEcho(marker))}, got ${describe(r)}`)
  if (!allow1xx && interim.length > 0) fails.push(`${what}: unexpected interim responses ${interim.map(x => x.status).join(',')}`)
  return fails
}

function matches (q: { method: string, target: string, body: string, headers: Array<[string, string]> }, f: Forwarded): string | null {
  if (q.method !== f.method || q.target !== f.target) return `${q.method} ${q.target} instead of ${f.method} ${f.target}`
  if (q.body !== f.body) return `body ${JSON.stringify(q.body.slice(0, 60))} instead of ${JSON.stringify(f.body.slice(0, 60))}`
  for (const [k, v] of f.headers ?? []) {
    const got = header(q, k.toLowerCase())
    if (got !== v) return `field ${k}: ${got === undefined ? 'missing' : JSON.stringify(got)} instead of ${JSON.stringify(v)}`
  }
  for (const k of f.absent ?? []) if (header(q, k) !== undefined) return `field ${k} was forwarded`
  return null
}

export type Mode = 'once' | 'twice'

/** What `until` waits for: the end of the backend's echo of this body (one chunk even when chunked). */
export function echoed (body: string): string { return `body=${JSON.stringify(body.slice(0, 200))}` }

/** Resolves once the proxy's pool holds no idle upstream connection (15 s at most). */
export async function waitForNoIdleUpstream (rig: Rig): Promise<void> {
  const deadline = Date.now() + 15_000
  for (;;) {
    const n = await rig.idleUpstreams()
    if (Number.isNaN(n)) throw new Error('the proxy does not say how many upstream connections it keeps idle')
    if (n === 0 || Date.now() > deadline) return
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

/**
 * One corpus case, once on a connection or twice followed by a normal request, then a normal
 * request on a fresh connection (the next client on the pooled upstream connection). Returns the
 * failures (empty: the case passed).
 */
export async function runCase (rig: Rig, c: Case, mode: Mode, marker: string, o: SessionOptions = {}): Promise<string[]> {
  const fails: string[] = []
  await rig.backend.reset()
  // Each case starts on fresh upstream connections: wait until the proxy has seen the backend
  // close the pooled ones (a request racing that close is not what a case tests; a POST sent
  // on a pooled connection the backend just closed is not retried, and gets no answer).
  await waitForNoIdleUpstream(rig)
  const segments = mode === 'once' ? c.segments : [...c.segments, ...c.segments, normalRequest(marker)]
  // the session ends on close, on the answer it waits for, or (once, nothing known to wait
  // for) after o.idleMs without a byte
  const last = c.forward?.[c.forward.length - 1]
  const until = mode === 'twice' ? echoed(marker) : last !== undefined ? echoed(last.body) : undefined
  // a refusal closes the connection (which ends the session at once); the longer quiet time
  // only costs where the proxy failed to refuse
  const r = await rig.client.session(segments, { ...o, until, idleMs: c.refuse !== undefined ? 1500 : o.idleMs })
  const caseConns = await rig.backend.dump()
  const next = await rig.client.session([normalRequest(`${marker}-next`)], { ...o, until: echoed(`${marker}-next`) })
  const conns = await rig.backend.dump()
  const dead = await rig.checkAlive()
  if (dead !== null) fails.push(dead)

  for (const conn of conns) {
    for (const f of forbiddenIn(conn.bytes)) fails.push(`backend connection ${conn.id}, read ${f.interp}: forbidden request ${JSON.stringify(f.request)} at byte ${f.at}`)
  }
  fails.push(...checkResponses(r, 'the case\'s client'))
  const p = parseResponses(r.bytes, r.closed)
  const finals = p.responses.filter(x => x.status >= 200)
  if (mode === 'twice') {
    const i = finals.findIndex(x => x.body === normalEcho(marker))
    const refusedAndClosed = r.closed && (finals.some(x => x.status >= 400) || c.closes === true)
    if (i === -1 && !refusedAndClosed) fails.push(`the normal request after the case got no answer of its own, and the proxy did not refuse and close: ${describe(r)}`)
    if (i !== -1 && i !== finals.length - 1) fails.push(`responses out of order: the normal request's answer is not the last one: ${describe(r)}`)
  }
  fails.push(...checkExactly(next, `${marker}-next`, 'the next client (fresh connection)'))

  if (c.refuse !== undefined) {
    if (finals[0]?.status !== c.refuse) fails.push(`expected the proxy to answer ${c.refuse}, the client got ${describe(r)}`)
    const forwarded = caseConns.map(x => x.bytes).join('')
    if (forwarded !== '') fails.push(`the refused request reached the backend: ${JSON.stringify(forwarded.slice(0, 160))}`)
  }
  if (c.forward !== undefined) {
    const want = mode === 'once' || c.closes === true ? c.forward : [...c.forward, ...c.forward, { method: 'POST', target: '/api/v1/charge', body: marker }]
    const got: Array<ReturnType<typeof parseRequests>['requests'][number]> = []
    for (const conn of caseConns) {
      const parsed = parseRequests(conn.bytes, 'strict')
      if (parsed.error !== undefined) fails.push(`backend connection ${conn.id}: a strict RFC 9112 reader fails on what the proxy forwarded: ${parsed.error}`)
      got.push(...parsed.requests)
    }
    if (got.length !== want.length) fails.push(`the backend received ${got.length} requests, expected ${want.length}: ${got.map(q => `${q.method} ${q.target}`).join(', ')} (client: ${describe(r)})`)
    for (let i = 0; i < Math.min(got.length, want.length); i++) {
      const bad = matches(got[i], want[i])
      if (bad !== null) fails.push(`forwarded request ${i + 1}: ${bad}`)
    }
    const oks: Resp[] = finals.filter(x => x.status === 200)
    const echoes = want.map(f => `saw ${f.method} ${f.target} body=${JSON.stringify(f.body.slice(0, 200))}`)
    if (oks.length !== want.length || oks.some((x, i) => x.body !== echoes[i])) fails.push(`the client should get ${want.length} answers in order, got ${describe(r)}`)
  }
  return fails
}
