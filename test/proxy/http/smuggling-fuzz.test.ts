// Fuzzing on loopback (no kernel): the proxy in this process, the raw recording backend and the
// client driver as child processes. Mutants of the smuggling corpus (test/helpers/smuggling/
// corpus.ts) go through the proxy; the oracle is the datapath test's: no backend interpretation
// may find a request the policy forbids, the client's responses are whole and its own, and the
// next client on the pooled upstream connection gets exactly its answer.
//   WARDEN_FUZZ_SEED=<n>   replay a run (the seed is printed)
//   WARDEN_FUZZ_COUNT=<n>  number of mutants (default 120)
import t from 'tap'
import { ADDR, billingSnapshot, startProxy } from '../../helpers/http-proxy.js'
import { CORPUS, type Case } from '../../helpers/smuggling/corpus.js'
import { ClientDriver, RecordingBackend, runCase, type Rig } from '../../helpers/smuggling/harness.js'

const seed = Number(process.env.WARDEN_FUZZ_SEED ?? (Date.now() % 2 ** 31))
const count = Number(process.env.WARDEN_FUZZ_COUNT ?? 120)
console.log(`# smuggling fuzz: WARDEN_FUZZ_SEED=${seed} WARDEN_FUZZ_COUNT=${count}`)

/** mulberry32: small, seedable. */
function rng (s: number): () => number {
  let a = s >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

const INTERESTING = ['\r', '\n', ' ', '\t', ',', '0', 'x', ':', '_', '-', '\x0b', '\x00', '"', ';', '\r\n', 'chunked', ', chunked']

/** 1..3 byte-level mutations of one string, mostly inside its first head and body start. */
function mutateText (text: string, r: () => number, ops: string[]): string {
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)]
  let s = text
  const n = 1 + Math.floor(r() * 3)
  for (let k = 0; k < n; k++) {
    const limit = Math.min(s.length, (s.indexOf('\r\n\r\n') + 40) || s.length)
    const at = Math.floor(r() * limit)
    switch (Math.floor(r() * 6)) {
      case 0: { s = s.slice(0, at) + pick(INTERESTING) + s.slice(at + 1); ops.push(`replace@${at}`); break }
      case 1: { s = s.slice(0, at) + pick(INTERESTING) + s.slice(at); ops.push(`insert@${at}`); break }
      case 2: { s = s.slice(0, at) + s.slice(at + 1); ops.push(`delete@${at}`); break }
      case 3: { // duplicate a line
        const lines = s.split('\r\n')
        const i = 1 + Math.floor(r() * Math.max(1, Math.min(lines.length - 1, 12)))
        lines.splice(i, 0, lines[Math.min(i, lines.length - 1)])
        s = lines.join('\r\n'); ops.push(`dupline${i}`); break
      }
      case 4: { // change a number
        const nums = [...s.matchAll(/\d+/g)].filter(m => (m.index ?? 0) < limit)
        if (nums.length === 0) break
        const m = pick(nums)
        const v = Number(m[0])
        const repl = pick([String(v + 1), String(Math.max(0, v - 1)), '0', '0' + m[0], String(v * 2), ' ' + m[0]])
        s = s.slice(0, m.index) + repl + s.slice((m.index ?? 0) + m[0].length); ops.push(`number@${m.index ?? 0}`); break
      }
      default: { // flip the case of a letter
        const ch = s[at]
        if (ch !== undefined) s = s.slice(0, at) + (ch === ch.toLowerCase() ? ch.toUpperCase() : ch.toLowerCase()) + s.slice(at + 1)
        ops.push(`case@${at}`)
      }
    }
  }
  return s
}

/**
 * A mutant of a corpus case: its first segment (the head, where framing lives) or another one
 * mutated; half the time the reads are kept as the case has them (the many-reads cases stay
 * aligned), else the bytes are re-split into 1..3 reads at random points.
 */
export function mutate (c: Case, r: () => number): Case {
  const ops: string[] = []
  let segments = [...c.segments]
  const i = r() < 0.7 ? 0 : Math.floor(r() * segments.length)
  segments[i] = mutateText(segments[i], r, ops)
  if (r() < 0.5) {
    const s = segments.join('')
    const cuts = Array.from({ length: Math.floor(r() * 3) }, () => Math.floor(r() * s.length)).sort((a, b) => a - b)
    segments = []
    let from = 0
    for (const cut of cuts) { if (cut > from) { segments.push(s.slice(from, cut)); from = cut } }
    segments.push(s.slice(from))
    ops.push(`split${cuts.length}`)
  }
  return { name: `${c.name} / ${ops.join(',')}`, source: c.source, segments }
}

t.test(`${count} mutants of the corpus through the proxy (seed ${seed})`, async t => {
  const backend = await RecordingBackend.start(t, null, '127.0.0.1', 0)
  const px = await startProxy(t, backend.port, await billingSnapshot())
  const client = await ClientDriver.start(t, null, '127.0.0.1', px.port, ADDR.CHECKOUT)
  const rig: Rig = { backend, client, checkAlive: async () => null, idleUpstreams: async () => px.proxy.metrics().upstream_idle } // the proxy is this process
  const r = rng(seed)
  let failed = 0
  for (let i = 0; i < count; i++) {
    const base = CORPUS[Math.floor(r() * CORPUS.length)]
    const m = mutate(base, r)
    const fails = await runCase(rig, m, 'once', `fuzz-${i}`, { idleMs: 300 })
    if (fails.length > 0) failed++
    t.strictSame(fails, [], `mutant ${i}: ${m.name} ${JSON.stringify(m.segments.join('').slice(0, 200))}`)
  }
  t.comment(`${failed} of ${count} mutants failed (seed ${seed})`)
})
