/** Lab specs from the endpoints file (docs/configuration.md) and an optional hosts file. */
import { readFileSync } from 'node:fs'
import { parse } from 'yaml'
import { LabError, type LabHost, type LabSpec } from './lab.js'

interface RawEndpoint { name?: unknown, namespace?: unknown, ipv4?: unknown, interface?: unknown }
interface RawHost { name?: unknown, ipv4?: unknown, interface?: unknown, hostnames?: unknown }

function str (v: unknown, what: string, file: string): string {
  if (typeof v !== 'string' || v === '') throw new LabError(`${file}: ${what} must be a non-empty string`)
  return v
}

/**
 * Every endpoint becomes a lab host named after it (`<namespace>-<name>` when two
 * namespaces share a name), with `name.namespace` and `name.namespace.svc.cluster.local`
 * as extra hostnames. `hostsFile` adds non-endpoint hosts: `hosts: [{name, ipv4,
 * interface, hostnames}]` (the demo's "internet").
 */
export function labSpecFromFiles (endpointsFile: string, opts: { hostsFile?: string, prefix?: string, dns?: string } = {}): LabSpec {
  const doc = parse(readFileSync(endpointsFile, 'utf8')) as { endpoints?: RawEndpoint[] } | null
  const raw = doc?.endpoints ?? []
  if (!Array.isArray(raw)) throw new LabError(`${endpointsFile}: endpoints must be a list`)
  const count = new Map<string, number>()
  for (const e of raw) count.set(String(e.name), (count.get(String(e.name)) ?? 0) + 1)
  const hosts: LabHost[] = raw.map((e, i) => {
    const name = str(e.name, `endpoints[${i}].name`, endpointsFile)
    const ns = e.namespace === undefined ? 'default' : str(e.namespace, `endpoints[${i}].namespace`, endpointsFile)
    return {
      name: (count.get(name) ?? 0) > 1 ? `${ns}-${name}` : name,
      ipv4: str(e.ipv4, `endpoints[${i}].ipv4`, endpointsFile),
      hostIf: str(e.interface, `endpoints[${i}].interface`, endpointsFile),
      hostnames: [`${name}.${ns}`, `${name}.${ns}.svc.cluster.local`]
    }
  })
  if (opts.hostsFile !== undefined) {
    const hdoc = parse(readFileSync(opts.hostsFile, 'utf8')) as { hosts?: RawHost[] } | null
    for (const [i, h] of (hdoc?.hosts ?? []).entries()) {
      const names = Array.isArray(h.hostnames) ? h.hostnames.map((n, j) => str(n, `hosts[${i}].hostnames[${j}]`, opts.hostsFile ?? '')) : []
      hosts.push({
        name: str(h.name, `hosts[${i}].name`, opts.hostsFile),
        ipv4: str(h.ipv4, `hosts[${i}].ipv4`, opts.hostsFile),
        hostIf: str(h.interface, `hosts[${i}].interface`, opts.hostsFile),
        hostnames: names
      })
    }
  }
  return { prefix: opts.prefix, hosts, dns: opts.dns }
}
