// How the proxy takes a connection: the accepted socket is re-opened for reads into the shared
// buffer (proxy/src/http/reads.ts). A connection it cannot take is closed and logged, the proxy
// keeps serving, and nothing stays open. Loopback only, no root.
import t from 'tap'
import net from 'node:net'
import { Writable } from 'node:stream'
import pino from 'pino'
import { createHttpProxy, SERVER_OPTIONS, type HttpProxyDeps } from '../../../proxy/src/http/index.js'
import { billingSnapshot, sleep, type Tap } from '../../helpers/http-proxy.js'

async function proxyOn (t: Tap, serverOptions: net.ServerOpts, lookupIdentity: HttpProxyDeps['lookupIdentity']):
Promise<{ port: number, logs: Array<Record<string, unknown>>, metrics: () => Record<string, number> }> {
  const snap = await billingSnapshot()
  const logs: Array<Record<string, unknown>> = []
  const sink = new Writable({ write (chunk: Buffer, _enc, cb) { for (const l of chunk.toString().split('\n')) if (l !== '') logs.push(JSON.parse(l) as Record<string, unknown>); cb() } })
  const proxy = createHttpProxy({ snapshot: () => snap, lookupIdentity, logger: pino(sink) }, { denyResponse: '403' })
  const server = net.createServer(serverOptions, (s) => { proxy.handleConnection(s) })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { await proxy.close(); await new Promise(resolve => server.close(resolve)) })
  return { port: (server.address() as net.AddressInfo).port, logs, metrics: () => proxy.metrics() }
}

/** Connect, send a request, and wait for the connection to end; what came back. */
async function oneExchange (port: number): Promise<string> {
  const c = net.connect({ host: '127.0.0.1', port })
  let got = ''
  c.on('data', (d: Buffer) => { got += d.toString('latin1') })
  c.on('error', () => {})
  c.write('GET /healthz HTTP/1.1\r\nHost: billing\r\n\r\n')
  await new Promise<void>(resolve => { c.once('close', () => { resolve() }) })
  return got
}

t.test('an identity lookup that throws closes that connection only; nothing stays open', async t => {
  let fail = true
  const px = await proxyOn(t, SERVER_OPTIONS, () => { if (fail) throw new Error('ipcache read failed'); return 0 })
  t.equal(await oneExchange(px.port), '', 'no answer: the connection is closed')
  t.match(px.logs.find(l => l.msg === 'http proxy: cannot take connection'), { level: 50, err: { message: 'ipcache read failed' } })
  await sleep(50)
  t.equal(px.metrics().connections_active, 0, 'not counted as active')
  fail = false
  // The next connection is taken (world identity: the seed policy denies it with a 403).
  const c = net.connect({ host: '127.0.0.1', port: px.port })
  let got = ''
  c.on('data', (d: Buffer) => { got += d.toString('latin1') })
  c.write('GET /healthz HTTP/1.1\r\nHost: billing\r\n\r\n')
  for (let i = 0; i < 100 && !got.includes('\r\n\r\n'); i++) await sleep(10)
  t.match(got, /^HTTP\/1.1 403 /, 'the proxy still serves')
  c.destroy()
})

t.test('a socket from a server without pauseOnConnect is refused with a clear error', async t => {
  const px = await proxyOn(t, { allowHalfOpen: true }, () => 0)
  t.equal(await oneExchange(px.port), '', 'the connection is closed')
  t.match(px.logs.find(l => l.msg === 'http proxy: cannot take connection'), { err: { code: 'WARDEN_ERR_HTTP_ADOPT', message: /pauseOnConnect/ } })
})
