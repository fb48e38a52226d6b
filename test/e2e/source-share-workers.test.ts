// Needs root and the real kernel (namespaces, tc eBPF, bpf_sk_assign); CI runs as root.
// `warden run --http-workers 2 --http-max-connections-per-source 2`: the share is per proxy
// worker. A client pod opens connections one after the other through the proxy, each sending
// one request and then kept open; the kernel gives each connection to one of the two proxies
// (SO_REUSEPORT, by the flow's hash), and each proxy lets that client address hold 2. So the
// pod can hold at most workers x share = 4 connections at once; every connection past that is
// reset at accept and counted in warden_http_connections_refused_source_total. While the pod is
// at its share, another pod still gets through.
// Its own lab: datapath lab 106 (netns wdp106-*, 198.18.122.0/24, table 2206, ports 17060-17062),
// the agent's files and API socket in a temp dir.
import t from 'tap'
import { get } from 'node:http'
import { agentLab, curlStatus, startHttpServer } from '../helpers/agent-lab.js'
import { isRoot } from '../helpers/lab-fixture.js'
import { poll } from '../helpers/poll.js'
import { completeLines } from '../../demo/log-lines.js'

const WORKERS = 2
const SHARE = 2
/**
 * Connections the client tries. The kernel hashes each to a proxy; each proxy holds the pod's
 * share as soon as SHARE of them reached it, so with 32 tries both proxies are full unless the
 * hash sent 31 or more of them to one proxy (odds 33 in 2^31).
 */
const TRIES = 32

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-http, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}, {matchLabels: {app: other}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET, path: "/.*"}]}}]
`

// Opens `tries` connections one at a time, each sending one GET and waiting for the response
// head (held: kept open) or the connection's end (refused). Prints {held, refused, other}; then,
// for each line on stdin, {open}: how many held connections are still open. Exits when stdin ends.
const CLIENT = `
const [host, port, tries] = process.argv.slice(1)
const net = require('net')
const held = []
let refused = 0
const other = []
function one () {
  return new Promise((resolve) => {
    const c = net.connect(+port, host)
    let head = ''
    let done = false
    const end = (r) => { if (!done) { done = true; clearTimeout(timer); resolve(r) } }
    const timer = setTimeout(() => { c.destroy(); end('timeout') }, 5000)
    c.on('connect', () => c.write('GET /hold HTTP/1.1\\r\\nHost: server\\r\\n\\r\\n'))
    c.on('data', (d) => {
      head += d
      if (!head.includes('\\r\\n\\r\\n')) return
      if (head.startsWith('HTTP/1.1 200')) { held.push(c); end('held') } else end(head.split('\\r\\n')[0])
    })
    c.on('error', () => {})
    c.on('close', () => end('refused'))
  })
}
;(async () => {
  for (let i = 0; i < +tries; i++) {
    const r = await one()
    if (r === 'held') continue
    if (r === 'refused') refused++; else other.push(r)
  }
  console.log(JSON.stringify({ held: held.length, refused, other }))
  process.stdin.on('data', () => console.log(JSON.stringify({ open: held.filter((c) => !c.destroyed).length })))
  process.stdin.on('end', () => process.exit(0))
})()
`

async function metrics (port: number): Promise<string> {
  return await new Promise((resolve, reject) => {
    get(`http://127.0.0.1:${port}/metrics`, (res) => { let b = ''; res.on('data', (d) => { b += String(d) }); res.on('end', () => resolve(b)) }).on('error', reject)
  })
}
const value = (text: string, name: string): number => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN)

t.test('the per-source connection share is per HTTP proxy worker', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await agentLab(t, 106, ['client', 'other', 'server'], { 'server.yaml': POLICY },
    ['--http-workers', String(WORKERS), '--http-max-connections-per-source', String(SHARE)])
  await startHttpServer(lab, lab.ns('server'), 8080)
  const running = await poll(lab.status, (s) => s.json?.http.proxies.running === WORKERS)
  t.equal(running.json?.http.proxies.running, WORKERS, 'both proxies listen')
  const url = `http://${lab.ip('server')}:8080/`

  const client = lab.run(lab.ns('client'), CLIENT, [lab.ip('server'), '8080', String(TRIES)])
  const lines: string[] = []
  let buf = ''
  client.stdout?.on('data', (d) => { buf += String(d); const parts = buf.split('\n'); buf = parts.pop() ?? ''; lines.push(...parts) })
  const next = async (): Promise<Record<string, unknown>> => {
    const n = lines.length
    await poll(() => lines.length, (l) => l > n || client.exitCode !== null, 60_000, 50)
    return JSON.parse(lines[n] ?? '{}') as Record<string, unknown>
  }
  const result = await next() as { held: number, refused: number, other: string[] }
  t.strictSame(result.other, [], 'every connection was either answered or reset')
  t.ok(result.held <= WORKERS * SHARE, `the pod holds at most workers x share = ${WORKERS * SHARE} connections (held ${result.held})`)
  t.ok(result.held > SHARE, `more than one proxy's share: each proxy counts the pod's connections on its own (held ${result.held})`)
  t.equal(result.held + result.refused, TRIES, `the other ${result.refused} were reset at accept`)

  t.equal(await curlStatus(lab.ns('other'), url), '200', 'another pod still gets through while the client is at its share')
  client.stdin?.write('report\n')
  t.strictSame(await next(), { open: result.held }, 'and the client\'s connections were all still open meanwhile')

  // the proxy that took each held connection (its access line's `worker`): at most SHARE per proxy
  // (whole lines only: the agent is writing the file, its last line may be there in part)
  const wholeLines = (): string[] => completeLines(lab.log())
  const holds = (): Array<{ worker: number }> => wholeLines()
    .filter((l) => l.includes('"http request"') && l.includes('"/hold"')).map((l) => JSON.parse(l) as { worker: number })
  const access = await poll(holds, (a) => a.length >= result.held)
  t.equal(access.length, result.held, 'one access line per held connection')
  const perWorker = new Map<number, number>()
  for (const a of access) perWorker.set(a.worker, (perWorker.get(a.worker) ?? 0) + 1)
  t.ok([...perWorker.values()].every((n) => n <= SHARE), `no proxy answered more than ${SHARE} of the pod's connections (${JSON.stringify([...perWorker])})`)
  // logged by the proxy that refused, which may be another worker than the ones whose lines came
  const refusal = /"code":"WARDEN_ERR_HTTP_SOURCE_SHARE"/
  t.match(await poll(lab.log, (l) => refusal.test(l)), refusal, 'a refusal is logged as a warning')

  // the workers report their counters every second: wait for the sum to reach the refusals
  const refused = await poll(async () => value(await metrics(lab.metricsPort), 'warden_http_connections_refused_source_total'), (v) => v >= result.refused)
  t.equal(refused, result.refused, 'warden_http_connections_refused_source_total counts every reset, over both proxies')
  client.stdin?.end()
})
