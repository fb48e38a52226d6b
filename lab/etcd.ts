/**
 * A real etcd (Debian's `etcd-server`, 3.4) for the cluster tests, the cluster lab and the demo.
 * The agent never starts etcd: whoever runs the cluster does, with this. One member, its own
 * client and peer URLs and its own data directory; the process is ended by its PID only.
 *
 * `stop()` then `start()` keeps the data (an etcd restart); `wipe()` removes the data directory
 * while stopped, so the next `start()` is an etcd restored empty (the agents must republish).
 *
 * With `tls`, the client URL is https and etcd requires a client certificate signed by the
 * trusted CA (`--client-cert-auth`), as a production etcd does; the peer URL stays plain (one
 * member, on its own address). With `auth`, a fresh data directory gets a `root` user and one
 * user whose role may read and write `cilium/state/` only, then authentication is enabled
 * (etcdctl, Debian's `etcd-client`).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, rm } from 'node:fs/promises'
import { connect } from 'node:net'
import { join } from 'node:path'

export interface EtcdOptions {
  /** Member name (also in the log). */
  name: string
  dataDir: string
  /** Address the client and peer URLs listen on (default 127.0.0.1). */
  host?: string
  clientPort: number
  peerPort: number
  /** Run inside this network namespace (`ip netns exec`); default: the current one. */
  netns?: string
  /** Where etcd's own log goes (default: discarded). */
  logFile?: string
  /** Serve clients over TLS only, and require a client certificate signed by `trustedCaFile`. */
  tls?: EtcdTls
  /** Enable authentication with these users (set up when the data directory is new). */
  auth?: EtcdAuth
  /** More etcd flags (tests: e.g. a short `--auth-token-ttl`). */
  extraArgs?: string[]
}

export interface EtcdTls {
  certFile: string
  keyFile: string
  trustedCaFile: string
  /** A client certificate etcdctl uses to set up the users. */
  clientCertFile: string
  clientKeyFile: string
}

export interface EtcdAuth {
  rootPassword: string
  /** One user whose role may read and write the prefix `cilium/` (the agents' user). */
  user: string
  password: string
}

/** etcd's flags for one member listening on `host`. */
export function etcdArgs (o: { name: string, dataDir: string, host: string, clientPort: number, peerPort: number, tls?: EtcdTls }): string[] {
  const client = `${o.tls === undefined ? 'http' : 'https'}://${o.host}:${o.clientPort}`
  const args = [
    '--name', o.name, '--data-dir', o.dataDir,
    '--listen-client-urls', client, '--advertise-client-urls', client,
    '--listen-peer-urls', `http://${o.host}:${o.peerPort}`, '--initial-advertise-peer-urls', `http://${o.host}:${o.peerPort}`,
    '--initial-cluster', `${o.name}=http://${o.host}:${o.peerPort}`, '--initial-cluster-state', 'new',
    // No v2 API, no metrics listener of its own: nothing listens but the two ports above.
    '--enable-v2=false', '--log-level', 'warn', '--logger', 'zap'
  ]
  if (o.tls !== undefined) args.push('--cert-file', o.tls.certFile, '--key-file', o.tls.keyFile, '--trusted-ca-file', o.tls.trustedCaFile, '--client-cert-auth')
  return args
}

/**
 * Create `root` and the agents' user, then enable authentication, with etcdctl at `url` (inside
 * `netns` if given). Passwords go on etcdctl's stdin, not its command line.
 */
export async function setupEtcdAuth (url: string, auth: EtcdAuth, tls?: EtcdTls, netns?: string): Promise<void> {
  const base = ['--endpoints', url, '--dial-timeout', '5s']
  if (tls !== undefined) base.push('--cacert', tls.trustedCaFile, '--cert', tls.clientCertFile, '--key', tls.clientKeyFile)
  const ctl = async (args: string[], input?: string): Promise<void> => {
    const [cmd, argv] = netns === undefined ? ['etcdctl', [...base, ...args]] : ['ip', ['netns', 'exec', netns, 'etcdctl', ...base, ...args]]
    await new Promise<void>((resolve, reject) => {
      const p = execFile(cmd, argv, { env: { ...process.env, ETCDCTL_API: '3' }, timeout: 15_000 }, (err, _out, stderr) => {
        if (err !== null) reject(new Error(`etcdctl ${args.slice(0, 2).join(' ')}: ${stderr.trim() || err.message}`))
        else resolve()
      })
      // etcdctl may exit before reading its stdin (most commands never do): its exit status
      // says how it went, a broken pipe here says nothing more
      p.stdin?.on('error', () => {})
      p.stdin?.end(input ?? '')
    })
  }
  await ctl(['user', 'add', 'root', '--interactive=false'], auth.rootPassword + '\n')
  await ctl(['user', 'grant-role', 'root', 'root'])
  await ctl(['role', 'add', 'warden-agent'])
  await ctl(['role', 'grant-permission', 'warden-agent', '--prefix=true', 'readwrite', 'cilium/'])
  await ctl(['user', 'add', auth.user, '--interactive=false'], auth.password + '\n')
  await ctl(['user', 'grant-role', auth.user, 'warden-agent'])
  await ctl(['auth', 'enable'])
}

export class EtcdProcess {
  private child: ChildProcess | null = null
  private exited: Promise<void> = Promise.resolve()

  constructor (readonly opts: EtcdOptions) {}

  /** `host:clientPort`, the form `--kvstore etcd://host:port` names. */
  get endpoint (): string { return `${this.opts.host ?? '127.0.0.1'}:${this.opts.clientPort}` }
  /** The client URL: `https://host:port` with TLS, else `http://host:port`. */
  get url (): string { return `${this.opts.tls === undefined ? 'http' : 'https'}://${this.endpoint}` }
  get pid (): number | undefined { return this.child?.pid }
  get running (): boolean { return this.child !== null }

  /** Start and wait until the client port accepts connections (at most `timeoutMs`). */
  async start (timeoutMs = 15000): Promise<void> {
    if (this.child !== null) return
    const { name, dataDir, clientPort, peerPort, netns } = this.opts
    const host = this.opts.host ?? '127.0.0.1'
    // etcd keeps its users in its data: a new data directory is set up again
    const fresh = !existsSync(join(dataDir, 'member'))
    await mkdir(dataDir, { recursive: true, mode: 0o700 })
    const args = [...etcdArgs({ name, dataDir, host, clientPort, peerPort, tls: this.opts.tls }), ...(this.opts.extraArgs ?? [])]
    if (this.opts.logFile !== undefined) args.push('--log-outputs', this.opts.logFile)
    const [cmd, argv] = netns === undefined ? ['etcd', args] : ['ip', ['netns', 'exec', netns, 'etcd', ...args]]
    const child = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr?.on('data', (d: Buffer) => { if (stderr.length < 8192) stderr += String(d) })
    this.child = child
    this.exited = new Promise((resolve) => child.once('exit', () => { if (this.child === child) this.child = null; resolve() }))
    const spawnError = new Promise<never>((_resolve, reject) => child.once('error', reject))
    const deadline = Date.now() + timeoutMs
    for (;;) {
      if (this.child !== child) throw new Error(`etcd ${name} exited at start: ${stderr.trim().slice(0, 2000)}`)
      if (await Promise.race([portOpen(host, clientPort, netns), spawnError])) {
        if (fresh && this.opts.auth !== undefined) await setupEtcdAuth(this.url, this.opts.auth, this.opts.tls, netns)
        return
      }
      if (Date.now() > deadline) {
        await this.stop()
        throw new Error(`etcd ${name} not listening on ${host}:${clientPort} after ${timeoutMs} ms: ${stderr.trim().slice(0, 2000)}`)
      }
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }

  /** SIGTERM, then SIGKILL after 5 s; waits for the exit. The data directory stays. */
  async stop (): Promise<void> {
    const child = this.child
    if (child === null || child.pid === undefined) return
    process.kill(child.pid, 'SIGTERM')
    const timer = setTimeout(() => { if (this.child === child && child.pid !== undefined) process.kill(child.pid, 'SIGKILL') }, 5000)
    await this.exited
    clearTimeout(timer)
  }

  /** Remove the data directory (only while stopped). */
  async wipe (): Promise<void> {
    if (this.child !== null) throw new Error('etcd: wipe() while running')
    await rm(this.opts.dataDir, { recursive: true, force: true })
  }
}

/** Does host:port accept a TCP connection? (In `netns`: through `ip netns exec`.) */
async function portOpen (host: string, port: number, netns?: string): Promise<boolean> {
  if (netns !== undefined) {
    return await new Promise((resolve) => {
      const p = spawn('ip', ['netns', 'exec', netns, 'bash', '-c', `exec 3<>/dev/tcp/${host}/${port}`], { stdio: 'ignore' })
      p.once('exit', (code) => resolve(code === 0))
      p.once('error', () => resolve(false))
    })
  }
  return await new Promise((resolve) => {
    const s = connect(port, host)
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => resolve(false))
  })
}
