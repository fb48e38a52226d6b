/**
 * Servers and clients inside lab namespaces, for the datapath tests (root only).
 * Each is a small `node -e` program run with `ip netns exec`, so it lives in the
 * namespace; every process started here is ended by PID in stop() / on exit.
 */
import { spawn, type ChildProcess } from 'node:child_process'

// TCP: answer one JSON line {from, local, remote} and close. UDP: echo the same to the sender.
const SERVER = `
const [proto, port, name] = process.argv.slice(1)
const reply = (local, remote) => JSON.stringify({ from: name, local, remote }) + '\\n'
if (proto === 'tcp') {
  const s = require('net').createServer((c) => c.end(reply(c.localAddress + ':' + c.localPort, c.remoteAddress + ':' + c.remotePort)))
  s.listen(+port, '0.0.0.0', () => console.log('ready'))
} else {
  const s = require('dgram').createSocket('udp4')
  s.on('message', (m, r) => s.send(reply('?:' + port, r.address + ':' + r.port), r.port, r.address))
  s.bind(+port, '0.0.0.0', () => console.log('ready'))
}
`

// Connect (TCP) or send one datagram (UDP); print {ok, reply} or {ok:false, error}.
const CLIENT = `
const [proto, host, port, ms] = process.argv.slice(1)
const done = (o) => { console.log(JSON.stringify(o)); process.exit(0) }
setTimeout(() => done({ ok: false, error: 'timeout' }), +ms)
if (proto === 'tcp') {
  let buf = ''
  const c = require('net').connect(+port, host)
  c.on('data', (d) => { buf += d })
  c.on('end', () => done({ ok: true, reply: JSON.parse(buf) }))
  c.on('error', (e) => done({ ok: false, error: e.code }))
} else {
  const s = require('dgram').createSocket('udp4')
  s.on('message', (m) => done({ ok: true, reply: JSON.parse(String(m)) }))
  s.send('ping', +port, host)
}
`

export interface Reply { from: string, local: string, remote: string }
export type ConnectResult = { ok: true, reply: Reply } | { ok: false, error: string }

const live = new Set<ChildProcess>()
process.on('exit', () => { for (const p of live) p.kill('SIGKILL') })

export interface NsServer { pid: number, stop: () => Promise<void> }

export async function startServer (ns: string, proto: 'tcp' | 'udp', port: number, name = ns): Promise<NsServer> {
  const p = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', SERVER, proto, String(port), name], { stdio: ['ignore', 'pipe', 'pipe'] })
  live.add(p)
  let err = ''
  p.stderr?.on('data', (d) => { err += String(d) })
  await new Promise<void>((resolve, reject) => {
    p.stdout?.on('data', (d) => { if (String(d).includes('ready')) resolve() })
    p.on('exit', (code) => reject(new Error(`server in ${ns} exited ${code}: ${err}`)))
  })
  return {
    pid: p.pid ?? -1,
    stop: async () => {
      if (p.exitCode !== null || p.signalCode !== null) { live.delete(p); return }
      await new Promise<void>((resolve) => { p.once('exit', () => resolve()); p.kill('SIGTERM') })
      live.delete(p)
    }
  }
}

/** From namespace `ns` (or the host when ns is null), connect to host:port. */
export async function connect (ns: string | null, proto: 'tcp' | 'udp', host: string, port: number, timeoutMs = 3000): Promise<ConnectResult> {
  const argv = [process.execPath, '-e', CLIENT, proto, host, String(port), String(timeoutMs)]
  const p = ns === null ? spawn(argv[0], argv.slice(1)) : spawn('ip', ['netns', 'exec', ns, ...argv])
  live.add(p)
  let out = ''
  p.stdout?.on('data', (d) => { out += String(d) })
  // 'close', not 'exit': the exit can be seen before the last of its output is read
  await new Promise<void>((resolve) => p.on('close', () => resolve()))
  live.delete(p)
  try {
    return JSON.parse(out.trim().split('\n').pop() ?? '') as ConnectResult
  } catch {
    return { ok: false, error: `client output: ${out}` }
  }
}
