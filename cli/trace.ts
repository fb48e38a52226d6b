/**
 * `warden trace`: what would happen to one flow, and which rule decided. Uses the same
 * snapshot lookups as the datapath and the proxies (policy-store/src/trace.ts).
 */
import type { Command } from './main.js'
import { UsageError } from './usage.js'
import { IDENTITY_LABEL_OPTIONS, identityLabelOptions } from './identity-labels.js'
import { formatPolicyError, loadSnapshot, traceFlow } from '../policy-store/src/index.js'
import { parseLabelsSpec } from '../policy-store/src/trace.js'
import { icmpType } from '../policy-store/src/validate-icmp.js'

const USAGE = `Usage: warden trace --policies DIR --endpoints FILE --from SRC --to DST --port N
         [--protocol TCP|UDP|SCTP] [--method M] [--path P] [--host H] [--header 'Name: value' ...]
         [--query NAME] [--json] [--identity-labels LIST] [--identity-labels-replace]

SRC and DST: an endpoint (name or namespace/name), an IPv4 address, or
labels:k=v,k2=v2[@namespace] (a pod that is not on this node).
Prints the verdict (allowed or denied), the layer that decided (L3, L4 or L7) and why.
For a port redirected to the DNS proxy, --query NAME checks a DNS question.
HTTP defaults: --method GET --path /, no Host header unless --host.
--protocol ICMP --icmp-type TYPE (a number 0..255 or a name such as EchoRequest; default 8)
traces an ICMP message instead, without --port.
--identity-labels and --identity-labels-replace as for \`warden run\` (give the agent's).`

export const command: Command = {
  summary: 'explain the verdict for one flow (and HTTP request) with the rule that decided',
  usage: USAGE,
  options: {
    ...IDENTITY_LABEL_OPTIONS,
    policies: { type: 'string' },
    endpoints: { type: 'string' },
    from: { type: 'string' },
    to: { type: 'string' },
    port: { type: 'string' },
    protocol: { type: 'string' },
    method: { type: 'string' },
    path: { type: 'string' },
    host: { type: 'string' },
    header: { type: 'string', multiple: true },
    query: { type: 'string' },
    'icmp-type': { type: 'string' },
    json: { type: 'boolean' }
  },
  async run (v) {
    const protocol = ((v.protocol as string | undefined) ?? 'TCP').toUpperCase()
    if (protocol !== 'TCP' && protocol !== 'UDP' && protocol !== 'SCTP' && protocol !== 'ICMP') {
      throw new UsageError(`--protocol must be TCP, UDP, SCTP or ICMP, got "${v.protocol as string}"`)
    }
    const isIcmp = protocol === 'ICMP'
    const need = ['policies', 'endpoints', 'from', 'to', ...(isIcmp ? [] : ['port'])].filter((k) => v[k] === undefined)
    if (need.length > 0) {
      throw new UsageError(`missing ${need.map((k) => '--' + k).join(', ')}`)
    }
    if (!isIcmp && v['icmp-type'] !== undefined) throw new UsageError('--icmp-type needs --protocol ICMP')
    if (isIcmp && v.port !== undefined) throw new UsageError('--port does not apply to ICMP (use --icmp-type)')
    let port = 0
    let icmp = 8
    if (isIcmp) {
      const raw = (v['icmp-type'] as string | undefined) ?? '8'
      const ty = icmpType(/^[0-9]+$/.test(raw) ? Number(raw) : raw)
      if (typeof ty === 'string') throw new UsageError(`--icmp-type: ${ty}`)
      icmp = ty
    } else {
      port = Number(v.port)
      if (!/^[0-9]+$/.test(v.port as string) || port < 1 || port > 65535) {
        throw new UsageError(`--port must be 1..65535, got "${v.port as string}"`)
      }
    }
    const extra = []
    for (const spec of [v.from, v.to] as string[]) {
      if (!spec.startsWith('labels:')) continue
      const labels = parseLabelsSpec(spec)
      if (typeof labels === 'string') throw new UsageError(labels)
      extra.push(labels)
    }
    const { snapshot, errors } = await loadSnapshot({ policies: v.policies as string, endpoints: v.endpoints as string, extraLabelSets: extra, ...identityLabelOptions(v) })
    if (errors.length > 0) {
      // Trace what is valid, but say loudly that some files were left out.
      for (const e of errors) console.error(`warning: ${formatPolicyError(e)} (not applied)`)
    }
    const r = traceFlow(snapshot, {
      from: v.from as string,
      to: v.to as string,
      port,
      protocol,
      icmpType: icmp,
      method: v.method as string | undefined,
      path: v.path as string | undefined,
      host: v.host as string | undefined,
      headers: v.header as string[] | undefined,
      query: v.query as string | undefined
    })
    if (typeof r === 'string') {
      console.error(`warden trace: ${r}`)
      return 2
    }
    if (v.json === true) {
      console.log(JSON.stringify(r))
      return 0
    }
    console.log(`${r.verdict} at ${r.layer}: ${r.reason.text}`)
    console.log(`  from ${r.from.spec} (identity ${r.from.identity}${r.from.endpoint !== null ? ', endpoint ' + r.from.endpoint : ''})` +
      ` to ${r.to.spec} (identity ${r.to.identity}${r.to.endpoint !== null ? ', endpoint ' + r.to.endpoint : ''}) ${isIcmp ? `ICMP type ${icmp}` : `${protocol}/${port}`}`)
    for (const s of r.steps) console.log(`  ${s.at}: ${s.verdict} (${s.layer}${s.kernelVerdict !== undefined ? ', kernel ' + s.kernelVerdict : ''}): ${s.reason.text}`)
    return 0
  }
}
