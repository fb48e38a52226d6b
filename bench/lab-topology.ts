/**
 * The benchmark lab: a client namespace and a server namespace, each behind a veth whose host side
 * routes through the host namespace (where the agent or the peer proxies run), in the benchmark
 * slice 198.18.200.0/24 (RFC 2544 range).
 *
 *   wbench-c (client, 198.18.200.10) --eth0 | wb-c-- host (198.18.200.1 on wb-c) --wb-s | eth0-- wbench-s (server, 198.18.200.20)
 *
 * Workloads use the Calico/Cilium-style pod route `default via 169.254.1.1` with proxy_arp on the
 * host side, so host veths need no addresses (datapath.md). Forwarding is enabled per interface
 * (`net.ipv4.conf.<if>.forwarding`), never globally. 198.18.200.1 is a host address on wb-c where
 * the peer proxies listen as explicit reverse proxies. For the scale scenario the lab can add idle
 * workloads: veths `wb-d<N>` whose other ends sit in the namespace `wbench-p`; they stand for the
 * other 99 workloads on the node (endpoints with their own identities that send no traffic).
 * (Veths, not dummy links: this kernel has no dummy driver.)
 *
 * Everything is removed by `destroy()`, which also works on a half-built lab and on leftovers of a
 * crashed run (`destroyLeftovers`).
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { mkdir, rm, writeFile } from 'node:fs/promises'

const exec = promisify(execFile)

export interface LabAddresses {
  /** Network namespace of the load generator. */
  clientNs: string
  /** Network namespace of the upstream (nginx answering small 200s). */
  serverNs: string
  /** Host-side veth names. */
  clientIf: string
  serverIf: string
  clientIp: string
  serverIp: string
  /** Address in the host namespace (on the client veth) where explicit reverse proxies listen. */
  hostIp: string
  /** Namespace holding the far ends of the idle workloads' veths. */
  idleNs: string
  /** Idle workloads' host-side veths standing for other workloads on the node: name and IPv4. */
  dummies: { ifname: string, ip: string }[]
}

export interface LabOptions {
  /** Number of dummy workload links to add (scale scenario); 0 by default. At most 99. */
  dummies?: number
}

export const LAB_SUBNET = '198.18.200.0/24'
const NET = '198.18.200'

/** The fixed names and addresses of the lab (one lab per machine: the slice is ours). */
export function labAddresses (dummies = 0): LabAddresses {
  if (!Number.isInteger(dummies) || dummies < 0 || dummies > 99) throw new RangeError(`dummies must be 0..99, got ${dummies}`)
  return {
    clientNs: 'wbench-c',
    serverNs: 'wbench-s',
    idleNs: 'wbench-p',
    clientIf: 'wb-c',
    serverIf: 'wb-s',
    clientIp: `${NET}.10`,
    serverIp: `${NET}.20`,
    hostIp: `${NET}.1`,
    dummies: Array.from({ length: dummies }, (_, i) => ({ ifname: `wb-d${i}`, ip: `${NET}.${100 + i}` }))
  }
}

export class LabError extends Error {
  readonly code = 'WARDEN_ERR_BENCH_LAB'
  constructor (message: string, readonly command: string[], readonly stderr: string) {
    super(`${message}: ${command.join(' ')}: ${stderr.trim()}`)
    this.name = 'LabError'
  }
}

async function run (cmd: string, args: string[], input?: string): Promise<void> {
  try {
    const p = exec(cmd, args)
    if (input !== undefined) {
      // The promisified execFile exposes its child; its error carries stderr either way.
      p.child.stdin?.on('error', () => {}) // a command that exits early: its status tells
      p.child.stdin?.end(input)
    }
    await p
  } catch (err) {
    const e = err as Error & { stderr?: string }
    throw new LabError('lab command failed', [cmd, ...args], e.stderr ?? e.message)
  }
}

async function tryRun (cmd: string, args: string[]): Promise<void> {
  try { await exec(cmd, args) } catch { /* already gone */ }
}

async function exists (kind: 'netns' | 'link', name: string): Promise<boolean> {
  try {
    const { stdout } = kind === 'netns' ? await exec('ip', ['netns', 'list']) : await exec('ip', ['-o', 'link', 'show'])
    return kind === 'netns'
      ? stdout.split('\n').some((l) => l.split(' ')[0] === name)
      : stdout.split('\n').some((l) => l.split(':')[1]?.trim().split('@')[0] === name)
  } catch { return false }
}

export class BenchLab {
  private constructor (readonly addr: LabAddresses) {}

  /**
   * Builds the lab. Refuses to run over a lab that already exists (another run, or leftovers:
   * `npm run bench -- --cleanup` removes them). On any failure, removes what it built and throws.
   */
  static async create (opts: LabOptions = {}): Promise<BenchLab> {
    const a = labAddresses(opts.dummies ?? 0)
    for (const ns of [a.clientNs, a.serverNs, a.idleNs]) {
      if (await exists('netns', ns)) throw new LabError(`namespace ${ns} exists (another bench run, or leftovers: run with --cleanup)`, ['ip', 'netns', 'list'], '')
    }
    for (const ifname of [a.clientIf, a.serverIf]) {
      if (await exists('link', ifname)) throw new LabError(`link ${ifname} exists (another bench run, or leftovers: run with --cleanup)`, ['ip', 'link', 'show'], '')
    }
    const lab = new BenchLab(a)
    try {
      await lab.build()
    } catch (err) {
      await lab.destroy()
      throw err
    }
    return lab
  }

  private async build (): Promise<void> {
    const a = this.addr
    const pods: [string, string, string][] = [[a.clientNs, a.clientIf, a.clientIp], [a.serverNs, a.serverIf, a.serverIp]]
    for (const [ns, ifname, ip] of pods) {
      await run('ip', ['netns', 'add', ns])
      // No name resolution leaves the lab: empty resolv.conf, a hosts file with loopback only.
      await mkdir(`/etc/netns/${ns}`, { recursive: true })
      await writeFile(`/etc/netns/${ns}/resolv.conf`, '# warden bench lab: no resolver\n')
      await writeFile(`/etc/netns/${ns}/hosts`, '127.0.0.1 localhost\n')
      await run('ip', ['link', 'add', ifname, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns])
      await run('ip', ['link', 'set', ifname, 'up'])
      await run('sysctl', ['-qw', `net.ipv4.conf.${ifname}.forwarding=1`, `net.ipv4.conf.${ifname}.proxy_arp=1`])
      await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
      await run('ip', ['-n', ns, 'addr', 'add', `${ip}/32`, 'dev', 'eth0'])
      await run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up'])
      await run('ip', ['-n', ns, 'route', 'add', '169.254.1.1', 'dev', 'eth0'])
      await run('ip', ['-n', ns, 'route', 'add', 'default', 'via', '169.254.1.1', 'dev', 'eth0'])
      await run('ip', ['route', 'add', `${ip}/32`, 'dev', ifname])
    }
    await run('ip', ['addr', 'add', `${a.hostIp}/32`, 'dev', a.clientIf])
    if (a.dummies.length > 0) {
      await run('ip', ['netns', 'add', a.idleNs])
      const batch = a.dummies.map((d, i) => `link add ${d.ifname} type veth peer name p${i} netns ${a.idleNs}\nlink set ${d.ifname} up\n`).join('')
      await run('ip', ['-batch', '-'], batch)
    }
  }

  /** Runs argv inside a lab namespace (as `ip netns exec`). */
  nsArgv (ns: string, argv: string[]): string[] {
    return ['ip', 'netns', 'exec', ns, ...argv]
  }

  /** Removes everything the lab may have created; safe to call twice and on a partial lab. */
  async destroy (): Promise<void> {
    await destroyLab(this.addr)
  }
}

async function destroyLab (a: LabAddresses): Promise<void> {
  // Delete host-side links first: a namespace's veth outlives `ip netns del` for a moment.
  for (const ifname of [a.clientIf, a.serverIf, ...a.dummies.map((d) => d.ifname)]) await tryRun('ip', ['link', 'del', ifname])
  for (const ns of [a.clientNs, a.serverNs, a.idleNs]) {
    await tryRun('ip', ['netns', 'del', ns])
    await rm(`/etc/netns/${ns}`, { recursive: true, force: true })
  }
}

/** Removes the lab's namespaces and links left behind by a crashed run (all 99 possible dummies). */
export async function destroyLeftovers (): Promise<void> {
  const a = labAddresses(99)
  const { stdout } = await exec('ip', ['-o', 'link', 'show'])
  const present = new Set(stdout.split('\n').map((l) => l.split(':')[1]?.trim().split('@')[0]))
  a.dummies = a.dummies.filter((d) => present.has(d.ifname))
  await destroyLab(a)
}
