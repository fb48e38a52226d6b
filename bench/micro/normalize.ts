/**
 * Path normalisation per request (proxy/src/http/normalize.ts): the regex fast path of
 * `normalizeTarget` against the character loop (`normalizeTargetSlow`) on targets that need no
 * change (nearly all requests), and one that does. CPU time per call, best of ROUNDS.
 *
 * Build, then run: `node dist/bench/micro/normalize.js` (N=2000000, ROUNDS=5).
 */
import { normalizeTarget, normalizeTargetSlow } from '../../proxy/src/http/normalize.js'

const N = Number(process.env.N ?? 2_000_000)
const targets = ['/healthz', '/api/v1/charge', '/api/v1/invoices/42?full=1&fields=id,amount', '/api/v1/invoices/../charge']
const fns: Array<[string, (t: string) => string | null]> = [['regex fast path', normalizeTarget], ['character loop', normalizeTargetSlow]]

const best = new Map<string, number>()
let sink = 0
for (let r = 0; r < Number(process.env.ROUNDS ?? 5); r++) {
  for (const target of targets) {
    for (const [name, fn] of fns) {
      const t0 = process.cpuUsage()
      for (let i = 0; i < N; i++) sink += (fn(target) ?? '').length
      const d = process.cpuUsage(t0)
      const key = `${name.padEnd(16)} ${target}`
      best.set(key, Math.min(best.get(key) ?? Infinity, (d.user + d.system) * 1000 / N))
    }
  }
}
for (const [k, ns] of best) console.log(`${k.padEnd(66)} ${ns.toFixed(1).padStart(6)} ns`)
if (sink === 0) console.log('')
