/**
 * Starts and stops the warden agent for the warden scenarios, through its CLI exactly as a user
 * runs it (`warden run ...`), in the host namespace. Ready = the pino line `warden agent ready`.
 * After SIGTERM, `warden uninstall` removes whatever kernel state is left, so the next scenario
 * (or `direct`) runs on a clean path.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Proc } from './procs.js'

const exec = promisify(execFile)

export const AGENT = {
  bpffs: '/sys/fs/bpf/wbench',
  routeTable: 2190,
  proxyPort: 15101,
  dnsProxyPort: 15153,
  metrics: '127.0.0.1:9963'
} as const

/** bin/warden.js of this checkout (this module runs from dist/bench/). */
export function wardenBin (): string {
  return join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'warden.js')
}

export interface AgentFiles {
  /** Policy file name -> content. */
  policies: Record<string, string>
  endpointsYaml: string
}

export class WardenAgent {
  private constructor (readonly proc: Proc, readonly stateDir: string) {}

  get pid (): number { return this.proc.pid }

  /**
   * Writes the policy directory and endpoints file under `dir`, starts the agent and waits for
   * its ready line. Throws (with the agent's output) when it exits or is not ready in time; the
   * caller turns that into a `skipped` reason, never into numbers.
   */
  static async start (dir: string, files: AgentFiles, readyTimeoutMs = 20_000, extraArgs: readonly string[] = []): Promise<WardenAgent> {
    const policies = join(dir, 'policies')
    const stateDir = join(dir, 'state')
    await mkdir(policies, { recursive: true })
    await mkdir(stateDir, { recursive: true })
    for (const [name, text] of Object.entries(files.policies)) await writeFile(join(policies, name), text)
    const endpoints = join(dir, 'endpoints.yaml')
    await writeFile(endpoints, files.endpointsYaml)
    const proc = new Proc([process.execPath, wardenBin(), 'run',
      '--policies', policies, '--endpoints', endpoints,
      '--bpffs', AGENT.bpffs, '--route-table', String(AGENT.routeTable),
      '--proxy-port', String(AGENT.proxyPort), '--dns-proxy-port', String(AGENT.dnsProxyPort),
      '--state-dir', stateDir, '--metrics', AGENT.metrics, '--api-socket', join(dir, 'warden.sock'), ...extraArgs])
    const agent = new WardenAgent(proc, stateDir)
    try {
      await proc.waitForLine((line) => {
        try { return (JSON.parse(line) as { msg?: unknown }).msg === 'warden agent ready' } catch { return false }
      }, readyTimeoutMs)
    } catch (err) {
      await agent.stop()
      throw new AgentNotReady(err as Error, proc)
    }
    return agent
  }

  /** SIGTERM, then `warden uninstall` (always, even when the agent crashed). */
  async stop (): Promise<void> {
    await this.proc.stop('SIGTERM', 10_000)
    await uninstallAgent()
  }
}

/** The agent did not come up: why, with the last thing it logged (its pino `msg`, or raw text). */
export class AgentNotReady extends Error {
  readonly code = 'WARDEN_ERR_BENCH_AGENT_NOT_READY'
  constructor (cause: Error, proc: Proc) {
    const lines = proc.output().split('\n').filter((l) => l.trim() !== '')
    const last = lines[lines.length - 1] ?? ''
    let said = last
    try {
      const line = JSON.parse(last) as { msg?: unknown, err?: { message?: unknown } } | null
      const m = line?.err?.message ?? line?.msg
      if (typeof m === 'string') said = m
    } catch { /* not JSON */ }
    const why = cause.message.split(':')[0]
    super(`${why}; last output: ${said.slice(0, 300)}`)
    this.name = 'AgentNotReady'
  }
}

/** Removes the agent's kernel state for the bench's bpffs and route table; errors are ignored. */
export async function uninstallAgent (): Promise<void> {
  try {
    await exec(process.execPath, [wardenBin(), 'uninstall', '--bpffs', AGENT.bpffs, '--route-table', String(AGENT.routeTable)], { timeout: 30_000 })
  } catch { /* nothing installed, or uninstall not implemented yet */ }
}
