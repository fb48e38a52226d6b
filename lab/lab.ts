/**
 * Network-namespace labs: what a CNI plugin would have done for each workload, for tests
 * and the demo. The agent itself never creates any of this.
 *
 * Per host: netns `<prefix><name>`; a veth whose host side is `hostIf` and whose other side
 * is `eth0` in the namespace with `ipv4/32`; in the namespace `169.254.1.1 dev eth0` and
 * `default via 169.254.1.1` (a permanent neighbour entry with the host side's MAC; the host side
 * also answers ARP for it: proxy_arp=1); on the host
 * `ipv4/32 dev hostIf` and forwarding=1 on that veth only (no global sysctl is touched);
 * /etc/netns/<ns>/hosts with every host's names and /etc/netns/<ns>/resolv.conf naming the
 * lab's DNS server or nothing, so nothing in a lab reaches the host's resolver.
 *
 * "The host" is the root namespace, or `hostNetns` when set: a node of a cluster lab
 * (cluster.ts), whose workloads' veths have their host side in the node's namespace.
 */
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { isIPv4 } from 'node:net'

export interface LabHost {
  /** Short name: the namespace is `<prefix><name>`; also the first hostname. */
  name: string
  ipv4: string
  /** Host-side veth name (<= 15 chars). */
  hostIf: string
  /** More names for /etc/hosts (e.g. `billing.default.svc`, `api.example.com`). */
  hostnames?: string[]
}

export interface LabSpec {
  /** Namespace name prefix (default `wl-`). */
  prefix?: string
  hosts: LabHost[]
  /** The lab's DNS server for resolv.conf; none: an empty resolv.conf. */
  dns?: string
  /** The namespace the host sides live in (a cluster lab's node); default the root namespace. */
  hostNetns?: string
  /** Lines for /etc/hosts besides the hosts' own (a cluster lab: every node's workloads). */
  extraHostsLines?: string[]
}

export class LabError extends Error {
  readonly code = 'WARDEN_ERR_LAB'
  constructor (message: string, readonly context: Record<string, unknown> = {}) {
    super(message)
    this.name = 'LabError'
  }
}

export function nsName (spec: LabSpec, host: LabHost): string {
  return `${spec.prefix ?? 'wl-'}${host.name}`
}

/** Run a command; a failure whose message matches `tolerate` resolves ''. */
export async function sh (cmd: string, args: string[], tolerate?: RegExp): Promise<string> {
  return await new Promise((resolve, reject) => {
    execFile(cmd, args, (err, stdout, stderr) => {
      if (err === null) { resolve(stdout); return }
      const msg = (stderr || err.message).trim()
      if (tolerate?.test(msg) === true) { resolve(''); return }
      reject(new LabError(`${cmd} ${args.join(' ')}: ${msg}`, { cmd, args }))
    })
  })
}

function validate (spec: LabSpec): void {
  const names = new Set<string>()
  const ifs = new Set<string>()
  for (const h of spec.hosts) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(h.name)) throw new LabError(`bad host name "${h.name}"`)
    if (!isIPv4(h.ipv4)) throw new LabError(`host ${h.name}: bad ipv4 "${h.ipv4}"`)
    if (!/^[A-Za-z0-9_.-]{1,15}$/.test(h.hostIf)) throw new LabError(`host ${h.name}: bad interface "${h.hostIf}" (1..15 chars)`)
    if (names.has(h.name)) throw new LabError(`duplicate host "${h.name}"`)
    if (ifs.has(h.hostIf)) throw new LabError(`duplicate interface "${h.hostIf}"`)
    names.add(h.name)
    ifs.add(h.hostIf)
  }
  if (spec.dns !== undefined && !isIPv4(spec.dns)) throw new LabError(`bad dns "${spec.dns}"`)
}

export function hostsLines (hosts: LabHost[]): string[] {
  return hosts.map((h) => [h.ipv4, h.name, ...(h.hostnames ?? [])].join(' '))
}

function hostsFile (spec: LabSpec): string {
  const lines = ['127.0.0.1 localhost', ...hostsLines(spec.hosts), ...(spec.extraHostsLines ?? [])]
  return lines.join('\n') + '\n'
}

/** `ip` arguments that act in the host-side namespace. */
function onHost (spec: LabSpec, args: string[]): string[] {
  return spec.hostNetns === undefined ? args : ['-n', spec.hostNetns, ...args]
}

/** An IPv4 per-interface sysctl of the host side (`key` under net/ipv4/conf/<ifname>/). */
async function hostSysctl (spec: LabSpec, ifname: string, key: string, value: string): Promise<void> {
  if (spec.hostNetns === undefined) {
    writeFileSync(`/proc/sys/net/${key.startsWith('ipv6:') ? 'ipv6' : 'ipv4'}/conf/${ifname}/${key.replace('ipv6:', '')}`, value)
    return
  }
  const fam = key.startsWith('ipv6:') ? 'ipv6' : 'ipv4'
  await sh('ip', ['netns', 'exec', spec.hostNetns, 'sysctl', '-qw', `net/${fam}/conf/${ifname}/${key.replace('ipv6:', '')}=${value}`])
}

/** Does the host side have an interface of that name? */
async function hostHasLink (spec: LabSpec, ifname: string): Promise<boolean> {
  if (spec.hostNetns === undefined) return existsSync(`/sys/class/net/${ifname}`)
  const out = await sh('ip', ['-n', spec.hostNetns, '-j', 'link', 'show', 'dev', ifname], /Cannot find device|does not exist|No such device|Cannot open network namespace/i)
  return out.trim() !== '' && out.trim() !== '[]'
}

async function upOne (spec: LabSpec, h: LabHost): Promise<void> {
  const ns = nsName(spec, h)
  // the peer is created directly inside the namespace under a unique temporary name
  const tmp = 'wlp' + createHash('sha1').update(ns).digest('hex').slice(0, 10)
  await sh('ip', ['netns', 'add', ns], /File exists/)
  await sh('ip', onHost(spec, ['link', 'add', h.hostIf, 'type', 'veth', 'peer', 'name', tmp, 'netns', ns]))
  await sh('ip', ['-n', ns, 'link', 'set', tmp, 'name', 'eth0'])
  await sh('ip', ['-n', ns, 'addr', 'add', `${h.ipv4}/32`, 'dev', 'eth0'])
  await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
  await sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up'])
  await sh('ip', ['-n', ns, 'route', 'add', '169.254.1.1', 'dev', 'eth0', 'scope', 'link'])
  await sh('ip', ['-n', ns, 'route', 'add', 'default', 'via', '169.254.1.1', 'dev', 'eth0'])
  // The gateway's MAC is the host side's, set once: resolving it by proxy ARP costs a random
  // delay per request (proxy_delay) and, with many labs up at once, could fail three times
  // (a first connect seen refused after 3 s, EHOSTUNREACH).
  const mac = spec.hostNetns === undefined
    ? readFileSync(`/sys/class/net/${h.hostIf}/address`, 'utf8').trim()
    : (JSON.parse(await sh('ip', ['-n', spec.hostNetns, '-j', 'link', 'show', 'dev', h.hostIf])) as Array<{ address: string }>)[0].address
  await sh('ip', ['-n', ns, 'neigh', 'replace', '169.254.1.1', 'lladdr', mac, 'dev', 'eth0', 'nud', 'permanent'])
  // no IPv6 inside a lab workload: nothing to enforce there, and no stray traffic
  await sh('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1'], /No such file|cannot stat/)
  await hostSysctl(spec, h.hostIf, 'proxy_arp', '1')
  await hostSysctl(spec, h.hostIf, 'forwarding', '1')
  await hostSysctl(spec, h.hostIf, 'ipv6:disable_ipv6', '1')
  await sh('ip', onHost(spec, ['link', 'set', h.hostIf, 'up']))
  await sh('ip', onHost(spec, ['route', 'replace', `${h.ipv4}/32`, 'dev', h.hostIf]))
  const etc = `/etc/netns/${ns}`
  mkdirSync(etc, { recursive: true })
  writeFileSync(`${etc}/hosts`, hostsFile(spec))
  writeFileSync(`${etc}/resolv.conf`, spec.dns === undefined ? '' : `nameserver ${spec.dns}\noptions timeout:1 attempts:1\n`)
}

/** Create the lab. On failure everything made so far is removed and the error rethrown. */
export async function labUp (spec: LabSpec): Promise<void> {
  validate(spec)
  // never take over an interface someone else made (labDown would delete it)
  for (const h of spec.hosts) {
    if (await hostHasLink(spec, h.hostIf)) throw new LabError(`interface ${h.hostIf} already exists`, { host: h.name })
  }
  try {
    for (const h of spec.hosts) await upOne(spec, h)
  } catch (err) {
    await labDown(spec)
    throw err
  }
}

async function isVeth (spec: LabSpec, ifname: string): Promise<boolean> {
  if (!await hostHasLink(spec, ifname)) return false
  // the host side of a veth whose namespace was just deleted vanishes asynchronously:
  // "No such device" here means it is already gone
  const out = await sh('ip', onHost(spec, ['-j', '-d', 'link', 'show', 'dev', ifname]), /Cannot find device|does not exist|No such device|Cannot open network namespace/i)
  const links = JSON.parse(out === '' ? '[]' : out) as Array<{ linkinfo?: { info_kind?: string } }>
  return links[0]?.linkinfo?.info_kind === 'veth'
}

/** Remove the lab: namespaces, veths, routes, /etc/netns files. Idempotent. */
export async function labDown (spec: LabSpec): Promise<void> {
  for (const h of spec.hosts) {
    const ns = nsName(spec, h)
    await sh('ip', ['netns', 'del', ns], /No such file|Invalid netns|not found/i)
    // deleting the namespace deletes the peer and so the host side; this covers a host
    // side left behind by a partial labUp
    if (await isVeth(spec, h.hostIf)) await sh('ip', onHost(spec, ['link', 'del', h.hostIf]), /Cannot find device|does not exist|No such device/i)
    await sh('ip', onHost(spec, ['route', 'del', `${h.ipv4}/32`, 'dev', h.hostIf]), /No such process|not found|Cannot find|does not exist|Cannot open network namespace/i)
    const etc = `/etc/netns/${ns}`
    if (existsSync(etc)) rmSync(etc, { recursive: true, force: true })
  }
}

/** Is anything of the lab left? (namespaces, interfaces, /etc/netns dirs) */
export async function labLeftovers (spec: LabSpec): Promise<string[]> {
  const left: string[] = []
  const nss = await sh('ip', ['netns', 'list'])
  for (const h of spec.hosts) {
    const ns = nsName(spec, h)
    if (nss.split('\n').some((l) => l.split(' ')[0] === ns)) left.push(`netns ${ns}`)
    if (await hostHasLink(spec, h.hostIf)) left.push(`link ${h.hostIf}`)
    if (existsSync(`/etc/netns/${ns}`)) left.push(`/etc/netns/${ns}`)
  }
  return left
}
