// DirectSender (proxy/src/udp-direct.ts) sends on dgram's handle: the datagrams must arrive as
// dgram's own send would deliver them, on both of libuv's paths (synchronous sendmsg, and the
// async request Node falls back to), and where the handle is not usable it must be dgram.
import t from 'tap'
import * as dgram from 'node:dgram'
import { once } from 'node:events'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { directSender } from '../../proxy/src/udp-direct.js'

/** The subset of tap's Test used here. */
interface TestLike { teardown (fn: () => unknown): void }

async function receiver (t: TestLike): Promise<{ port: number, next: (n: number) => Promise<Array<{ msg: string, port: number }>> }> {
  const sock = dgram.createSocket('udp4')
  sock.bind(0, '127.0.0.1')
  await once(sock, 'listening')
  t.teardown(() => sock.close())
  const queue: Array<{ msg: string, port: number }> = []
  let wake: (() => void) | null = null
  sock.on('message', (m, r) => { queue.push({ msg: m.toString(), port: r.port }); wake?.() })
  return {
    port: sock.address().port,
    async next (n) {
      while (queue.length < n) await new Promise<void>(resolve => { wake = resolve })
      return queue.splice(0, n)
    }
  }
}

async function bound (t: TestLike): Promise<dgram.Socket> {
  const s = dgram.createSocket('udp4')
  s.bind(0, '127.0.0.1')
  await once(s, 'listening')
  t.teardown(() => { try { s.close() } catch {} })
  return s
}

const want = (prefix: string, n: number): string[] => Array.from({ length: n }, (_, i) => `${prefix}-${i}`).sort()

t.test('sendTo on a bound socket and send on a connected one deliver every datagram, from that socket', async t => {
  const r = await receiver(t)
  const a = await bound(t)
  const da = directSender(a)
  t.not(da, null, 'the handle path is available on this Node')
  for (let i = 0; i < 50; i++) da?.sendTo(Buffer.from(`to-${i}`), r.port, '127.0.0.1')
  const got = await r.next(50)
  t.same(got.map(g => g.msg).sort(), want('to', 50))
  t.ok(got.every(g => g.port === a.address().port), 'sent from the socket itself')

  const c = dgram.createSocket('udp4')
  t.teardown(() => c.close())
  await new Promise<void>(resolve => c.connect(r.port, '127.0.0.1', resolve))
  const dc = directSender(c)
  t.not(dc, null)
  for (let i = 0; i < 50; i++) dc?.send(Buffer.from(`conn-${i}`))
  const got2 = await r.next(50)
  t.same(got2.map(g => g.msg).sort(), want('conn', 50))
  t.ok(got2.every(g => g.port === c.address().port))
})

t.test('where the handle is not ready it is dgram: queued before bind, an error after close', async t => {
  const r = await receiver(t)
  const s = dgram.createSocket('udp4')
  const ds = directSender(s)
  t.not(ds, null)
  // Unbound: dgram binds implicitly and sends once bound.
  ds?.sendTo(Buffer.from('early'), r.port, '127.0.0.1')
  t.same((await r.next(1)).map(g => g.msg), ['early'])
  s.close()
  t.throws(() => ds?.sendTo(Buffer.from('late'), r.port, '127.0.0.1'), { code: 'ERR_SOCKET_DGRAM_NOT_RUNNING' })

  // Connecting: dgram refuses an address-less send until connect() has finished, and so does this.
  const c = dgram.createSocket('udp4')
  t.teardown(() => c.close())
  const dc = directSender(c)
  c.connect(r.port, '127.0.0.1')
  t.throws(() => dc?.send(Buffer.from('while-connecting')), { code: 'ERR_SOCKET_BAD_PORT' })
  t.throws(() => c.send(Buffer.from('while-connecting')), { code: 'ERR_SOCKET_BAD_PORT' })
})

t.test('udp6 sockets are left to dgram', async t => {
  const s = dgram.createSocket('udp6')
  t.teardown(() => s.close())
  t.equal(directSender(s), null)
})

t.test('async sends (Node forced off the synchronous sendmsg) each keep their own request', async t => {
  const child = fileURLToPath(new URL('../fixtures/udp-direct-child.ts', import.meta.url))
  const tsLoader = process.execArgv.filter(a => a.includes('typescript') || a === '--enable-source-maps')
  const out = await new Promise<string>((resolve, reject) => {
    execFile(process.execPath, [...tsLoader, '--test-udp-no-try-send', '--expose-gc', child], { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`${err.message}\n${stderr}`)); else resolve(stdout)
    })
  })
  const res = JSON.parse(out.trim().split('\n').pop() ?? '{}') as { direct: boolean, got: string[] }
  t.ok(res.direct, 'the child used the handle path')
  t.same(res.got, [...want('to', 200), ...want('conn', 200)].sort())
})
