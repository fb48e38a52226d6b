/**
 * A multi-node lab (`warden lab up|down --cluster FILE`, docs/lab.md): N nodes as network
 * namespaces on an underlay bridge, each node's workloads behind veths whose host side is in
 * the node's namespace (lab.ts with `hostNetns`), native routes between the nodes' pod CIDRs
 * over the underlay (no NAT, no tunnel), and a real etcd on the underlay. What a CNI plugin and
 * a cluster operator would have set up; the agents are not started here: each runs inside its
 * node's namespace (`ip netns exec`) with `--uplink` on the node's underlay interface.
 *
 *   <prefix>ul                     the underlay: bridge `br0` with etcd's address, etcd itself
 *   <prefix><node>                 a node: `ul0` (its underlay address), routes to the other
 *                                  nodes' pod CIDRs, its workloads' host-side veths
 *   <prefix><node>-<workload>      a workload, as lab.ts makes it
 *
 * The work directory holds each node's endpoints file, etcd's data and log, a bpf filesystem
 * mounted for the agents (`ip netns exec` mounts a /sys of its own, without /sys/fs/bpf, so a
 * pin made there would vanish with the agent), and `lab.json` with etcd's PID: `down` ends
 * exactly that process. With `etcd.tls` it also holds the certificates (`pki/`) and the agents'
 * etcd client configuration (`etcd.config`, kvstoreArgs); with `etcd.auth`, the passwords.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { stringify } from 'yaml'
import { hostsLines, labDown, labLeftovers, labUp, LabError, sh, type LabHost, type LabSpec } from './lab.js'
import { parseCidr, type ClusterNode, type ClusterSpec } from './cluster-file.js'
import { etcdArgs, setupEtcdAuth, type EtcdAuth, type EtcdTls } from './etcd.js'
import { makeEtcdPki } from './pki.js'

export { parseClusterSpec, readClusterSpec, type ClusterEndpoint, type ClusterNode, type ClusterSpec } from './cluster-file.js'

/** What `up` leaves for `down` (and for tests and the demo). */
export interface ClusterState {
  etcdPid?: number
  /** The agents' etcd user and password, and root's (`etcd.auth`); the work directory is 0700. */
  etcdAuth?: EtcdAuth
}

export function underlayNs (spec: ClusterSpec): string { return `${spec.prefix}ul` }
export function nodeNs (spec: ClusterSpec, node: string): string { return `${spec.prefix}${node}` }
/** An external host's namespace. */
export function externalNs (spec: ClusterSpec, name: string): string { return `${spec.prefix}x-${name}` }
function ownNamespaces (spec: ClusterSpec): string[] {
  return [...spec.nodes.map((n) => nodeNs(spec, n.name)), ...spec.external.map((x) => externalNs(spec, x.name)), underlayNs(spec)]
}
/** A workload's namespace. */
export function podNs (spec: ClusterSpec, node: string, pod: string): string { return `${spec.prefix}${node}-${pod}` }
/** The node's endpoints file, for its agent's `--endpoints`. */
export function endpointsFile (spec: ClusterSpec, node: string): string { return join(spec.workDir, node, 'endpoints.yaml') }
/** The bpf filesystem the lab mounts for the agents; one directory per node under it. */
export function bpffsRoot (spec: ClusterSpec): string { return join(spec.workDir, 'bpffs') }
export function etcdEndpoint (spec: ClusterSpec): string { return `${spec.etcd.tls ? 'etcds' : 'etcd'}://${spec.etcd.ip}:${spec.etcd.clientPort}` }
/** With `etcd.tls`: the agents' etcd client configuration (Cilium's etcd.config format), written at `up`. */
export function etcdConfigFile (spec: ClusterSpec): string { return join(spec.workDir, 'etcd.config') }
/** The `warden run` flags that join a node's agent to the lab's etcd. */
export function kvstoreArgs (spec: ClusterSpec): string[] {
  return spec.etcd.tls ? ['--kvstore', 'etcd', '--kvstore-opt', `etcd.config=${etcdConfigFile(spec)}`] : ['--kvstore', etcdEndpoint(spec)]
}
function pkiDir (spec: ClusterSpec): string { return join(spec.workDir, 'pki') }
function etcdTls (spec: ClusterSpec): EtcdTls | undefined {
  if (!spec.etcd.tls) return undefined
  const d = pkiDir(spec)
  return { certFile: join(d, 'etcd.crt'), keyFile: join(d, 'etcd.key'), trustedCaFile: join(d, 'etcd-ca.crt'), clientCertFile: join(d, 'client.crt'), clientKeyFile: join(d, 'client.key') }
}
function statePath (spec: ClusterSpec): string { return join(spec.workDir, 'lab.json') }
function etcdDataDir (spec: ClusterSpec): string { return join(spec.workDir, 'etcd') }

/** One node's workloads as a lab.ts spec: host sides in the node's namespace. */
export function nodeLabSpec (spec: ClusterSpec, node: ClusterNode): LabSpec {
  const hosts = podHosts(node)
  const others = spec.nodes.filter((n) => n !== node).flatMap((n) => hostsLines(podHosts(n)))
  return { prefix: `${spec.prefix}${node.name}-`, hosts, dns: spec.dns, hostNetns: nodeNs(spec, node.name), extraHostsLines: others }
}

function podHosts (node: ClusterNode): LabHost[] {
  const count = new Map<string, number>()
  for (const e of node.endpoints) count.set(e.name, (count.get(e.name) ?? 0) + 1)
  return node.endpoints.map((e) => ({
    name: (count.get(e.name) ?? 0) > 1 ? `${e.namespace}-${e.name}` : e.name,
    ipv4: e.ipv4,
    hostIf: e.interface,
    hostnames: [`${e.name}.${e.namespace}`, `${e.name}.${e.namespace}.svc.cluster.local`]
  }))
}

const GONE = /No such file|Invalid netns|not found|Cannot find|does not exist|No such device|Cannot open network namespace/i

async function nsList (): Promise<Set<string>> {
  return new Set((await sh('ip', ['netns', 'list'])).split('\n').map((l) => l.split(' ')[0]).filter((l) => l !== ''))
}

function readState (spec: ClusterSpec): ClusterState {
  try { return JSON.parse(readFileSync(statePath(spec), 'utf8')) as ClusterState } catch { return {} }
}

function writeState (spec: ClusterSpec, state: ClusterState): void {
  writeFileSync(statePath(spec), JSON.stringify(state, null, 2) + '\n', { mode: 0o600 })
}

function isMounted (dir: string): boolean {
  return readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === dir)
}

async function upUnderlay (spec: ClusterSpec): Promise<void> {
  const ul = underlayNs(spec)
  const { bits } = parseCidr(spec.underlay, 'underlay')
  await sh('ip', ['netns', 'add', ul])
  await sh('ip', ['-n', ul, 'link', 'set', 'lo', 'up'])
  await sh('ip', ['-n', ul, 'link', 'add', 'br0', 'type', 'bridge'])
  await sh('ip', ['-n', ul, 'addr', 'add', `${spec.etcd.ip}/${bits}`, 'dev', 'br0'])
  await sh('ip', ['-n', ul, 'link', 'set', 'br0', 'up'])
}

async function upNode (spec: ClusterSpec, node: ClusterNode): Promise<void> {
  const ns = nodeNs(spec, node.name)
  const ul = underlayNs(spec)
  const { bits } = parseCidr(spec.underlay, 'underlay')
  await sh('ip', ['netns', 'add', ns])
  await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
  // the node's underlay link: ul0 in the node, its peer on the bridge
  await sh('ip', ['-n', ns, 'link', 'add', 'ul0', 'type', 'veth', 'peer', 'name', `n-${node.name}`, 'netns', ul])
  await sh('ip', ['-n', ul, 'link', 'set', `n-${node.name}`, 'master', 'br0'])
  await sh('ip', ['-n', ul, 'link', 'set', `n-${node.name}`, 'up'])
  await sh('ip', ['-n', ns, 'addr', 'add', `${node.ip}/${bits}`, 'dev', 'ul0'])
  await sh('ip', ['-n', ns, 'link', 'set', 'ul0', 'up'])
  // a node routes: its own namespace's switch, not the machine's
  await sh('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1'])
  await sh('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1'], GONE)
  for (const other of spec.nodes) {
    if (other === node) continue
    await sh('ip', ['-n', ns, 'route', 'add', other.podCidr, 'via', other.ip, 'dev', 'ul0'])
  }
  const etc = `/etc/netns/${ns}`
  mkdirSync(etc, { recursive: true })
  writeFileSync(`${etc}/hosts`, `127.0.0.1 localhost\n${spec.etcd.ip} etcd\n`)
  writeFileSync(`${etc}/resolv.conf`, '')
  await labUp(nodeLabSpec(spec, node))
  const dir = join(spec.workDir, node.name)
  mkdirSync(dir, { recursive: true })
  writeFileSync(endpointsFile(spec, node.name), '# written by `warden lab up --cluster`: this node\'s workloads\n' +
    stringify({ endpoints: node.endpoints.map((e) => ({ name: e.name, namespace: e.namespace, labels: e.labels, ipv4: e.ipv4, interface: e.interface, ...(e.ports !== undefined ? { ports: e.ports } : {}) })) }))
}

/** A host outside the cluster: on the bridge, with a route to each node's pods through that node. */
async function upExternal (spec: ClusterSpec, x: { name: string, ip: string }): Promise<void> {
  const ns = externalNs(spec, x.name)
  const ul = underlayNs(spec)
  const { bits } = parseCidr(spec.underlay, 'underlay')
  await sh('ip', ['netns', 'add', ns])
  await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
  await sh('ip', ['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', `x-${x.name}`, 'netns', ul])
  await sh('ip', ['-n', ul, 'link', 'set', `x-${x.name}`, 'master', 'br0'])
  await sh('ip', ['-n', ul, 'link', 'set', `x-${x.name}`, 'up'])
  await sh('ip', ['-n', ns, 'addr', 'add', `${x.ip}/${bits}`, 'dev', 'eth0'])
  await sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up'])
  await sh('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1'], GONE)
  for (const n of spec.nodes) await sh('ip', ['-n', ns, 'route', 'add', n.podCidr, 'via', n.ip, 'dev', 'eth0'])
  const etc = `/etc/netns/${ns}`
  mkdirSync(etc, { recursive: true })
  writeFileSync(`${etc}/hosts`, '127.0.0.1 localhost\n')
  writeFileSync(`${etc}/resolv.conf`, '')
}

/** Start etcd on the underlay, detached (it outlives `warden lab up`), and wait until it listens. */
async function startEtcd (spec: ClusterSpec, state: ClusterState): Promise<void> {
  const ul = underlayNs(spec)
  const { ip, clientPort } = spec.etcd
  const name = `${spec.prefix}etcd`
  // a new data directory gets its users again (etcd keeps them in its data)
  const fresh = !existsSync(join(etcdDataDir(spec), 'member'))
  mkdirSync(etcdDataDir(spec), { recursive: true, mode: 0o700 })
  const log = openSync(join(spec.workDir, 'etcd.log'), 'a')
  const tls = etcdTls(spec)
  const args = ['netns', 'exec', ul, 'etcd', ...etcdArgs({ name, dataDir: etcdDataDir(spec), host: ip, clientPort, peerPort: spec.etcd.peerPort, tls })]
  // `ip netns exec` execs etcd: the PID is etcd's own
  const child = spawn('ip', args, { stdio: ['ignore', log, log], detached: true })
  closeSync(log)
  if (child.pid === undefined) throw new LabError('etcd could not be started')
  // Its exit is known from the child itself: its /proc entry can read as something else while
  // `ip netns exec` execs etcd.
  let exit = null as string | null
  child.once('exit', (code, signal) => { exit = signal ?? `code ${code ?? '?'}` })
  child.unref()
  state.etcdPid = child.pid
  writeState(spec, state)
  const deadline = Date.now() + 15_000
  for (;;) {
    const open = await sh('ip', ['netns', 'exec', ul, 'bash', '-c', `exec 3<>/dev/tcp/${ip}/${clientPort}`]).then(() => true, () => false)
    if (open) {
      if (fresh && state.etcdAuth !== undefined) await setupEtcdAuth(`https://${ip}:${clientPort}`, state.etcdAuth, tls, ul)
      return
    }
    if (exit !== null) throw new LabError(`etcd exited at start (${exit}): ${logTail(join(spec.workDir, 'etcd.log'))}`)
    if (Date.now() > deadline) throw new LabError(`etcd not listening on ${ip}:${clientPort} after 15 s`)
    await sleep(50)
  }
}

/** The last lines of a log, for an error that outlives the lab's work directory. */
function logTail (path: string): string {
  try { return readFileSync(path, 'utf8').trim().split('\n').slice(-5).join('\n').slice(-2000) } catch { return `(no log at ${path})` }
}

/** Is `pid` the etcd of this lab (and not a process that took its PID since)? */
function isEtcd (spec: ClusterSpec, pid: number): boolean {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
    // right after the spawn the PID may still be `ip netns exec ... etcd ...`, about to exec etcd
    const etcd = argv[0].endsWith('etcd') || (argv[0].endsWith('ip') && argv[1] === 'netns' && argv[4] === 'etcd')
    return etcd && argv.includes(etcdDataDir(spec))
  } catch { return false }
}

/** End the lab's etcd (by its recorded PID only); the data directory stays. */
export async function stopEtcd (spec: ClusterSpec): Promise<void> {
  const state = readState(spec)
  const pid = state.etcdPid
  if (pid === undefined) return
  if (isEtcd(spec, pid)) {
    process.kill(pid, 'SIGTERM')
    const deadline = Date.now() + 5000
    while (isEtcd(spec, pid)) {
      if (Date.now() > deadline) { try { process.kill(pid, 'SIGKILL') } catch { /* already gone */ } }
      await sleep(25)
    }
  }
  delete state.etcdPid
  writeState(spec, state)
}

/** Start the lab's etcd again (after stopEtcd); with `empty`, from a new data directory. */
export async function restartEtcd (spec: ClusterSpec, empty = false): Promise<void> {
  await stopEtcd(spec)
  if (empty) rmSync(etcdDataDir(spec), { recursive: true, force: true })
  await startEtcd(spec, readState(spec))
}

/**
 * A TLS etcd's certificates (`<workDir>/pki`: a CA, etcd's server pair for its address, the
 * agents' client pair) and the agents' etcd.config; with `etcd.auth`, passwords made here, the
 * agents' in etcd.config (mode 0600), root's in lab.json, both in the 0700 work directory.
 */
async function upEtcdSecurity (spec: ClusterSpec, state: ClusterState): Promise<void> {
  const pki = await makeEtcdPki(pkiDir(spec), [spec.etcd.ip])
  const cfg: Record<string, unknown> = { endpoints: [`https://${spec.etcd.ip}:${spec.etcd.clientPort}`], 'trusted-ca-file': pki.ca.cert, 'cert-file': pki.client.cert, 'key-file': pki.client.key }
  if (spec.etcd.auth) {
    state.etcdAuth = { rootPassword: randomBytes(18).toString('base64url'), user: 'warden', password: randomBytes(18).toString('base64url') }
    cfg.username = state.etcdAuth.user
    cfg.password = state.etcdAuth.password
    writeState(spec, state)
  }
  writeFileSync(etcdConfigFile(spec), stringify(cfg), { mode: 0o600 })
}

/** Build the cluster lab. On failure everything made so far is removed and the error rethrown. */
export async function clusterUp (spec: ClusterSpec): Promise<void> {
  const have = await nsList()
  const taken = ownNamespaces(spec).filter((n) => have.has(n))
  if (taken.length > 0) throw new LabError(`namespaces already exist: ${taken.join(', ')} (warden lab down --cluster first)`)
  try {
    mkdirSync(spec.workDir, { recursive: true, mode: 0o700 })
    const state: ClusterState = {}
    writeState(spec, state)
    const bpffs = bpffsRoot(spec)
    mkdirSync(bpffs, { recursive: true })
    if (!isMounted(bpffs)) await sh('mount', ['-t', 'bpf', 'bpf', bpffs])
    await upUnderlay(spec)
    for (const n of spec.nodes) await upNode(spec, n)
    for (const x of spec.external) await upExternal(spec, x)
    if (spec.etcd.tls) await upEtcdSecurity(spec, state)
    await startEtcd(spec, state)
  } catch (err) {
    await clusterDown(spec)
    throw err
  }
}

/** Remove the cluster lab: etcd (by PID), namespaces, /etc/netns files, the bpffs mount, the work directory. Idempotent. */
export async function clusterDown (spec: ClusterSpec): Promise<void> {
  await stopEtcd(spec)
  for (const n of spec.nodes) await labDown(nodeLabSpec(spec, n))
  for (const ns of ownNamespaces(spec)) {
    await sh('ip', ['netns', 'del', ns], GONE)
    rmSync(`/etc/netns/${ns}`, { recursive: true, force: true })
  }
  const bpffs = bpffsRoot(spec)
  if (isMounted(bpffs)) await sh('umount', [bpffs])
  rmSync(spec.workDir, { recursive: true, force: true })
}

/** What is left of the lab (namespaces, /etc/netns dirs, the bpffs mount, etcd, the work directory). */
export async function clusterLeftovers (spec: ClusterSpec): Promise<string[]> {
  const left: string[] = []
  const have = await nsList()
  for (const n of spec.nodes) {
    for (const ns of have) if (ns.startsWith(`${nodeNs(spec, n.name)}-`)) left.push(`netns ${ns}`)
    left.push(...(await labLeftovers(nodeLabSpec(spec, n))).filter((l) => !l.startsWith('link ')))
  }
  for (const ns of ownNamespaces(spec)) {
    if (have.has(ns)) left.push(`netns ${ns}`)
    if (existsSync(`/etc/netns/${ns}`)) left.push(`/etc/netns/${ns}`)
  }
  if (isMounted(bpffsRoot(spec))) left.push(`mount ${bpffsRoot(spec)}`)
  const pid = readState(spec).etcdPid
  if (pid !== undefined && isEtcd(spec, pid)) left.push(`etcd pid ${pid}`)
  if (existsSync(spec.workDir)) left.push(spec.workDir)
  return [...new Set(left)]
}
