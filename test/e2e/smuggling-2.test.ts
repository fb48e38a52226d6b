// Needs root and the real kernel (namespaces, tc eBPF, bpf_sk_assign); CI runs as root.
// The differential smuggling test through the real datapath, part 2 of 2 (the corpus
// test/helpers/smuggling/corpus.ts, every odd-numbered case): checkout-service writes each case to
// billing-service:9090, `warden run` enforces "checkout may POST /api/v1/charge", and a raw
// recording backend answers. Each case is sent once, and twice on one connection followed by a
// normal request; then a fresh client sends a normal request (the next client on the pooled
// upstream connection). Fails if any backend interpretation (test/helpers/smuggling/parse.ts)
// finds a request the policy forbids, if a client's response is corrupted, cut short, someone
// else's or out of order, if a refusal the policy requires is missing, or if the agent dies.
import t from 'tap'
import { runCorpusPart } from '../helpers/smuggling/lab.js'

t.test('smuggling corpus through the datapath', async t => {
  await runCorpusPart(t, 2, 2)
})
