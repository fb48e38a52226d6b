// Needs root and the real kernel (namespaces, tc eBPF, bpf_sk_assign); CI runs as root.
// Issue 15's differential smuggling test through the real datapath, part 1 of 2 (the corpus
// test/helpers/smuggling/corpus.ts, every even-numbered case): checkout-service writes each case to
// billing-service:9090, `warden run` enforces "checkout may POST /api/v1/charge", and a raw
// recording backend answers. Each case is sent once, and twice on one connection followed by a
// normal request; then a fresh client sends a normal request (the next client on the pooled
// upstream connection). Fails if any backend interpretation (test/helpers/smuggling/parse.ts)
// finds a request the policy forbids, if a client's response is corrupted, cut short, someone
// else's or out of order, if a refusal the issue asks for is missing, or if the agent dies.
import t from 'tap'
import { CORPUS } from '../helpers/smuggling/corpus.js'
import { runCase } from '../helpers/smuggling/harness.js'
import { accessLines, smugglingLab } from '../helpers/smuggling/lab.js'

const PART = 1

t.test('smuggling corpus through the datapath', async t => {
  const lab = await smugglingLab(t, PART)
  let n = 0
  for (const [i, c] of CORPUS.entries()) {
    if (i % 2 !== PART - 1) continue
    for (const mode of ['once', 'twice'] as const) {
      const from = lab.session.agentLog().length
      const fails = await runCase(lab.rig, c, mode, `p${PART}-${n++}`)
      if (fails.some(f => f.includes('forbidden request'))) {
        await new Promise(resolve => setTimeout(resolve, 300)) // the access log is flushed every 100 ms
        fails.push(`what the access log shows for it: ${accessLines(lab.session, from).join('; ') || 'nothing'}`)
      }
      t.strictSame(fails, [], `${c.name} (${mode}) [${c.source}]`)
    }
  }
})
