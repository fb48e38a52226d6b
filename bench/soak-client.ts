/**
 * One load stream of the soak (bench/soak.ts), run inside a workload's namespace: it sends at a
 * steady rate for a fixed time, judges every answer against what the policy says it must be,
 * and prints one JSON summary line when done.
 *
 *   node dist/bench/soak-client.js '<Stream as JSON>'
 *
 * Kinds: `http` (a method and path over keep-alive connections, the expected status),
 * `dns` (an A query to a server, an answer or the expected rcode), `https` (resolve the name
 * through the server, then GET it: toFQDNs at work), `tcp-drop` (a connect that policy drops).
 */
import { connect } from 'node:net'
import { Resolver } from 'node:dns/promises'
import { request as httpsRequest } from 'node:https'
import { readFileSync } from 'node:fs'
import { Pool } from 'undici'

export type Stream =
  | { kind: 'http', name: string, rate: number, seconds: number, origin: string, method: string, path: string, expect: number, connections: number }
  | { kind: 'dns', name: string, rate: number, seconds: number, server: string, query: string, expect: 'answer' | 'ESERVFAIL' | 'EREFUSED' | 'ENOTFOUND' }
  | { kind: 'https', name: string, rate: number, seconds: number, server: string, host: string, ca: string, expect: number }
  | { kind: 'tcp-drop', name: string, rate: number, seconds: number, ip: string, port: number, timeoutMs: number }

export interface StreamResult {
  name: string
  sent: number
  /** Answered as policy says. */
  right: number
  /** Answered otherwise (a wrong status, an error, a connect that should have been dropped). */
  wrong: number
  /** Up to ten of the wrong answers, as text. */
  samples: string[]
  /** Requests still unanswered at the end (not counted as right or wrong). */
  pending: number
}

function judge (res: StreamResult, ok: boolean, what: string): void {
  if (ok) { res.right++; return }
  res.wrong++
  if (res.samples.length < 10) res.samples.push(what)
}

async function once (s: Stream, pool: Pool | null, resolver: Resolver | null): Promise<[boolean, string]> {
  switch (s.kind) {
    case 'http': {
      try {
        const r = await (pool as Pool).request({ method: s.method as 'GET', path: s.path, headersTimeout: 5000, bodyTimeout: 5000 })
        await r.body.dump()
        return [r.statusCode === s.expect, `status ${r.statusCode}`]
      } catch (err) {
        return [false, (err as Error).message]
      }
    }
    case 'dns': {
      try {
        const a = await (resolver as Resolver).resolve4(s.query)
        return [s.expect === 'answer' && a.length > 0, `answer ${a.join(',')}`]
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? 'error'
        return [code === s.expect, code]
      }
    }
    case 'https': {
      let ip: string
      try {
        ip = (await (resolver as Resolver).resolve4(s.host))[0]
      } catch (err) {
        return [false, `resolve: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`]
      }
      return await new Promise((resolve) => {
        const req = httpsRequest({ host: ip, servername: s.host, port: 443, path: '/', headers: { host: s.host }, ca: readCa(s.ca), timeout: 5000, agent: false }, (res) => {
          res.resume()
          res.on('end', () => resolve([res.statusCode === s.expect, `status ${String(res.statusCode)}`]))
        })
        req.on('timeout', () => { req.destroy(new Error('timeout')) })
        req.on('error', (err) => resolve([false, `${err.message} (${ip})`]))
        req.end()
      })
    }
    case 'tcp-drop': {
      return await new Promise((resolve) => {
        const sock = connect({ host: s.ip, port: s.port })
        const timer = setTimeout(() => { sock.destroy(); resolve([true, 'dropped']) }, s.timeoutMs)
        sock.once('connect', () => { clearTimeout(timer); sock.destroy(); resolve([false, 'connected']) })
        sock.once('error', (err) => { clearTimeout(timer); resolve([false, err.message]) })
      })
    }
  }
}

let caCache: { path: string, pem: Buffer } | null = null
function readCa (path: string): Buffer {
  if (caCache?.path !== path) caCache = { path, pem: readFileSync(path) }
  return caCache.pem
}

export async function runStream (s: Stream): Promise<StreamResult> {
  const res: StreamResult = { name: s.name, sent: 0, right: 0, wrong: 0, samples: [], pending: 0 }
  const pool = s.kind === 'http' ? new Pool(s.origin, { connections: s.connections, pipelining: 1, keepAliveTimeout: 30_000 }) : null
  let resolver: Resolver | null = null
  if (s.kind === 'dns' || s.kind === 'https') {
    resolver = new Resolver({ timeout: 3000, tries: 1 })
    resolver.setServers([s.server])
  }
  const inFlight = new Set<Promise<void>>()
  const end = Date.now() + s.seconds * 1000
  const tickMs = 20
  const perTick = s.rate * tickMs / 1000
  let credit = 0
  while (Date.now() < end) {
    credit += perTick
    while (credit >= 1) {
      credit--
      res.sent++
      const p = once(s, pool, resolver).then(([ok, what]) => { judge(res, ok, what) }, (err: Error) => { judge(res, false, err.message) })
      inFlight.add(p)
      void p.finally(() => inFlight.delete(p))
    }
    await new Promise((resolve) => setTimeout(resolve, tickMs))
  }
  const drain = Promise.all(inFlight)
  await Promise.race([drain, new Promise((resolve) => setTimeout(resolve, 10_000))])
  res.pending = inFlight.size
  await pool?.close()
  return res
}

if (process.argv[1]?.endsWith('soak-client.js') === true) {
  const stream = JSON.parse(process.argv[2] ?? '{}') as Stream
  runStream(stream).then((r) => { console.log(JSON.stringify(r)) }, (err: Error) => {
    console.error(err.stack)
    process.exitCode = 1
  })
}
