/**
 * `warden observe`: kernel flow events, HTTP decisions and DNS decisions from the running agent,
 * one line each: time, type, source -> destination (endpoint or address, identity), verdict,
 * reason and the rule that decided. The agent filters (agent/observe/filter.ts).
 */
import type { Command } from './main.js'
import { API_SOCKET_OPTION, socketOf, streamLines } from './api-client.js'
import { apiCommand } from './api-command.js'
import { EXIT, UsageError } from './usage.js'

const USAGE = `Usage: warden observe [--follow] [--last N] [--from SEL] [--to SEL] [--verdict V] [--type T]
                      [--port N] [--json] [--api-socket PATH]

Prints recent events from the agent's buffer (all of it, or the last N), then with --follow every new one
until interrupted. Events: kernel flow events (type l3l4: each new flow allowed, redirected to a proxy,
dropped, or audited), HTTP requests and DNS queries decided by the proxies (type http, dns).

Options:
  --follow            keep streaming new events
  --last N            the last N matching events first (default: all buffered; with --follow: 0)
  --from SEL          source: namespace/name, namespace/, a name, an IPv4 address, an identity number,
                      or a label key=value
  --to SEL            destination, as --from
  --verdict V         allowed, dropped, denied, audit, rejected, redirected-http, redirected-dns
  --type T            l3l4, http or dns
  --port N            source or destination port
  --json              one JSON object a line
  --api-socket PATH   (default /run/warden/warden.sock)`

interface Peer { ip: string, port: number, identity: number, endpoint?: string, labels: string[] }
interface Event {
  time: string
  type: string
  source: Peer
  destination: Peer
  protocol: string
  verdict: string
  reason: string
  direction?: string
  rule?: { file: string, line: number, policy: string }
  ruleNote?: string
  http?: { method: string, path: string, host: string, status: number }
  dns?: { name: string, qtype: string, rcode?: string }
}

function who (p: Peer): string {
  const at = p.port === 0 ? p.ip : `${p.ip}:${p.port}`
  return p.endpoint === undefined ? `${at} (${p.identity})` : `${p.endpoint} ${at} (${p.identity})`
}

export function renderEvent (e: Event): string {
  let what: string
  if (e.http !== undefined) what = ` ${e.http.method} ${e.http.host}${e.http.path}${e.http.status !== 0 ? ' -> ' + String(e.http.status) : ''}`
  else if (e.dns !== undefined) what = ` ${e.dns.qtype} ${e.dns.name}${e.dns.rcode !== undefined ? ' -> ' + e.dns.rcode : ''}`
  else what = ` ${e.protocol}`
  const why = e.reason === '' ? '' : ` reason=${e.reason}`
  const rule = e.rule !== undefined ? ` rule=${e.rule.file}:${e.rule.line} policy=${e.rule.policy}` : e.ruleNote !== undefined ? ` (${e.ruleNote})` : ''
  const dir = e.direction !== undefined ? ` ${e.direction}` : ''
  return `${e.time} ${e.type.padEnd(4)} ${who(e.source)} -> ${who(e.destination)}${what} ${e.verdict.toUpperCase()}${dir}${why}${rule}`
}

export const command: Command = {
  summary: 'kernel flows, HTTP and DNS decisions from the running agent',
  usage: USAGE,
  options: {
    follow: { type: 'boolean' },
    last: { type: 'string' },
    from: { type: 'string' },
    to: { type: 'string' },
    verdict: { type: 'string' },
    type: { type: 'string' },
    port: { type: 'string' },
    json: { type: 'boolean' },
    ...API_SOCKET_OPTION
  },
  run: apiCommand(async (v) => {
    const q = new URLSearchParams()
    if (v.last !== undefined) {
      if (!/^\d{1,7}$/.test(String(v.last))) throw new UsageError(`--last must be a whole number, got "${String(v.last)}"`)
      q.set('last', String(v.last))
    }
    if (v.type !== undefined && !['l3l4', 'http', 'dns'].includes(String(v.type))) throw new UsageError(`--type must be l3l4, http or dns, got "${String(v.type)}"`)
    if (v.port !== undefined && !(/^\d{1,5}$/.test(String(v.port)) && Number(v.port) <= 65535)) throw new UsageError(`--port must be a number from 0 to 65535, got "${String(v.port)}"`)
    for (const k of ['from', 'to', 'verdict', 'type', 'port']) if (v[k] !== undefined) q.set(k, String(v[k]))
    if (v.follow === true) q.set('follow', '1')
    const json = v.json === true
    await streamLines(socketOf(v), `/v1/events?${q.toString()}`, (e) => {
      console.log(json ? JSON.stringify(e) : renderEvent(e as Event))
    })
    return EXIT.OK
  })
}
