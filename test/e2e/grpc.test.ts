// Needs root and the real kernel (namespaces, tc eBPF, bpf_sk_assign); CI runs as root.
// gRPC and HTTP/2 through `warden run`: a real gRPC server (@grpc/grpc-js) on billing-service and
// a real client on checkout-service, Cilium's gRPC guide policy (some methods allowed, one denied
// -> PERMISSION_DENIED), every call kind with messages of megabytes, 200 calls at once on one
// channel; curl with HTTP/2 prior knowledge allowed and denied; one access line per stream. Two
// HTTP proxies (the main thread's and a worker's) share the port.
import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { cpSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { poll } from '../helpers/poll.js'
import { DemoSession, DEFAULT_DEMO, repoRoot, teardown, type DemoConfig } from '../../demo/session.js'
import { completeLines } from '../../demo/log-lines.js'

const GRPC_PORT = 17450
const fixtures = join(repoRoot(), 'test', 'fixtures', 'grpc')
const policies = mkdtempSync(join(tmpdir(), 'warden-e2e-grpc-'))
cpSync(join(repoRoot(), 'demo', 'policies'), policies, { recursive: true })
cpSync(join(fixtures, 'door-policy.yaml'), join(policies, 'door-policy.yaml'))

const cfg: DemoConfig = {
  ...DEFAULT_DEMO,
  workDir: '/run/warden-e2e-h2',
  nsPrefix: 'wdh-',
  ifPrefix: 'wdh-',
  subnet: '198.19.144',
  bpffs: '/sys/fs/bpf/wdh-grpc',
  routeTable: 2500,
  proxyPort: 17400,
  dnsProxyPort: 17401,
  metricsPort: 17402,
  policies,
  // HTTP/2 in a worker thread too, and a limit passed to every proxy (gRPC queues calls beyond it)
  agentArgs: ['--http-workers', '2', '--h2-max-concurrent-streams', '64']
}

let server: ChildProcess | null = null
t.teardown(async () => {
  if (server?.pid !== undefined && server.exitCode === null) server.kill('SIGKILL')
  await teardown(cfg)
  rmSync(policies, { recursive: true, force: true })
})

interface Results {
  getName: { code: number, res?: { text: string } }
  setAccessCode: { code: number, details?: string }
  watch: { code: number, n: number }
  upload: { code: number, bytes?: number }
  echo: { code: number, sizes: number[] }
  concurrent: { ok: number, codes: number[] }
}

t.test('gRPC through the HTTP/2 proxy, with the real datapath', async (t) => {
  const s = await DemoSession.open(cfg)
  const billing = s.endpointAddress('billing-service')
  // `ip netns exec` execs node in place: this PID is the server's.
  const srv = spawn('ip', ['netns', 'exec', s.ns('billing-service'), process.execPath, join(fixtures, 'door.mjs'), 'serve', `0.0.0.0:${GRPC_PORT}`], { stdio: ['ignore', 'pipe', 'inherit'] })
  server = srv
  await new Promise<void>((resolve, reject) => {
    srv.stdout?.on('data', (d: Buffer) => { if (String(d).includes('ready')) resolve() })
    srv.once('exit', (code) => reject(new Error(`the gRPC server exited (${String(code)})`)))
  })

  const before = s.agentLog().length
  const r = await s.exec('checkout-service', [process.execPath, join(fixtures, 'door.mjs'), 'call', `${billing}:${GRPC_PORT}`], 60_000)
  t.equal(r.code, 0, `the client ran: ${r.stderr}`)
  const out = JSON.parse(r.stdout) as Results
  t.match(out.getName, { code: 0, res: { text: 'door 7' } }, 'unary, allowed')
  t.equal(out.setAccessCode.code, 7, 'SetAccessCode: PERMISSION_DENIED (HTTP 403 from the proxy)')
  t.same(out.watch, { code: 0, n: 500 }, 'server streaming: 500 messages')
  t.same(out.upload, { code: 0, bytes: 8 << 20 }, 'client streaming: 8 MiB in 256 KiB messages')
  t.same(out.echo, { code: 0, sizes: [1 << 20, 3 << 20, 5 << 20] }, 'bidirectional: 1, 3 and 5 MiB messages each way')
  t.same(out.concurrent, { ok: 200, codes: [0] }, '200 concurrent calls on one channel')

  const curl = async (method: string): Promise<string> => {
    const c = await s.exec('checkout-service', ['curl', '-sS', '--http2-prior-knowledge', '-X', 'POST', '-H', 'content-type: application/grpc',
      '-w', ' %{http_version} %{http_code}', '--max-time', '5', `http://${billing}:${GRPC_PORT}/cloudcity.DoorManager/${method}`])
    if (c.code !== 0) t.comment(`curl exit ${c.code}: ${c.stderr}\n` + s.agentLog().split('\n').filter((l) => !l.includes('"http request"')).slice(-8).join('\n'))
    return c.stdout
  }
  t.equal(await curl('GetLocation'), ' 2 200', 'curl --http2-prior-knowledge, allowed: HTTP/2 200 from the server')
  t.equal(await curl('SetAccessCode'), 'Access denied\r\n 2 403', 'curl --http2-prior-knowledge, denied: 403 Access denied')

  // Each stream's line is written after its response, by the proxy (a worker's or the main
  // thread's) that served it, and flushed every 100 ms: wait until all of them are in the file.
  const STREAMS = 1 + 1 + 1 + 1 + 1 + 200 + 2
  const accessLines = (): string[] => {
    const log = s.agentLog().slice(before)
    return completeLines(log).filter((l) => l.includes('"http request"'))
  }
  const lines = (await poll(accessLines, (ls) => ls.length >= STREAMS)).map((l) => JSON.parse(l) as Record<string, unknown>)
  const h2 = lines.filter((l) => l.protocol === 'HTTP/2')
  t.equal(h2.length, lines.length, 'every access line of these calls says HTTP/2')
  t.equal(h2.length, STREAMS, 'one line per stream')
  t.match(h2.find((l) => l.path === '/cloudcity.DoorManager/GetName'), { verdict: 'allowed', status: 200, grpcStatus: '0', src: 'default/checkout-service' })
  t.match(h2.find((l) => l.path === '/cloudcity.DoorManager/SetAccessCode'), { verdict: 'denied', reason: 'ingress-no-rule-match', status: 403 })
  t.ok((h2.find((l) => l.path === '/cloudcity.DoorManager/Echo')?.bytesIn as number) > 9 << 20, 'the echo line counts its 9 MiB in')

  // Workers report their counters every second, each on its own clock: the denied streams may
  // have been served by another proxy than the allowed ones, so wait for both counts.
  const m = await poll(metrics, (m) => counter(m, 'warden_http_h2_allowed_total') >= 205 && counter(m, 'warden_http_h2_denied_total') >= 2)
  t.equal(counter(m, 'warden_http_h2_allowed_total'), 205, 'the agent lives and counts the allowed streams')
  t.equal(counter(m, 'warden_http_h2_denied_total'), 2, 'and the denied ones')
  t.equal(counter(m, 'warden_http_requests_total'), 0, 'no HTTP/1 request on this port')
})

async function metrics (): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${cfg.metricsPort}/metrics`)
  return await res.text()
}

function counter (text: string, name: string): number {
  const m = new RegExp(`^${name} (\\d+)`, 'm').exec(text)
  return m === null ? -1 : Number(m[1])
}
