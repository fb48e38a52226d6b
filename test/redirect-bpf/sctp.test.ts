// SCTP packets on the wire between lab namespaces, through the attached programs: a deny on
// one SCTP port under a broader allow drops that port only. The kernel under test may have no
// SCTP stack (CONFIG_IP_SCTP), so the packets are sent from a raw IP socket (protocol 132) and
// the verdicts read from the flow events; the sender needs no SCTP support.
// Needs root: netns wdp21-*, pins /sys/fs/bpf/wdp21, table 2121; removed in teardown.
import t from 'tap'
import { spawn } from 'node:child_process'
import { datapathLab, eventually, isRoot } from '../helpers/lab-fixture.js'
import { entry, openEntries } from '../helpers/lab-snapshot.js'
import type { FlowEvent } from '../../redirect-bpf/src/index.js'

const SCTP = 132

// One SCTP common header (source port, destination port, verification tag, checksum) per
// destination port, from a raw socket; prints the bytes sent, or the errno.
const SENDER = `
const koffi = require('koffi')
const libc = koffi.load('libc.so.6')
const socket = libc.func('int socket(int, int, int)')
const sendto = libc.func('intptr_t sendto(int, const void *, size_t, int, const void *, uint32_t)')
const [dst, sport, ...ports] = process.argv.slice(1)
const fd = socket(2, 3, ${SCTP})
if (fd < 0) { console.log(JSON.stringify({ error: koffi.errno() })); process.exit(0) }
const addr = Buffer.alloc(16)
addr.writeUInt16LE(2, 0)
dst.split('.').forEach((p, i) => { addr[4 + i] = Number(p) })
const sent = ports.map((port) => {
  const h = Buffer.alloc(12)
  h.writeUInt16BE(+sport, 0)
  h.writeUInt16BE(+port, 2)
  h.writeUInt32BE(0x0a0b0c0d, 4)
  return Number(sendto(fd, h, h.length, 0, addr, 16))
})
console.log(JSON.stringify({ sent }))
`

async function sendSctp (ns: string, dst: string, sport: number, ports: number[]): Promise<{ sent?: number[], error?: number }> {
  const p = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', SENDER, dst, String(sport), ...ports.map(String)], { cwd: process.cwd() })
  let out = ''
  p.stdout.on('data', (d) => { out += String(d) })
  await new Promise((resolve) => p.on('close', resolve)) // not 'exit': its output may still be unread
  return JSON.parse(out.trim() || '{"error":-1}') as { sent?: number[], error?: number }
}

t.test('SCTP ports are enforced on the wire', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 21, ['a', 'b'])
  const [A, B] = [100, 101]
  const idA = 1000
  const flows: FlowEvent[] = []
  lab.dp.onFlow((ev) => flows.push(ev))
  // b: everything in, except SCTP to port 5000 from a
  await lab.apply([...openEntries(A), ...openEntries(B), entry(B, 0, idA, SCTP, 5000, 'deny')])
  const r = await sendSctp(lab.ns('a'), lab.ip('b'), 6000, [5000, 5001])
  t.strictSame(r, { sent: [12, 12] }, 'two SCTP packets sent')
  const seen = (port: number): FlowEvent | undefined => flows.find((f) => f.protocol === SCTP && f.dstPort === port)
  await eventually(() => seen(5000) !== undefined && seen(5001) !== undefined)
  t.match(seen(5000), { verdict: 'dropped', reason: 'drop_policy_deny', endpointId: B, direction: 'ingress', srcPort: 6000, srcIdentity: idA },
    'the denied port is dropped by the deny entry')
  t.match(seen(5001), { verdict: 'allowed', reason: 'new_allowed', srcPort: 6000 }, 'the next port passes')
})
