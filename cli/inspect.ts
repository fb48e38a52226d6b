/**
 * `warden endpoint list`, `warden identity list`, `warden fqdn list`, `warden policy selected
 * ENDPOINT`: what the running agent enforces, from its local API. Tables by default, `--json`
 * for the agent's answer as it is.
 */
import type { Command, OptionValues } from './main.js'
import { API_SOCKET_OPTION, getJson, socketOf } from './api-client.js'
import { apiCommand } from './api-command.js'
import { table } from './table.js'
import { EXIT, UsageError } from './usage.js'

const OPTIONS = { json: { type: 'boolean' as const }, ...API_SOCKET_OPTION }
const COMMON = `Options:
  --json              the agent's answer as JSON
  --api-socket PATH   (default /run/warden/warden.sock)`

type Row = Record<string, unknown>

function print (v: OptionValues, body: unknown, render: () => string): number {
  console.log(v.json === true ? JSON.stringify(body, null, 2) : render())
  return EXIT.OK
}

function sub (p: string[], want: string): void {
  if (p[0] !== want) throw new UsageError(p[0] === undefined ? `missing subcommand (${want})` : `unknown subcommand "${p[0]}" (expected ${want})`)
}

const labels = (l: unknown): string => (l as string[]).join(',')
const ruleAt = (r: unknown): string => {
  if (r === undefined || r === null) return ''
  const x = r as { file: string, line: number, policy: string }
  return `${x.file}:${x.line} (${x.policy})`
}

export const endpoint: Command = {
  summary: 'list the endpoints the agent enforces on (endpoint list)',
  usage: `Usage: warden endpoint list [--json] [--api-socket PATH]\n\nEach endpoint: id, namespace/name, identity, address, interface, attached or pending, audit,\nwhether its ingress and egress are enforced, and its identity labels.\n\n${COMMON}`,
  options: OPTIONS,
  run: apiCommand(async (v, p) => {
    sub(p, 'list')
    const rows = await getJson<Row[]>(socketOf(v), '/v1/endpoints')
    return print(v, rows, () => table(['ID', 'ENDPOINT', 'IDENTITY', 'IPV4', 'INTERFACE', 'STATE', 'AUDIT', 'INGRESS', 'EGRESS', 'LABELS'],
      rows.map((r) => [String(r.id), String(r.endpoint), String(r.identity), String(r.ipv4), String(r.interface), String(r.state), r.audit === true ? 'yes' : 'no', String(r.ingress), String(r.egress), labels(r.labels)])))
  }, 1)
}

export const identity: Command = {
  summary: 'list the identities in the policy (identity list)',
  usage: `Usage: warden identity list [--json] [--api-socket PATH]\n\nEach identity the active policy uses: number, labels, and the local endpoints that carry it.\n\n${COMMON}`,
  options: OPTIONS,
  run: apiCommand(async (v, p) => {
    sub(p, 'list')
    const rows = await getJson<Row[]>(socketOf(v), '/v1/identities')
    return print(v, rows, () => table(['IDENTITY', 'LABELS', 'ENDPOINTS'],
      rows.map((r) => [String(r.identity), labels(r.labels), (r.endpoints as string[]).join(',')])))
  }, 1)
}

export const fqdn: Command = {
  summary: 'list the names and addresses the DNS proxy learned (fqdn list)',
  usage: `Usage: warden fqdn list [--json] [--api-socket PATH]\n\nEach learned (endpoint, name, address): when it expires, and whether it is a zombie (expired, kept\nwhile connections to it live).\n\n${COMMON}`,
  options: OPTIONS,
  run: apiCommand(async (v, p) => {
    sub(p, 'list')
    const rows = await getJson<Row[]>(socketOf(v), '/v1/fqdn')
    return print(v, rows, () => table(['ENDPOINT', 'NAME', 'IPV4', 'EXPIRES', 'ZOMBIE'],
      rows.map((r) => [String(r.endpoint), String(r.name), String(r.ip), String(r.expiresAt), r.zombie === true ? 'yes' : 'no'])))
  }, 1)
}

interface Selected {
  endpoint: string
  identity: number
  audit: boolean
  policyVersion: number
  kernel: Row[]
  l7: Row[]
}

export const policy: Command = {
  summary: 'what the kernel and the proxies enforce for one endpoint (policy selected)',
  usage: `Usage: warden policy selected ENDPOINT [--json] [--api-socket PATH]\n\nENDPOINT is namespace/name (or a name unique on the node). Lists each kernel entry (direction, peer\nidentity, protocol, port, verdict) and each L7 rule on its proxied ports, with the rule that produced\nit: file:line and policy name.\n\n${COMMON}`,
  options: OPTIONS,
  run: apiCommand(async (v, p) => {
    sub(p, 'selected')
    if (p[1] === undefined) throw new UsageError('missing ENDPOINT (namespace/name)')
    const s = await getJson<Selected>(socketOf(v), `/v1/policy/selected?endpoint=${encodeURIComponent(p[1])}`)
    return print(v, s, () => [
      `Endpoint ${s.endpoint}, identity ${s.identity}, policy version ${s.policyVersion}${s.audit ? ', AUDIT MODE' : ''}`,
      '',
      'Kernel (L3/L4):',
      table(['DIRECTION', 'PEER', 'PROTO', 'PORT', 'VERDICT', 'RULE'], s.kernel.map((k) => [
        String(k.direction), k.peerIdentity === 'any' ? 'any' : `${String(k.peerIdentity)} ${labels(k.peerLabels)}`,
        String(k.protocol), String(k.port), String(k.verdict), k.rule !== undefined ? ruleAt(k.rule) : typeof k.reason === 'string' ? k.reason : ''])),
      '',
      'Proxies (L7):',
      s.l7.length === 0 ? '(none)' : table(['KIND', 'DIRECTION', 'PORT', 'PEER', 'MATCH', 'RULE'], s.l7.map((r) => [
        String(r.kind), String(r.direction), String(r.port), r.peerIdentity === 'any' ? 'any' : `${String(r.peerIdentity)} ${labels(r.peerLabels)}`,
        String(r.match), ruleAt(r.rule)]))
    ].join('\n'))
  }, 2)
}
