/**
 * The cluster lab's file (docs/lab.md#the-cluster-file): its types and its strict reader. Every
 * mistake is a LabError naming the field, before anything is built.
 */
import { readFileSync } from 'node:fs'
import { isIPv4 } from 'node:net'
import { parse } from 'yaml'
import { LabError } from './lab.js'

export interface ClusterEndpoint {
  name: string
  namespace: string
  labels: Record<string, string>
  ipv4: string
  interface: string
  /** Named container ports, copied to the node's endpoints file (absent: none). */
  ports?: Array<{ name: string, port: number, protocol: 'TCP' | 'UDP' | 'SCTP' }>
}

export interface ClusterNode {
  name: string
  /** The node's address on the underlay (`ul0`). */
  ip: string
  /** The node's pod CIDR: the other nodes route it to `ip`. */
  podCidr: string
  endpoints: ClusterEndpoint[]
}

export interface ClusterSpec {
  /** Namespace prefix (see the module comment). */
  prefix: string
  workDir: string
  /** The underlay network (CIDR): every node's `ip` and etcd's address are in it. */
  underlay: string
  /**
   * The lab's etcd. With `tls`, it serves clients over TLS only and requires a client certificate
   * (certificates made at `up`); with `auth` (needs `tls`), authentication is on and the agents
   * log in as a user with a password. The agents' `--kvstore` flags: kvstoreArgs (cluster.ts).
   */
  etcd: { ip: string, clientPort: number, peerPort: number, tls: boolean, auth: boolean }
  /** Nameserver for the workloads' resolv.conf; none: empty. */
  dns?: string
  nodes: ClusterNode[]
  /** Hosts outside the cluster on the underlay ("the internet"), routing each pod CIDR to its node. */
  external: Array<{ name: string, ip: string }>
}

const NAME = /^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$/
const K8S_NAME = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/
const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/

function ipNum (ip: string): number {
  return ip.split('.').reduce((n, o) => (n * 256) + Number(o), 0)
}

export function parseCidr (cidr: string, what: string): { base: number, bits: number } {
  const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d{1,2})$/.exec(cidr)
  if (m === null || !isIPv4(m[1]) || Number(m[2]) > 32) throw new LabError(`${what}: not an IPv4 CIDR: "${cidr}"`)
  const bits = Number(m[2])
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0
  const base = ipNum(m[1])
  if ((base & ~mask) >>> 0 !== 0) throw new LabError(`${what}: host bits set in "${cidr}"`)
  return { base, bits }
}

function inCidr (ip: string, cidr: string): boolean {
  const { base, bits } = parseCidr(cidr, 'cidr')
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0
  return ((ipNum(ip) & mask) >>> 0) === base
}

function overlap (a: string, b: string): boolean {
  const pa = parseCidr(a, 'cidr')
  const pb = parseCidr(b, 'cidr')
  const bits = Math.min(pa.bits, pb.bits)
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0
  return ((pa.base & mask) >>> 0) === ((pb.base & mask) >>> 0)
}

function str (v: unknown, what: string): string {
  if (typeof v !== 'string' || v === '') throw new LabError(`${what} must be a non-empty string`)
  return v
}

function port (v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535) throw new LabError(`${what} must be a port number`)
  return v
}

function only (obj: Record<string, unknown>, keys: string[], what: string): void {
  for (const k of Object.keys(obj)) if (!keys.includes(k)) throw new LabError(`${what}: unknown field "${k}"`)
}

function record (v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new LabError(`${what} must be a mapping`)
  return v as Record<string, unknown>
}

/** Parse and check a cluster file's text (strict: unknown fields, overlaps and duplicates are errors). */
export function parseClusterSpec (text: string, file = 'cluster file'): ClusterSpec {
  let doc: unknown
  try { doc = parse(text) } catch (err) { throw new LabError(`${file}: ${(err as Error).message}`) }
  const top = record(doc, file)
  only(top, ['prefix', 'workDir', 'underlay', 'etcd', 'dns', 'nodes', 'external'], file)
  const prefix = str(top.prefix, `${file}: prefix`)
  if (!/^[a-z0-9-]{1,8}$/.test(prefix)) throw new LabError(`${file}: prefix must be 1..8 of [a-z0-9-]`)
  const workDir = str(top.workDir, `${file}: workDir`)
  if (!workDir.startsWith('/')) throw new LabError(`${file}: workDir must be an absolute path`)
  const underlay = str(top.underlay, `${file}: underlay`)
  parseCidr(underlay, `${file}: underlay`)
  const e = record(top.etcd, `${file}: etcd`)
  only(e, ['ip', 'clientPort', 'peerPort', 'tls', 'auth'], `${file}: etcd`)
  const flag = (v: unknown, what: string): boolean => {
    if (v === undefined) return false
    if (typeof v !== 'boolean') throw new LabError(`${what} must be true or false`)
    return v
  }
  const etcd = {
    ip: str(e.ip, `${file}: etcd.ip`),
    clientPort: port(e.clientPort, `${file}: etcd.clientPort`),
    peerPort: port(e.peerPort, `${file}: etcd.peerPort`),
    tls: flag(e.tls, `${file}: etcd.tls`),
    auth: flag(e.auth, `${file}: etcd.auth`)
  }
  // a password only ever travels over TLS (cluster/src/etcd-config.ts refuses it otherwise)
  if (etcd.auth && !etcd.tls) throw new LabError(`${file}: etcd.auth needs etcd.tls`)
  if (!isIPv4(etcd.ip) || !inCidr(etcd.ip, underlay)) throw new LabError(`${file}: etcd.ip must be an address in the underlay ${underlay}`)
  if (etcd.clientPort === etcd.peerPort) throw new LabError(`${file}: etcd.clientPort and etcd.peerPort must differ`)
  let dns: string | undefined
  if (top.dns !== undefined) {
    dns = str(top.dns, `${file}: dns`)
    if (!isIPv4(dns)) throw new LabError(`${file}: dns must be an IPv4 address`)
  }
  if (!Array.isArray(top.nodes) || top.nodes.length === 0) throw new LabError(`${file}: nodes must be a non-empty list`)
  const addresses = new Set<string>([etcd.ip])
  const ifnames = new Set<string>()
  const nodes: ClusterNode[] = top.nodes.map((raw, i) => {
    const w = `${file}: nodes[${i}]`
    const n = record(raw, w)
    only(n, ['name', 'ip', 'podCIDR', 'endpoints'], w)
    const name = str(n.name, `${w}.name`)
    if (!NAME.test(name)) throw new LabError(`${w}.name must be 1..15 of [a-z0-9-]`)
    const ip = str(n.ip, `${w}.ip`)
    if (!isIPv4(ip) || !inCidr(ip, underlay)) throw new LabError(`${w}.ip must be an address in the underlay ${underlay}`)
    if (addresses.has(ip)) throw new LabError(`${w}.ip ${ip} is used twice`)
    addresses.add(ip)
    const podCidr = str(n.podCIDR, `${w}.podCIDR`)
    parseCidr(podCidr, `${w}.podCIDR`)
    if (overlap(podCidr, underlay)) throw new LabError(`${w}.podCIDR overlaps the underlay`)
    const eps = n.endpoints ?? []
    if (!Array.isArray(eps)) throw new LabError(`${w}.endpoints must be a list`)
    const endpoints = eps.map((rawEp, j): ClusterEndpoint => {
      const we = `${w}.endpoints[${j}]`
      const ep = record(rawEp, we)
      only(ep, ['name', 'namespace', 'labels', 'ipv4', 'interface', 'ports'], we)
      const epName = str(ep.name, `${we}.name`)
      const namespace = ep.namespace === undefined ? 'default' : str(ep.namespace, `${we}.namespace`)
      if (!K8S_NAME.test(epName) || !K8S_NAME.test(namespace)) throw new LabError(`${we}: name and namespace must be Kubernetes names`)
      const labels: Record<string, string> = {}
      for (const [k, v] of Object.entries(record(ep.labels ?? {}, `${we}.labels`))) labels[k] = str(v, `${we}.labels.${k}`)
      const ipv4 = str(ep.ipv4, `${we}.ipv4`)
      if (!isIPv4(ipv4) || !inCidr(ipv4, podCidr)) throw new LabError(`${we}.ipv4 must be an address in the node's podCIDR ${podCidr}`)
      if (addresses.has(ipv4)) throw new LabError(`${we}.ipv4 ${ipv4} is used twice`)
      addresses.add(ipv4)
      const ifname = str(ep.interface, `${we}.interface`)
      if (!IFNAME.test(ifname) || ifname === 'ul0' || ifname === 'lo') throw new LabError(`${we}.interface must be 1..15 of [A-Za-z0-9_.-], not ul0 or lo`)
      // unique cluster-wide, though each lives in its node's namespace: a node's veth names
      // in the other nodes' logs then say which workload they are
      if (ifnames.has(ifname)) throw new LabError(`${we}.interface ${ifname} is used twice`)
      ifnames.add(ifname)
      // ports are the endpoints file's: the agent checks them when it reads that file
      let ports: ClusterEndpoint['ports']
      if (ep.ports !== undefined) {
        if (!Array.isArray(ep.ports)) throw new LabError(`${we}.ports must be a list`)
        ports = ep.ports.map((rawP, k) => {
          const wp = `${we}.ports[${k}]`
          const pp = record(rawP, wp)
          only(pp, ['name', 'port', 'protocol'], wp)
          const protocol = pp.protocol === undefined ? 'TCP' : str(pp.protocol, `${wp}.protocol`)
          if (protocol !== 'TCP' && protocol !== 'UDP' && protocol !== 'SCTP') throw new LabError(`${wp}.protocol must be TCP, UDP or SCTP`)
          return { name: str(pp.name, `${wp}.name`), port: port(pp.port, `${wp}.port`), protocol }
        })
      }
      return { name: epName, namespace, labels, ipv4, interface: ifname, ...(ports !== undefined ? { ports } : {}) }
    })
    return { name, ip, podCidr, endpoints }
  })
  const names = new Set<string>()
  for (const [i, n] of nodes.entries()) {
    if (names.has(n.name)) throw new LabError(`${file}: node name ${n.name} is used twice`)
    names.add(n.name)
    for (const m of nodes.slice(i + 1)) {
      if (overlap(n.podCidr, m.podCidr)) throw new LabError(`${file}: the pod CIDRs of ${n.name} and ${m.name} overlap`)
    }
  }
  const rawExt = top.external ?? []
  if (!Array.isArray(rawExt)) throw new LabError(`${file}: external must be a list`)
  const external = rawExt.map((raw, i) => {
    const w = `${file}: external[${i}]`
    const x = record(raw, w)
    only(x, ['name', 'ip'], w)
    const name = str(x.name, `${w}.name`)
    if (!NAME.test(name) || name.length > 13) throw new LabError(`${w}.name must be 1..13 of [a-z0-9-]`)
    const ip = str(x.ip, `${w}.ip`)
    if (!isIPv4(ip) || !inCidr(ip, underlay)) throw new LabError(`${w}.ip must be an address in the underlay ${underlay}`)
    if (addresses.has(ip)) throw new LabError(`${w}.ip ${ip} is used twice`)
    addresses.add(ip)
    if (names.has(`x-${name}`)) throw new LabError(`${w}.name ${name} is used twice`)
    names.add(`x-${name}`)
    return { name, ip }
  })
  return { prefix, workDir, underlay, etcd, dns, nodes, external }
}

export function readClusterSpec (file: string): ClusterSpec {
  return parseClusterSpec(readFileSync(file, 'utf8'), file)
}
