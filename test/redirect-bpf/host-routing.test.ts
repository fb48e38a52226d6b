// BPF host routing: traffic the kernel lets through between two local endpoints goes straight
// into the destination's namespace (bpf_fib_lookup + bpf_redirect_peer), and the workloads see
// what the host's own forwarding would give them. Needs root and a kernel with eBPF (CI runs as
// root): namespaces wdp5-*, veths wdp5*, 198.18.21.0/24, pins /sys/fs/bpf/wdp5, table 2105;
// all removed in teardown.
import t from 'tap'
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { datapathLab, isRoot } from '../helpers/lab-fixture.js'
import { connect, startServer } from '../helpers/lab-net.js'
import { entry, openEntries } from '../helpers/lab-snapshot.js'

const TCP = 6
const IN = 0

/** Output of a command run in a namespace (exit code and stdout). */
async function inNs (ns: string, argv: string[]): Promise<{ code: number, out: string }> {
  const p = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  p.stdout.on('data', (d) => { out += String(d) })
  p.stderr.on('data', (d) => { out += String(d) })
  // 'close', not 'exit': the exit can be seen before the last of its output is read
  const code = await new Promise<number>((resolve) => p.on('close', (c) => resolve(c ?? -1)))
  return { code, out }
}

/** The TTLs ping's replies arrived with. */
async function pingTtls (ns: string, ip: string): Promise<number[]> {
  const { out } = await inNs(ns, ['ping', '-c', '3', '-i', '0.2', '-W', '1', ip])
  return [...out.matchAll(/ttl=(\d+)/g)].map((m) => Number(m[1]))
}

// Receives one stream and answers with its length and sha256; sends one of a given size and
// prints the same. Bulk data crosses as GSO packets, the exchange above as single ones.
const SINK = `
const net = require('net'); const { createHash } = require('crypto')
net.createServer((c) => { const h = createHash('sha256'); let n = 0
  c.on('data', (d) => { h.update(d); n += d.length }); c.on('end', () => c.end(JSON.stringify({ n, sha: h.digest('hex') })))
}).listen(+process.argv[1], () => console.log('ready'))`
const SEND = `
const net = require('net'); const { createHash, randomBytes } = require('crypto')
const data = randomBytes(+process.argv[3]); const sha = createHash('sha256').update(data).digest('hex')
const c = net.connect(+process.argv[2], process.argv[1], () => c.end(data)); let got = ''
c.on('data', (d) => { got += d }); c.on('end', () => { console.log(JSON.stringify({ sent: sha, got: JSON.parse(got) })) })
c.on('error', (e) => { console.log(JSON.stringify({ error: e.code })) }); setTimeout(() => { console.log(JSON.stringify({ error: 'timeout' })); process.exit(0) }, 8000).unref()`

t.test('BPF host routing between local endpoints', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 5, ['a', 'b'])
  const [A, B] = [100, 101]
  const idA = 1000
  for (const n of ['a', 'b']) {
    const s = await startServer(lab.ns(n), 'tcp', 8080, n)
    t.teardown(s.stop)
  }
  const sink = spawn('ip', ['netns', 'exec', lab.ns('b'), process.execPath, '-e', SINK, '9000'], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { sink.kill('SIGKILL') })
  await new Promise<void>((resolve) => sink.stdout.on('data', (d) => { if (String(d).includes('ready')) resolve() }))
  // b accepts a on 8080 and 9000 only, and sends nothing itself but replies
  await lab.apply([...openEntries(A), entry(B, IN, idA, TCP, 8080, 'allow'), entry(B, IN, idA, TCP, 9000, 'allow')])

  type Upload = { sent?: string, got?: { n: number, sha: string }, error?: string }
  const upload = async (): Promise<Upload> =>
    JSON.parse((await inNs(lab.ns('a'), [process.execPath, '-e', SEND, lab.ip('b'), '9000', String(4 << 20)])).out.trim().split('\n').pop() ?? '{}') as Upload

  await t.test('on (the default): allowed traffic skips the host stack, intact', async (t) => {
    const before = lab.dp.counters().host_bypass
    const r = await connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080)
    t.match(r, { ok: true, reply: { from: 'b', remote: new RegExp(`^${lab.ip('a')}:`) } }, 'request and reply pass')
    const up = await upload()
    t.equal(up.got?.n, 4 << 20, 'b received all 4 MiB')
    t.equal(up.got?.sha, up.sent, 'byte for byte')
    t.ok(lab.dp.counters().host_bypass - before > 100, 'packets went straight into the namespaces')
    t.strictSame(await connect(lab.ns('a'), 'tcp', lab.ip('b'), 9090, 1000), { ok: false, error: 'timeout' }, 'a port b does not allow: still dropped')
    t.strictSame(await connect(lab.ns('b'), 'tcp', lab.ip('a'), 8080, 1000), { ok: false, error: 'timeout' }, 'b still cannot open connections')
  })

  await t.test('the workload sees what host forwarding gives: TTL 64 - 1, valid checksums', async (t) => {
    // ICMP is allowed once both are open
    await lab.apply([...openEntries(A), ...openEntries(B)])
    const before = lab.dp.counters().host_bypass
    t.strictSame(await pingTtls(lab.ns('a'), lab.ip('b')), [63, 63, 63], 'echo replies from b arrive with TTL 63')
    t.ok(lab.dp.counters().host_bypass - before >= 4, 'the echoes took the direct path (the first may not: no neighbour entry yet)')
  })

  await t.test('forwarding switched off on the ingress veth stops it, as it stops the host', async (t) => {
    const fwd = `/proc/sys/net/ipv4/conf/${lab.eps[0].iface}/forwarding`
    writeFileSync(fwd, '0')
    t.teardown(() => writeFileSync(fwd, '1'))
    // the programs keep a FIB answer for a second (l7p_fib): the switch counts from then on
    await new Promise((resolve) => setTimeout(resolve, 1100))
    t.strictSame(await connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080, 1000), { ok: false, error: 'timeout' }, 'a cannot reach b')
    writeFileSync(fwd, '1')
    t.match(await connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080), { ok: true }, 'and can again once it is on')
  })

  await t.test('legacy: the host routes, nothing skips its stack', async (t) => {
    lab.opts.hostRouting = false
    await lab.reopen()
    await lab.apply([...openEntries(A), ...openEntries(B)])
    const before = lab.dp.counters().host_bypass
    t.match(await connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080), { ok: true, reply: { from: 'b' } }, 'request and reply pass')
    const up = await upload()
    t.equal(up.got?.sha, up.sent, '4 MiB intact')
    t.strictSame(await pingTtls(lab.ns('a'), lab.ip('b')), [63, 63, 63], 'the same TTL')
    t.equal(lab.dp.counters().host_bypass, before, 'no packet took the direct path')
  })
})
