/**
 * A real etcd (Debian's `etcd-server`, 3.4) for the cluster tests, the cluster lab and the demo.
 * The agent never starts etcd: whoever runs the cluster does, with this. One member, its own
 * client and peer URLs and its own data directory; the process is ended by its PID only.
 *
 * `stop()` then `start()` keeps the data (an etcd restart); `wipe()` removes the data directory
 * while stopped, so the next `start()` is an etcd restored empty (the agents must republish).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdir, rm } from 'node:fs/promises'
import { connect } from 'node:net'

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
}

export class EtcdProcess {
  private child: ChildProcess | null = null
  private exited: Promise<void> = Promise.resolve()

  constructor (readonly opts: EtcdOptions) {}

  /** `http://host:clientPort`, the form `--kvstore etcd://host:port` names. */
  get endpoint (): string { return `${this.opts.host ?? '127.0.0.1'}:${this.opts.clientPort}` }
  get pid (): number | undefined { return this.child?.pid }
  get running (): boolean { return this.child !== null }

  /** Start and wait until the client port accepts connections (at most `timeoutMs`). */
  async start (timeoutMs = 15000): Promise<void> {
    if (this.child !== null) return
    const { name, dataDir, clientPort, peerPort, netns } = this.opts
    const host = this.opts.host ?? '127.0.0.1'
    await mkdir(dataDir, { recursive: true, mode: 0o700 })
    const args = [
      '--name', name, '--data-dir', dataDir,
      '--listen-client-urls', `http://${host}:${clientPort}`, '--advertise-client-urls', `http://${host}:${clientPort}`,
      '--listen-peer-urls', `http://${host}:${peerPort}`, '--initial-advertise-peer-urls', `http://${host}:${peerPort}`,
      '--initial-cluster', `${name}=http://${host}:${peerPort}`, '--initial-cluster-state', 'new',
      // No v2 API, no metrics listener of its own: nothing listens but the two ports above.
      '--enable-v2=false', '--log-level', 'warn', '--logger', 'zap'
    ]
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
      if (await Promise.race([portOpen(host, clientPort, netns), spawnError])) return
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
