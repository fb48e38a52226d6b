/**
 * Pushes the learned set to the agent (`deps.learn`) with coalescing: at most one call in
 * flight; requests that arrive meanwhile share the next call, which carries the set as it is
 * when that call starts. `request()` resolves once a call that started after it has settled,
 * which is what "the kernel has these IPs" means for a held answer.
 */
import type { Logger } from 'pino'
import type { LearnedName } from '../../../policy-store/src/types.js'

export class LearnSync {
  private waiters: (() => void)[] = []
  private running = false
  /** Calls to learn() made / failed (for metrics). */
  calls = 0
  failures = 0

  constructor (
    private readonly learn: (names: readonly LearnedName[]) => Promise<void>,
    private readonly currentSet: () => LearnedName[],
    private readonly log: Logger,
    /** A learn() that has not settled by then is given up on, so one hung call cannot stall learning forever. */
    private readonly callTimeoutMs: number
  ) {}

  request (): Promise<void> {
    return new Promise(resolve => {
      this.waiters.push(resolve)
      if (!this.running) void this.run()
    })
  }

  private async run (): Promise<void> {
    this.running = true
    while (this.waiters.length > 0) {
      const batch = this.waiters
      this.waiters = []
      const set = this.currentSet()
      this.calls++
      let timer: NodeJS.Timeout | undefined
      try {
        await Promise.race([
          this.learn(set),
          new Promise<never>((_resolve, reject) => {
            timer = setTimeout(() => reject(new Error(`learn() did not settle in ${this.callTimeoutMs} ms`)), this.callTimeoutMs)
            timer.unref()
          })
        ])
      } catch (err) {
        this.failures++
        this.log.error({ err, names: set.length }, 'dns: pushing learned names failed')
      } finally {
        clearTimeout(timer)
      }
      for (const w of batch) w()
    }
    this.running = false
  }
}
