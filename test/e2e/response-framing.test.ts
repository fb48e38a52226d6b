// Needs root and the real kernel (namespaces, tc eBPF, bpf_sk_assign); CI runs as root.
// Response framings through the real datapath: the recording backend on
// billing-service:9090 (test/helpers/smuggling/lab.ts) answers client A's request with one framing
// (`X-Respond: <mode>`): close-delimited HTTP/1.1, HTTP/1.0 without a length, chunked with a
// trailer, 1xx before the final response, an extra unsolicited response, a response before the
// request body ends. Client A must get exactly its response; then clients B (a chunked answer) and
// C (a plain one), each on a fresh connection and so on the pooled upstream connection when the
// proxy kept it, must get exactly theirs; and the agent must live. Two rounds per framing (the
// issue's crash came with the second close-delimited response).
import t from 'tap'
import { checkExactly, echoed, waitForNoIdleUpstream } from '../helpers/smuggling/harness.js'
import { smugglingLab } from '../helpers/smuggling/lab.js'

const FRAMINGS = ['close', 'http10', 'trailers', 'chunked', '1xx', 'extra', 'early'] as const

function request (marker: string, respond: string): string {
  return `POST /api/v1/charge HTTP/1.1\r\nHost: billing-service\r\n${respond === '' ? '' : `X-Respond: ${respond}\r\n`}Content-Length: ${marker.length}\r\n\r\n${marker}`
}

t.test('response framings from the backend', async t => {
  const lab = await smugglingLab(t, 3)
  const { client, backend } = lab.rig
  for (const mode of FRAMINGS) {
    await backend.reset() // fresh upstream connections for each framing
    await waitForNoIdleUpstream(lab.rig) // the proxy sees the close first
    for (const round of [1, 2]) {
      const fails: string[] = []
      const a = `a-${mode}-${round}`
      if (mode === 'early') {
        // the backend answers once it has the head; the rest of the body comes after that answer
        const r = await client.session([request(a, mode).slice(0, -4), a.slice(-4)], { gapMs: 400, until: echoed('') })
        fails.push(...checkExactly(r, '', `client A (${mode})`))
      } else {
        const r = await client.session([request(a, mode)], { until: echoed(a) })
        fails.push(...checkExactly(r, a, `client A (${mode})`, mode === '1xx'))
      }
      const b = `b-${mode}-${round}`
      fails.push(...checkExactly(await client.session([request(b, 'chunked')], { until: echoed(b) }), b, `client B after ${mode} (chunked answer)`))
      const c = `c-${mode}-${round}`
      fails.push(...checkExactly(await client.session([request(c, '')], { until: echoed(c) }), c, `client C after ${mode}`))
      const dead = await lab.rig.checkAlive()
      if (dead !== null) fails.push(dead)
      t.strictSame(fails, [], `${mode}, round ${round}`)
    }
  }
})
