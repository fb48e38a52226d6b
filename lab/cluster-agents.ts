/**
 * `warden run` inside a cluster lab's node (cluster.ts), for the tests, the demo and the
 * benchmarks: in the node's namespace, with `--uplink ul0`, the node's endpoints file, and a
 * bpffs and state directory of its own under the lab's work directory. Started detached with
 * its output in `<workDir>/<node>/agent.log`; stopped by its PID only.
 */
import { spawn } from 'node:child_process'
import { closeSync, existsSync, mkdirSync, openSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { bpffsRoot, endpointsFile, nodeNs, type ClusterSpec } from './cluster.js'
import { LabError } from './lab.js'

export interface NodeAgentOptions {
  policies: string
  /** Extra `warden run` flags (ports, `--kvstore`, ...). */
  args?: string[]
  /** Node's own flags before the script (a benchmark's `--cpu-prof`). */
  nodeArgs?: string[]
}

/** bin/warden.js of this checkout, from lab/ (sources) or dist/lab/ (built). */
function wardenBin (): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'bin', 'warden.js'))) {
    const up = dirname(dir)
    if (up === dir) throw new LabError('cannot find bin/warden.js')
    dir = up
  }
  return join(dir, 'bin', 'warden.js')
}

function alive (pid: number): boolean {
  try { process.kill(pid, 0); return true } catch { return false }
}

export class NodeAgent {
  pid: number | undefined
  constructor (readonly spec: ClusterSpec, readonly node: string, readonly opts: NodeAgentOptions) {}

  /** The node agent's local API (`warden status --api-socket ...`). */
  get apiSocket (): string { return join(this.spec.workDir, this.node, 'warden.sock') }
  get logPath (): string { return join(this.spec.workDir, this.node, 'agent.log') }
  log (): string { try { return readFileSync(this.logPath, 'utf8') } catch { return '' } }

  /** Start and wait for `warden agent ready` (30 s at most). */
  async start (): Promise<void> {
    if (this.pid !== undefined && alive(this.pid)) return
    const { spec, node } = this
    const dir = join(spec.workDir, node)
    mkdirSync(dir, { recursive: true })
    const before = this.log().length
    const out = openSync(this.logPath, 'a')
    const args = ['netns', 'exec', nodeNs(spec, node), process.execPath, ...(this.opts.nodeArgs ?? []), wardenBin(), 'run',
      '--policies', this.opts.policies, '--endpoints', endpointsFile(spec, node), '--uplink', 'ul0',
      '--bpffs', join(bpffsRoot(spec), node), '--state-dir', join(dir, 'state'),
      // the socket path is the filesystem's, shared by every node's namespace: one per node
      '--api-socket', this.apiSocket, ...(this.opts.args ?? [])]
    // `ip netns exec` execs node: the PID is the agent's own
    const child = spawn('ip', args, { stdio: ['ignore', out, out], detached: true })
    closeSync(out)
    child.unref()
    const pid = child.pid
    if (pid === undefined) throw new LabError(`node ${node}: the agent could not be started`)
    this.pid = pid
    const deadline = Date.now() + 30_000
    while (Date.now() < deadline) {
      if (this.log().slice(before).includes('warden agent ready')) return
      if (!alive(pid)) break
      await sleep(100)
    }
    throw new LabError(`node ${node}: warden run did not become ready:\n${this.log().slice(before).split('\n').slice(-20).join('\n')}`)
  }

  /** SIGTERM (SIGKILL with `hard`), and wait until it is gone. */
  async stop (hard = false): Promise<void> {
    const pid = this.pid
    if (pid === undefined) return
    try { process.kill(pid, hard ? 'SIGKILL' : 'SIGTERM') } catch { /* already gone */ }
    const deadline = Date.now() + 5000
    while (alive(pid)) {
      if (Date.now() > deadline) { try { process.kill(pid, 'SIGKILL') } catch { /* already gone */ } }
      await sleep(25)
    }
    this.pid = undefined
  }
}
