// The local API on a unix socket in a temp dir (no root, no kernel): the socket's mode, a stale
// socket replaced and a live one refused, read-only routes, the event stream with --follow, and
// the CLI commands against it (tables, --json, exit codes).
import t from 'tap'
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startApi, type ApiHandlers } from '../../agent/api/server.js'
import { EventRing } from '../../agent/observe/ring.js'
import type { ObservedEvent } from '../../agent/observe/event.js'
import { runCli } from '../helpers/cli.js'

const dir = mkdtempSync(join(tmpdir(), 'warden-api-test-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

function ev (i: number, verdict: string, type: 'l3l4' | 'http' = 'l3l4'): ObservedEvent {
  return {
    time: new Date(1_700_000_000_000 + i).toISOString(), type, protocol: 'TCP', verdict, reason: verdict === 'dropped' ? 'drop_policy' : '',
    source: { ip: '10.0.0.1', port: 1000 + i, identity: 300, endpoint: 'default/a', labels: [] },
    destination: { ip: '10.0.0.2', port: 80, identity: 301, endpoint: 'default/b', labels: [] },
    ...(type === 'http' ? { http: { method: 'GET', path: '/x', host: 'b', status: 403 }, rule: { file: 'p.yaml', line: 9, policy: 'default/p', section: 'ingress', index: 0 } } : {})
  }
}

let healthy = true
function handlers (ring: EventRing): ApiHandlers {
  return {
    status: () => ({
      version: '0.1.0', pid: 1, uptimeSeconds: 5, healthy, degraded: healthy ? [] : ['1 policy error(s): ...'],
      policy: { compiled: 3, kernel: 3, httpProxy: 3, dnsProxy: 3 }, audit: 'off', auditEndpoints: [],
      files: { loaded: ['p.yaml'], rejected: healthy ? [] : ['bad.yaml:3:5: spec.ingress[0]: unknown field'] },
      endpoints: { total: 1, attached: 1, pending: [] }, identities: 4, maps: { l7p_ct: { entries: 2, max: 65536 } },
      http: { proxies: { total: 1, running: 1 }, workers: [{ worker: 0, running: true, policyVersion: 3, behindSeconds: 0, lagging: false }], connectionsActive: 0, requests: 1, allowed: 0, denied: 1, audited: 0, rejected: 0, upstreamErrors: 0 },
      dns: { queries: 0, allowed: 0, refused: 0, audited: 0, errors: 0 }, kernel: { dropped: 1, audited: 0 },
      fqdn: { names: 0, ips: 0, zombies: 0 }, events: { buffered: ring.size, capacity: ring.capacity, seen: ring.total, followers: ring.followers }
    }),
    endpoints: () => [{ id: 1, endpoint: 'default/a', identity: 300, ipv4: '10.0.0.1', interface: 'lxca', state: 'attached', audit: false, ingress: 'enforcing', egress: 'no policy (allow all)', labels: ['k8s:app=a'] }],
    identities: () => [{ identity: 300, labels: ['k8s:app=a'], endpoints: ['default/a'] }],
    fqdn: () => [{ endpoint: 'default/a', name: 'api.github.com.', ip: '1.2.3.4', expiresAt: '2026-01-01T00:00:00.000Z', zombie: true }],
    selected: (ep) => ep === 'default/a' ? { endpoint: 'default/a', identity: 300, audit: false, policyVersion: 3, kernel: [{ direction: 'ingress', peerIdentity: 301, peerLabels: ['k8s:app=b'], protocol: 'TCP', port: '80', verdict: 'allow', rule: { file: 'p.yaml', line: 9, policy: 'default/p' } }], l7: [] } : null,
    ring
  }
}

async function get (sock: string, path: string, method = 'GET'): Promise<{ status: number, body: string }> {
  return await new Promise((resolve, reject) => {
    const req = request({ socketPath: sock, path, method }, (res) => {
      let body = ''
      res.on('data', (d: Buffer) => { body += d.toString() })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

t.test('the socket: mode 0600 in a directory made for it; stale replaced, live refused, non-socket refused', async (t) => {
  const sock = join(dir, 'sub', 'warden.sock')
  const ring = new EventRing(8)
  const api = await startApi(sock, handlers(ring), (err) => t.fail(err.message))
  t.equal(statSync(sock).mode & 0o777, 0o600)
  await t.rejects(startApi(sock, handlers(ring), () => {}), { code: 'WARDEN_ERR_API_SOCKET_IN_USE' }, 'a live agent\'s socket is refused')
  await api.close()

  // a socket file nobody listens on: what an agent killed with SIGKILL leaves behind
  const stale = join(dir, 'stale.sock')
  const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  await once(child.stdout as NodeJS.ReadableStream, 'data')
  child.kill('SIGKILL')
  await once(child, 'exit')
  t.ok(statSync(stale).isSocket(), 'a stale socket file exists')
  const api2 = await startApi(stale, handlers(ring), () => {})
  t.equal((await get(stale, '/v1/status')).status, 200, 'replaced: the new agent answers')
  await api2.close()

  const file = join(dir, 'not-a-socket')
  writeFileSync(file, 'keep me')
  await t.rejects(startApi(file, handlers(ring), () => {}), { code: 'WARDEN_ERR_API_SOCKET_PATH' }, 'a regular file is never replaced')
})

t.test('routes, events and the CLI', async (t) => {
  const sock = join(dir, 'cli.sock')
  const ring = new EventRing(8)
  const api = await startApi(sock, handlers(ring), (err) => t.fail(err.message))
  t.teardown(async () => await api.close())
  ring.push(ev(1, 'dropped'))
  ring.push(ev(2, 'denied', 'http'))
  const s = ['--api-socket', sock]

  t.equal((await get(sock, '/v1/status', 'POST')).status, 405, 'read-only')
  t.equal((await get(sock, '/v1/nope')).status, 404)
  t.equal((await get(sock, '/v1/events?type=tcp')).status, 400, 'a malformed filter is a 400')
  t.equal((await get(sock, '/v1/policy/selected?endpoint=default/zz')).status, 404)

  healthy = true
  const ok = await runCli(['status', ...s])
  t.equal(ok.code, 0)
  t.match(ok.out, /Health:\s+ok/)
  healthy = false
  const bad = await runCli(['status', ...s])
  t.equal(bad.code, 1, 'degraded: exit 1')
  t.match(bad.out, /DEGRADED[\s\S]*bad\.yaml:3:5: spec\.ingress\[0\]: unknown field/)
  t.equal((JSON.parse((await runCli(['status', '--json', ...s])).out) as { healthy: boolean }).healthy, false)

  t.match((await runCli(['endpoint', 'list', ...s])).out, /ID\s+ENDPOINT[\s\S]*1\s+default\/a\s+300\s+10\.0\.0\.1\s+lxca\s+attached\s+no\s+enforcing/)
  t.match((await runCli(['identity', 'list', ...s])).out, /300\s+k8s:app=a\s+default\/a/)
  t.match((await runCli(['fqdn', 'list', ...s])).out, /default\/a\s+api\.github\.com\.\s+1\.2\.3\.4\s+2026-01-01T00:00:00\.000Z\s+yes/)
  t.match((await runCli(['policy', 'selected', 'default/a', ...s])).out, /ingress\s+301 k8s:app=b\s+TCP\s+80\s+allow\s+p\.yaml:9 \(default\/p\)/)
  const missing = await runCli(['policy', 'selected', 'default/zz', ...s])
  t.equal(missing.code, 1)
  t.match(missing.err, /no endpoint default\/zz/)
  t.equal((await runCli(['endpoint', 'show', ...s])).code, 2, 'unknown subcommand: usage error')

  const all = await runCli(['observe', '--json', ...s])
  t.strictSame(all.out.split('\n').map((l) => (JSON.parse(l) as { verdict: string }).verdict), ['dropped', 'denied'])
  t.match((await runCli(['observe', '--type', 'http', ...s])).out, /^\S+ http default\/a 10\.0\.0\.1:1002 \(300\) -> default\/b 10\.0\.0\.2:80 \(301\) GET b\/x -> 403 DENIED rule=p\.yaml:9 policy=default\/p$/)
  t.equal((await runCli(['observe', '--last', '1', '--json', ...s])).out.split('\n').length, 1)

  // follow: the stream stays open and carries events pushed after it started
  const lines: string[] = []
  const following = new Promise<void>((resolve, reject) => {
    const req = request({ socketPath: sock, path: '/v1/events?follow=1&verdict=dropped' }, (res) => {
      res.on('data', (d: Buffer) => { lines.push(...d.toString().split('\n').filter((l) => l !== '')); if (lines.length >= 1) { res.destroy(); resolve() } })
    })
    req.on('error', reject)
    req.end()
  })
  while (ring.followers === 0) await new Promise((resolve) => setTimeout(resolve, 10))
  ring.push(ev(3, 'allowed'))
  ring.push(ev(4, 'dropped'))
  await following
  t.equal(lines.length, 1, 'only the matching new event')
  t.equal((JSON.parse(lines[0]) as { source: { port: number } }).source.port, 1004)
})

t.test('no agent: exit 1 with a clear message', async (t) => {
  const r = await runCli(['identity', 'list', '--api-socket', join(dir, 'none.sock')])
  t.equal(r.code, 1)
  t.match(r.err, /no warden agent is running on .*none\.sock.*\[WARDEN_ERR_AGENT_NOT_RUNNING\]/)
})
