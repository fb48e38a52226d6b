/**
 * JS cost of one allowed DNS query in the proxy core without the kernel: `DnsCore.admit` on a
 * query, `complete` on its answer (decide, learn, the log line into the batching destination to
 * /dev/null). The sends are a no-op here; bench/dns-proxy.ts measures the whole path.
 *
 * Build, then run: `node dist/bench/micro/dns-query.js` (N=200000 queries per round, ROUNDS=7).
 */
import dnsPacket from 'dns-packet'
import { DnsCore } from '../../proxy/src/dns/proxy.js'
import { benchDnsDeps } from '../dns-snapshot.js'

const N = Number(process.env.N ?? 200_000)
const ROUNDS = Number(process.env.ROUNDS ?? 7)
const LOG = process.env.LOG !== '0'
const CLIENT_IP = '127.0.53.42'
const DNS_IP = '127.0.53.40'
const PORT = 53
const NAMES = ['api.github.com', 'status.github.com', 'www.example.com', 'a.example.com']

const now = Date.now
const core = new DnsCore(benchDnsDeps(CLIENT_IP, { ip: DNS_IP, port: PORT }, LOG), {
  minTtlSec: 0, maxTtlSec: undefined, maxIpsPerName: 1000, maxNamesPerEndpoint: 10000, maxZombiesPerEndpoint: 10000, stateDir: undefined, rejectRcode: 5,
  upstreamTimeoutMs: 10000, holdMaxMs: 100, gcIntervalMs: 1000, zombieGraceMs: 60000, maxPending: 10000, upstreamSockets: 8, upstreamSocketMark: 0,
  maxTcpPendingPerConnection: 32, tcpIdleTimeoutMs: 10000, now
})

// Queries as the bench's load generator sends them, answers as dnsmasq gives them (owner: a pointer to the question).
const queries = NAMES.map(name => dnsPacket.encode({ type: 'query', id: 0, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name }] }))
const answers = NAMES.map((name, i) => dnsPacket.encode({
  type: 'response', id: 0, flags: 0x0580 /* AA, RD, RA */,
  questions: [{ type: 'A', name }], answers: [{ type: 'A', name, ttl: 3600, data: `198.18.53.${10 + i}` }]
}))
const client = { ip: CLIENT_IP, port: 40000 }
const server = { ip: DNS_IP, port: PORT }
let sink = 0
const reply = (b: Buffer): void => { sink += b.length }

function round (): number {
  const t0 = process.cpuUsage()
  for (let i = 0; i < N; i++) {
    const k = i & 3
    const q = Buffer.from(queries[k])
    q.writeUInt16BE(i & 0xffff, 0)
    const p = core.admit(q, { ip: client.ip, port: client.port }, { ip: server.ip, port: server.port }, 'udp', reply)
    if (p === null) throw new Error('not admitted')
    const a = Buffer.from(answers[k])
    core.complete(p, a)
  }
  const d = process.cpuUsage(t0)
  return (d.user + d.system) * 1000 / N
}

const res: number[] = []
for (let r = 0; r < ROUNDS; r++) res.push(round())
res.sort((a, b) => a - b)
console.log(JSON.stringify({ bench: 'dns-query', log: LOG, n: N, nsPerQuery: res.map(x => Math.round(x)), median: Math.round(res[res.length >> 1]), sink: sink > 0 }))
