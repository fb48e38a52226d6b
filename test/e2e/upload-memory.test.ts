// Needs root and the real kernel (namespaces, tc eBPF, bpf_sk_assign); CI runs as root.
// Request-body backpressure through the real datapath: billing-service's backend reads a request head
// and then stops reading (`X-Respond: stall`, test/helpers/smuggling/lab.ts); checkout uploads
// 128 MiB. The client must not get more than 4 MiB past what the kernel's socket queues on the
// path hold (measured with ss in every namespace at the moment the upload stalled), and the
// agent's resident memory must stay flat.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { normalRequest } from '../helpers/smuggling/corpus.js'
import { checkExactly, echoed } from '../helpers/smuggling/harness.js'
import { smugglingLab } from '../helpers/smuggling/lab.js'

const MiB = 1024 * 1024
const TOTAL = 128 * MiB
const PROXY_BOUND = 4 * MiB
const RSS_BOUND = 24 * MiB

function rss (pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (m === null) throw new Error(`no VmRSS for ${pid}`)
  return Number(m[1]) * 1024
}

/** Recv-Q + Send-Q of the TCP sockets in `ns` (null: here) whose local or peer port matches. */
function queued (ns: string | null, match: (local: number, peer: number) => boolean): number {
  const argv = ['ss', '-tnH']
  const out = ns === null ? execFileSync(argv[0], argv.slice(1), { encoding: 'utf8' }) : execFileSync('ip', ['netns', 'exec', ns, ...argv], { encoding: 'utf8' })
  let sum = 0
  for (const line of out.split('\n')) {
    const f = line.trim().split(/\s+/)
    if (f.length < 5) continue
    const port = (a: string): number => Number(a.slice(a.lastIndexOf(':') + 1))
    if (match(port(f[3]), port(f[4]))) sum += Number(f[1]) + Number(f[2])
  }
  return sum
}

const mib = (n: number): string => (n / MiB).toFixed(1)

t.test('an upstream that stops reading: the client cannot fill the proxy', async t => {
  const lab = await smugglingLab(t, 4)
  const { client, backend } = lab.rig
  t.strictSame(checkExactly(await client.session([normalRequest('warm-up')], { until: echoed('warm-up') }), 'warm-up', 'warm-up'), [], 'the path works')
  const pid = lab.agentPid()
  if (pid === undefined) throw new Error('no agent pid')
  const before = rss(pid)

  const head = `POST /api/v1/charge HTTP/1.1\r\nHost: billing-service\r\nX-Respond: stall\r\nContent-Length: ${TOTAL}\r\n\r\n`
  const up = await client.upload(head, TOTAL, 3000)
  const after = rss(pid)
  const stalled = (await backend.dump()).find(c => c.stalled)
  t.ok(stalled, 'the backend got the head and stopped reading')
  const rp = stalled?.remotePort ?? -1
  const kernel = queued(lab.session.ns('checkout-service'), (l) => l === up.localPort) +
    queued(null, (l, p) => p === up.localPort || l === rp) +
    queued(lab.session.ns('billing-service'), (_l, p) => p === rp)
  const backendRead = stalled?.bytes.length ?? 0
  await client.close(up.ref)

  const inProxy = up.written - kernel - backendRead
  t.ok(up.written < TOTAL, `the upload stalled (the client wrote ${mib(up.written)} of ${mib(TOTAL)} MiB)`)
  t.ok(inProxy <= PROXY_BOUND,
    `the client pushed ${mib(up.written)} MiB; the socket queues on the path held ${mib(kernel)} MiB and the backend read ${mib(backendRead)} MiB, ` +
    `so the proxy held ${mib(inProxy)} MiB (bound ${mib(PROXY_BOUND)} MiB)`)
  t.ok(after - before <= RSS_BOUND, `the agent's RSS went from ${mib(before)} to ${mib(after)} MiB (bound: +${mib(RSS_BOUND)} MiB)`)
  t.equal(await lab.rig.checkAlive(), null, 'the agent lives')
})
