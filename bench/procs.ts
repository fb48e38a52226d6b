/**
 * Processes of the harness (upstream, peers, agent, load generator): started as children, tracked
 * by PID, stopped by PID (SIGTERM, then SIGKILL after a grace period), and measured from /proc.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { appendFileSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { execFileSync } from 'node:child_process'

export class ProcError extends Error {
  readonly code = 'WARDEN_ERR_BENCH_PROC'
  constructor (message: string, readonly argv: string[], readonly output: string) {
    // The output (what the process said) first: it is what a reader of a `skipped` reason needs.
    super(`${message}${output === '' ? '' : `: ${output.replace(/\s*\n\s*/g, ' / ')}`} [${argv.slice(0, 4).join(' ')} ...]`)
    this.name = 'ProcError'
  }
}

const TAIL = 4096

/** A child process with the tails of its output and a promise of its exit. */
export class Proc {
  readonly child: ChildProcess
  readonly pid: number
  stdoutTail = ''
  stderrTail = ''
  exitCode: number | null = null
  exitSignal: string | null = null
  readonly exited: Promise<void>
  private readonly lineListeners: ((line: string) => void)[] = []
  private partial = ''

  constructor (readonly argv: string[], opts: { cwd?: string, env?: NodeJS.ProcessEnv } = {}) {
    this.child = spawn(argv[0], argv.slice(1), { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] })
    if (this.child.pid === undefined) throw new ProcError('could not start', argv, '')
    this.pid = this.child.pid
    if (registryFile !== null) appendFileSync(registryFile, `${this.pid} ${startTime(this.pid)}\n`)
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => { this.exitCode = code; this.exitSignal = signal; resolve() })
      this.child.once('error', (err) => { this.stderrTail += String(err); this.exitCode = -1; resolve() })
    })
    this.child.stdout?.setEncoding('utf8').on('data', (s: string) => {
      this.stdoutTail = (this.stdoutTail + s).slice(-TAIL)
      if (this.lineListeners.length === 0) return
      const lines = (this.partial + s).split('\n')
      this.partial = lines.pop() ?? ''
      for (const line of lines) for (const f of this.lineListeners) f(line)
    })
    this.child.stderr?.setEncoding('utf8').on('data', (s: string) => { this.stderrTail = (this.stderrTail + s).slice(-TAIL) })
  }

  /** Calls `f` with every complete stdout line from now on. */
  onLine (f: (line: string) => void): void { this.lineListeners.push(f) }

  get running (): boolean { return this.exitCode === null && this.exitSignal === null }

  output (): string {
    return [this.stdoutTail.trim(), this.stderrTail.trim()].filter((s) => s !== '').join('\n').slice(-1500)
  }

  /** Resolves on the first stdout line that satisfies `match`; rejects on exit or timeout. */
  async waitForLine (match: (line: string) => boolean, timeoutMs: number): Promise<string> {
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => { done(); reject(new ProcError(`not ready after ${timeoutMs} ms`, this.argv, this.output())) }, timeoutMs)
      const onLine = (line: string): void => { if (match(line)) { done(); resolve(line) } }
      const done = (): void => {
        clearTimeout(timer)
        const i = this.lineListeners.indexOf(onLine)
        if (i >= 0) this.lineListeners.splice(i, 1)
      }
      this.lineListeners.push(onLine)
      this.exited.then(() => { done(); reject(new ProcError(`exited (${this.exitCode ?? this.exitSignal ?? '?'}) before it was ready`, this.argv, this.output())) }, () => {})
    })
  }

  /** SIGTERM (or `signal`), then SIGKILL after `graceMs`; resolves when the process is gone. */
  async stop (signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<void> {
    if (!this.running) return
    try { process.kill(this.pid, signal) } catch { /* gone */ }
    const timer = setTimeout(() => { try { process.kill(this.pid, 'SIGKILL') } catch { /* gone */ } }, graceMs)
    await this.exited
    clearTimeout(timer)
  }
}

/**
 * PIDs (with their start times, against PID reuse) of every process the harness started, so that
 * `--cleanup` can stop what a killed harness left running, by PID and nothing else.
 */
let registryFile: string | null = null
export function setProcRegistry (file: string | null): void {
  registryFile = file
  // The first line is the harness itself: --cleanup leaves a live harness alone.
  if (file !== null) writeFileSync(file, `harness ${process.pid} ${startTime(process.pid)}\n`)
}

function startTime (pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '?' // field 22: starttime
  } catch { return '?' }
}

/** Kills (SIGKILL) the registered processes that are still the same processes; removes the file. */
export function killRegistered (file: string): number {
  let text: string
  try { text = readFileSync(file, 'utf8') } catch { return 0 }
  const [first, ...rest] = text.split('\n')
  const [, hPid, hStart] = first.split(' ')
  if (hPid !== undefined && hPid !== String(process.pid) && startTime(Number(hPid)) === hStart) {
    throw new ProcError(`a bench run (PID ${hPid}) is still running; stop it first`, [], '')
  }
  let killed = 0
  for (const line of rest) {
    const [pid, start] = line.split(' ')
    if (pid === undefined || pid === '' || start === '?' || startTime(Number(pid)) !== start) continue
    for (const p of processTree(Number(pid)).reverse()) { try { process.kill(p, 'SIGKILL'); killed++ } catch { /* gone */ } }
  }
  rmSync(file, { force: true })
  return killed
}

/** Polls a TCP connect to host:port (from the host namespace) until it succeeds. */
export async function waitForTcp (host: string, port: number, timeoutMs: number, proc?: Proc): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host, port })
      s.once('connect', () => { s.destroy(); resolve(true) })
      s.once('error', () => { s.destroy(); resolve(false) })
    })
    if (ok) return
    if (proc !== undefined && !proc.running) throw new ProcError(`exited (${proc.exitCode ?? proc.exitSignal ?? '?'}) before listening on ${host}:${port}`, proc.argv, proc.output())
    if (Date.now() > deadline) throw new ProcError(`nothing listening on ${host}:${port} after ${timeoutMs} ms`, proc?.argv ?? [], proc?.output() ?? '')
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

let clkTck = 0
function ticksPerSecond (): number {
  if (clkTck === 0) {
    try { clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100 } catch { clkTck = 100 }
  }
  return clkTck
}

/** utime+stime of one process (all its threads), in seconds; 0 when it is gone. */
export function processCpuSeconds (pid: number): number {
  let stat: string
  try { stat = readFileSync(`/proc/${pid}/stat`, 'utf8') } catch { return 0 }
  // Fields after the command name (which may contain spaces and parentheses): state is field 3.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(f[11]) + Number(f[12])) / ticksPerSecond() // utime (14), stime (15)
}

/** A process and its live descendants (nginx master + workers). */
export function processTree (pid: number): number[] {
  const out = [pid]
  for (let i = 0; i < out.length; i++) {
    let tasks: string[]
    try { tasks = readdirSync(`/proc/${out[i]}/task`) } catch { continue }
    for (const tid of tasks) {
      let children: string
      try { children = readFileSync(`/proc/${out[i]}/task/${tid}/children`, 'utf8') } catch { continue }
      for (const c of children.trim().split(' ')) if (c !== '') out.push(Number(c))
    }
  }
  return out
}

/** CPU seconds of a process tree, keyed by PID, so a delta only counts processes alive at both ends. */
export function treeCpu (pid: number): Map<number, number> {
  return new Map(processTree(pid).map((p) => [p, processCpuSeconds(p)]))
}

export function cpuDelta (before: Map<number, number>, after: Map<number, number>): number {
  let sum = 0
  for (const [pid, t] of after) sum += t - (before.get(pid) ?? 0)
  return sum
}

/** Busy and total jiffies of the whole machine from /proc/stat (for the machine's load during a run). */
export function machineCpu (): { busy: number, total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]
  const v = line.trim().split(/\s+/).slice(1).map(Number)
  const idle = (v[3] ?? 0) + (v[4] ?? 0)
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0)
  return { busy: (total - idle) / ticksPerSecond(), total: total / ticksPerSecond() }
}
