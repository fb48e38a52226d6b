/**
 * The endpoints file: the workloads on this node as the CNI plugin knows them. `EndpointSource`
 * is the seam for another backend later (the Kubernetes API, a CNI state dir).
 */
import { dirname } from 'node:path'
import { parseIPv4 } from './cidr.js'
import { ERR, type PolicyError } from './errors.js'
import type { ContainerPort } from './types.js'
import { fileStamp, parseYamlString, readTextFile, type ParsedFile, type PathSeg, type Reporter } from './source-file.js'
import { watchPaths } from './watch.js'

export interface RawEndpoint {
  name: string
  namespace: string
  labels: Record<string, string>
  ipv4: string
  interface: string
  /** Named container ports (unnamed ones play no part in policy and need not be listed); absent = none. */
  ports?: readonly ContainerPort[]
  /** Policy audit mode for this workload (absent: enforce). */
  audit?: boolean
  /** Line in the endpoints file. */
  line: number
}

export interface EndpointSource {
  /** Human-readable origin for logs (the file path). */
  readonly description: string
  /** The whole current list, or errors (then nothing of this version may be used). */
  load (): Promise<{ endpoints: RawEndpoint[] | null, errors: PolicyError[] }>
  /** Call `onChange` whenever the source may have changed. Returns a stop function. */
  watch (onChange: () => void): () => void
}

const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/
const LABEL_KEY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/
const IFNAME = /^[A-Za-z0-9_.@-]{1,15}$/
/** Kubernetes' IsValidPortName (IANA_SVC_NAME, RFC 6335). */
const PORT_NAME = /^(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$/

export class FileEndpointSource implements EndpointSource {
  /** The last result, by (size, mtime, inode) and by content: an unchanged file is not re-parsed. */
  private cache: { stamp: string, text: string, result: { endpoints: RawEndpoint[] | null, errors: PolicyError[] } } | null = null
  constructor (readonly file: string) {}
  get description (): string { return this.file }

  /** Unchanged file: the SAME result object (and endpoints array), so the store can skip it. */
  async load (): Promise<{ endpoints: RawEndpoint[] | null, errors: PolicyError[] }> {
    const stamp = await fileStamp(this.file)
    const cached = this.cache
    if (cached !== null && stamp !== '' && cached.stamp === stamp) return cached.result
    const read = await readTextFile(this.file)
    if ('errors' in read) {
      this.cache = null
      return { endpoints: null, errors: read.errors }
    }
    if (cached !== null && cached.text === read.text) {
      cached.stamp = stamp
      return cached.result
    }
    // The fast YAML path first; on any error, the `yaml` package's positions for the messages.
    const fast = parseYamlString(read.text, this.file, 0, false, true)
    let result = 'errors' in fast ? { endpoints: null, errors: fast.errors } : this.parse(fast)
    if (result.errors.length > 0 && !('errors' in fast) && fast.fast === true) {
      const slow = parseYamlString(read.text, this.file)
      result = 'errors' in slow ? { endpoints: null, errors: slow.errors } : this.parse(slow)
    }
    this.cache = { stamp, text: read.text, result }
    return result
  }

  private parse (parsed: ParsedFile): { endpoints: RawEndpoint[] | null, errors: PolicyError[] } {
    if (parsed.docs.length > 1) {
      parsed.docs[1].reporter.add(ERR.VALUE, [], 'the endpoints file holds one YAML document')
      return { endpoints: null, errors: parsed.reporter.errors }
    }
    const { value, reporter } = parsed.docs[0]
    const endpoints = validateEndpoints(value, reporter)
    return reporter.errors.length > 0 ? { endpoints: null, errors: reporter.errors } : { endpoints, errors: [] }
  }

  watch (onChange: () => void): () => void {
    // Watch the directory, not the file: editors replace files by renaming over them.
    return watchPaths([dirname(this.file)], false, (name) => name === null || this.file.endsWith(name), onChange)
  }
}

function typeName (v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'list' : typeof v === 'object' ? 'map' : typeof v
}

export function validateEndpoints (v: unknown, r: Reporter): RawEndpoint[] {
  const out: RawEndpoint[] = []
  if (v === null || typeof v !== 'object' || Array.isArray(v)) { r.add(ERR.TYPE, [], `must be a map with an \`endpoints\` list, got ${typeName(v)}`); return out }
  const top = v as Record<string, unknown>
  for (const k of Object.keys(top)) if (k !== 'endpoints') r.add(ERR.UNKNOWN_FIELD, [k], `unknown field "${k}" (expected: endpoints)`, true)
  if (top.endpoints === undefined) { r.add(ERR.REQUIRED, [], 'endpoints is required'); return out }
  if (top.endpoints === null) return out
  if (!Array.isArray(top.endpoints)) { r.add(ERR.TYPE, ['endpoints'], `must be a list, got ${typeName(top.endpoints)}`); return out }
  const byName = new Map<string, number>()
  const byIp = new Map<string, number>()
  const byIf = new Map<string, number>()
  top.endpoints.forEach((e, i) => {
    const p: PathSeg[] = ['endpoints', i]
    if (e === null || typeof e !== 'object' || Array.isArray(e)) { r.add(ERR.TYPE, p, `must be a map, got ${typeName(e)}`); return }
    const o = e as Record<string, unknown>
    const before = r.errors.length
    for (const k of Object.keys(o)) {
      if (!['name', 'namespace', 'labels', 'ipv4', 'interface', 'ports', 'audit'].includes(k)) r.add(ERR.UNKNOWN_FIELD, [...p, k], `unknown field "${k}" (expected one of: name, namespace, labels, ipv4, interface, ports, audit)`, true)
    }
    const str = (k: string, required: boolean): string | null => {
      if (o[k] === undefined) { if (required) r.add(ERR.REQUIRED, p, `${k} is required`); return null }
      if (typeof o[k] !== 'string') { r.add(ERR.TYPE, [...p, k], `must be a string, got ${typeName(o[k])}`); return null }
      return o[k]
    }
    const name = str('name', true)
    if (name !== null && (name.length > 253 || !DNS1123_SUBDOMAIN.test(name))) r.add(ERR.VALUE, [...p, 'name'], `"${name}" is not a valid name (lower-case DNS-1123 subdomain)`)
    const namespace = str('namespace', false) ?? 'default'
    if (!DNS1123_LABEL.test(namespace)) r.add(ERR.VALUE, [...p, 'namespace'], `"${namespace}" is not a valid namespace (DNS-1123 label)`)
    const ipv4 = str('ipv4', true)
    if (ipv4 !== null && parseIPv4(ipv4) === null) r.add(ERR.ENDPOINT_IP, [...p, 'ipv4'], `"${ipv4}" is not an IPv4 address`)
    const ifname = str('interface', true)
    if (ifname !== null && !IFNAME.test(ifname)) r.add(ERR.VALUE, [...p, 'interface'], `"${ifname}" is not a valid interface name (1-15 characters)`)
    // strict: `audit: "yes"` or `audit: 1` is an error, never a silent enforce or audit
    if (o.audit !== undefined && typeof o.audit !== 'boolean') r.add(ERR.TYPE, [...p, 'audit'], `must be true or false, got ${typeName(o.audit)}`)
    const audit = o.audit === true
    const labels: Record<string, string> = {}
    if (o.labels !== undefined && o.labels !== null) {
      if (typeof o.labels !== 'object' || Array.isArray(o.labels)) r.add(ERR.TYPE, [...p, 'labels'], `must be a map, got ${typeName(o.labels)}`)
      else {
        for (const [k, lv] of Object.entries(o.labels as Record<string, unknown>)) {
          if (k.length > 317 || !LABEL_KEY.test(k)) r.add(ERR.VALUE, [...p, 'labels', k], `"${k}" is not a valid label key`, true)
          else if (typeof lv !== 'string') r.add(ERR.TYPE, [...p, 'labels', k], `must be a string, got ${typeName(lv)} (quote it)`)
          else if (lv.length > 63 || !LABEL_VALUE.test(lv)) r.add(ERR.VALUE, [...p, 'labels', k], `"${lv}" is not a valid label value`)
          else labels[k] = lv
        }
      }
    }
    const ports = o.ports === undefined || o.ports === null ? [] : validatePorts(o.ports, [...p, 'ports'], r)
    if (r.errors.length > before || name === null || ipv4 === null || ifname === null) return
    const line = r.lineOf(p)
    const key = `${namespace}/${name}`
    const dupName = byName.get(key)
    if (dupName !== undefined) { r.add(ERR.ENDPOINT_DUPLICATE, [...p, 'name'], `duplicate endpoint ${key} (first declared on line ${dupName})`); return }
    const dupIp = byIp.get(ipv4)
    if (dupIp !== undefined) { r.add(ERR.ENDPOINT_DUPLICATE, [...p, 'ipv4'], `duplicate ipv4 ${ipv4} (already used on line ${dupIp})`); return }
    const dupIf = byIf.get(ifname)
    if (dupIf !== undefined) { r.add(ERR.ENDPOINT_DUPLICATE, [...p, 'interface'], `duplicate interface ${ifname} (already used on line ${dupIf})`); return }
    byName.set(key, line)
    byIp.set(ipv4, line)
    byIf.set(ifname, line)
    out.push({ name, namespace, labels, ipv4, interface: ifname, ports, ...(audit ? { audit } : {}), line })
  })
  return out
}

/** `ports: [{name, port, protocol}]`, as a pod spec's container ports (protocol TCP by default). */
function validatePorts (v: unknown, p: PathSeg[], r: Reporter): ContainerPort[] {
  const out: ContainerPort[] = []
  if (!Array.isArray(v)) { r.add(ERR.TYPE, p, `must be a list, got ${typeName(v)}`); return out }
  const seen = new Map<string, number>()
  v.forEach((x, j) => {
    const pp: PathSeg[] = [...p, j]
    if (x === null || typeof x !== 'object' || Array.isArray(x)) { r.add(ERR.TYPE, pp, `must be a map, got ${typeName(x)}`); return }
    const o = x as Record<string, unknown>
    for (const k of Object.keys(o)) if (!['name', 'port', 'protocol'].includes(k)) r.add(ERR.UNKNOWN_FIELD, [...pp, k], `unknown field "${k}" (expected one of: name, port, protocol)`, true)
    if (typeof o.name !== 'string') { r.add(o.name === undefined ? ERR.REQUIRED : ERR.TYPE, [...pp, 'name'], 'name is required (a string)'); return }
    if (o.name.length > 15 || !PORT_NAME.test(o.name)) { r.add(ERR.VALUE, [...pp, 'name'], `"${o.name}" is not a valid port name (IANA_SVC_NAME: lower-case letters, digits, inner hyphens, at most 15)`); return }
    if (typeof o.port !== 'number' || !Number.isInteger(o.port) || o.port < 1 || o.port > 65535) { r.add(ERR.VALUE, [...pp, 'port'], 'port must be a number 1..65535'); return }
    const protocol = o.protocol === undefined ? 'TCP' : o.protocol
    if (protocol !== 'TCP' && protocol !== 'UDP' && protocol !== 'SCTP') { r.add(ERR.VALUE, [...pp, 'protocol'], `protocol must be TCP, UDP or SCTP, got ${JSON.stringify(protocol)}`); return }
    // Kubernetes: a name is unique among a pod's ports.
    const dup = seen.get(o.name)
    if (dup !== undefined) { r.add(ERR.ENDPOINT_DUPLICATE, [...pp, 'name'], `duplicate port name "${o.name}" (ports[${dup}])`); return }
    seen.set(o.name, j)
    out.push({ name: o.name, port: o.port, protocol })
  })
  return out
}
