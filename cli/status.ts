/** `warden status`: the running agent's health in one screen; exit 1 when anything is degraded. */
import type { Command } from './main.js'
import { API_SOCKET_OPTION, getJson, socketOf } from './api-client.js'
import { apiCommand } from './api-command.js'
import { EXIT } from './usage.js'
import type { ClusterStatus } from '../cluster/src/cluster.js'
import { POLICY_LAG_GRACE_MS, type ProxyPolicy } from '../agent/workers/enforced-versions.js'

const USAGE = `Usage: warden status [--json] [--api-socket PATH]

Asks the running agent (its local API) for its state: version and uptime; the policy version compiled,
in the kernel and in the proxies; policy files loaded and rejected; endpoints attached and pending;
identities; kernel map fill; HTTP and DNS proxy summaries; the FQDN cache; audit mode; in a cluster,
the kvstore connection and what the other nodes share.
With --http-workers above 1, each HTTP proxy worker and the policy version it enforces.
Exit 0 when healthy, 1 when degraded (a rejected file, an endpoint not attached, a proxy worker down
or enforcing an older policy than the compiled one for more than ${POLICY_LAG_GRACE_MS / 1000} s, the kvstore unreachable) or
when no agent answers.

Options:
  --json              the agent's answer as JSON
  --api-socket PATH   (default /run/warden/warden.sock)`

interface Status {
  version: string
  pid: number
  uptimeSeconds: number
  healthy: boolean
  degraded: string[]
  policy: { compiled: number, kernel: number, httpProxy: number, dnsProxy: number }
  audit: string
  auditEndpoints: string[]
  files: { loaded: string[], rejected: string[] }
  endpoints: { total: number, attached: number, pending: Array<{ endpoint: string, interface: string, why: string }> }
  identities: number
  maps: Record<string, { entries: number, max: number }>
  http: { proxies: { total: number, running: number }, workers: ProxyPolicy[], connectionsActive: number, requests: number, allowed: number, denied: number, audited: number, rejected: number, upstreamErrors: number }
  dns: { queries: number, allowed: number, refused: number, audited: number, errors: number }
  kernel: { dropped: number, audited: number }
  fqdn: { names: number, ips: number, zombies: number }
  events: { buffered: number, capacity: number, seen: number, followers: number }
  /** Cluster mode only. */
  cluster?: ClusterStatus
}

export function renderStatus (s: Status): string {
  const out: string[] = []
  out.push(`Agent:        warden ${s.version}, pid ${s.pid}, up ${s.uptimeSeconds} s`)
  out.push(`Health:       ${s.healthy ? 'ok' : 'DEGRADED'}`)
  for (const d of s.degraded) out.push(`  - ${d}`)
  const several = s.http.proxies.total > 1
  out.push(`Policy:       version ${s.policy.compiled} compiled, ${s.policy.kernel} in the kernel, ${s.policy.httpProxy} in the HTTP ${several ? 'proxies (the oldest)' : 'proxy'}, ${s.policy.dnsProxy} in the DNS proxy`)
  out.push(`Audit mode:   ${s.audit === 'node' ? 'on for the whole node' : s.audit === 'endpoints' ? `on for ${s.auditEndpoints.join(', ')}` : 'off'}`)
  out.push(`Files:        ${s.files.loaded.length} loaded, ${s.files.rejected.length} rejected`)
  for (const r of s.files.rejected) out.push(`  ${r}`)
  out.push(`Endpoints:    ${s.endpoints.attached}/${s.endpoints.total} attached`)
  for (const p of s.endpoints.pending) out.push(`  ${p.endpoint} pending: ${p.why} (${p.interface})`)
  out.push(`Identities:   ${s.identities}`)
  out.push(`Kernel maps:  ${Object.entries(s.maps).map(([k, v]) => `${k.replace(/^l7p_/, '')} ${v.entries}/${v.max}`).join(', ')}`)
  out.push(`Kernel:       ${s.kernel.dropped} dropped, ${s.kernel.audited} audited (new flows policy would drop)`)
  out.push(`HTTP proxy:   ${s.http.proxies.running}/${s.http.proxies.total} running, ${s.http.connectionsActive} connections, ${s.http.requests} requests: ${s.http.allowed} allowed, ${s.http.denied} denied, ${s.http.audited} audited, ${s.http.rejected} rejected, ${s.http.upstreamErrors} upstream errors`)
  // (`?? []`: an agent older than this CLI sends no workers)
  if (several) for (const w of s.http.workers ?? []) out.push(`  ${workerLine(w, s.policy.compiled)}`)
  out.push(`DNS proxy:    ${s.dns.queries} queries: ${s.dns.allowed} allowed, ${s.dns.refused} refused, ${s.dns.audited} audited, ${s.dns.errors} errors`)
  out.push(`FQDN cache:   ${s.fqdn.names} names, ${s.fqdn.ips} addresses, ${s.fqdn.zombies} zombies`)
  out.push(`Events:       ${s.events.buffered}/${s.events.capacity} buffered, ${s.events.seen} seen, ${s.events.followers} following`)
  const c = s.cluster
  if (c !== undefined) {
    const conn = c.state === 'connected' ? 'connected' : `${c.state.toUpperCase()}${c.state === 'down' ? ` for ${c.downSeconds} s` : ''}${c.lastError !== null ? `: ${c.lastError.message}` : ''}`
    out.push(`Cluster:      node ${c.node} in ${c.cluster}, kvstore ${c.kvstore.join(',')} ${conn} (${c.outages} outages)`)
    out.push(`              ${c.identities} identities, ${c.remoteEndpoints} remote endpoints, ${c.remoteNodes} other nodes${c.remoteEntriesDropped > 0 ? `, ${c.remoteEntriesDropped} entries dropped at the limit` : ''}`)
  }
  return out.join('\n')
}

/** `worker 1: running, policy version 7` (the compiled one), or what is wrong with it. */
function workerLine (w: ProxyPolicy, compiled: number): string {
  const name = `worker ${w.worker}${w.worker === 0 ? ' (main thread)' : ''}`
  const version = w.policyVersion === null ? 'no policy version yet' : `policy version ${w.policyVersion}`
  if (!w.running) return `${name}: NOT RUNNING (last ${version}; the agent's log says why)`
  if (w.lagging) return `${name}: running, ${version}, BEHIND ${compiled} compiled for ${w.behindSeconds} s`
  return `${name}: running, ${version}${w.policyVersion !== null && w.policyVersion < compiled ? ` (${compiled} compiled, on its way)` : ''}`
}

export const command: Command = {
  summary: 'the running agent\'s health (exit 1 when degraded)',
  usage: USAGE,
  options: { json: { type: 'boolean' }, ...API_SOCKET_OPTION },
  run: apiCommand(async (v) => {
    const s = await getJson<Status>(socketOf(v), '/v1/status')
    console.log(v.json === true ? JSON.stringify(s, null, 2) : renderStatus(s))
    return s.healthy ? EXIT.OK : EXIT.FAILED
  })
}
