/**
 * How the proxy hands a small response to the client socket: today's corked head + body writes
 * (one writev of two buffers) against one write of the response's raw bytes (a subarray of the
 * upstream read). CPU time of this process per response over a loopback socket whose peer
 * drains; the syscall count is the same (one), the difference is Node's stream machinery.
 *
 * Build, then run: `node dist/bench/micro/response-write.js` (N=200000, ROUNDS=5).
 */
import net from 'node:net'

const N = Number(process.env.N ?? 200_000)
const RESP = Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok', 'latin1')
const HEAD_END = RESP.length - 2

function cpuNs (t0: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(t0)
  return (d.user + d.system) * 1000
}

const server = net.createServer(s => { s.on('data', () => {}) })
await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
const sock = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
sock.setNoDelay(true)
await new Promise(resolve => sock.once('connect', resolve))

async function run (how: (read: Buffer) => void): Promise<number> {
  const t0 = process.cpuUsage()
  for (let i = 0; i < N; i++) {
    how(RESP)
    if ((i & 31) === 31) await new Promise(resolve => setImmediate(resolve))
    if (sock.writableNeedDrain) await new Promise(resolve => sock.once('drain', resolve))
  }
  return cpuNs(t0) / N
}

const cases: Array<[string, (read: Buffer) => void]> = [
  ['cork, write(head), write(body), uncork (today)', (b) => { sock.cork(); sock.write(b.subarray(0, HEAD_END)); sock.write(b.subarray(HEAD_END)); sock.uncork() }],
  ['one write of the raw bytes', (b) => { sock.write(b.subarray(0, b.length)) }],
  ['cork, one write of the raw bytes, uncork', (b) => { sock.cork(); sock.write(b.subarray(0, b.length)); sock.uncork() }]
]
const best = new Map<string, number>()
for (let r = 0; r < Number(process.env.ROUNDS ?? 5); r++) {
  for (const [label, fn] of cases) best.set(label, Math.min(await run(fn), best.get(label) ?? Infinity))
}
for (const [label, ns] of best) console.log(`${label.padEnd(50)} ${ns.toFixed(0).padStart(6)} ns/response (best of rounds)`)
sock.destroy()
server.close()
