/**
 * The cluster store against a real etcd that serves TLS only, requires a client certificate and
 * has authentication enabled, as a production etcd does: two agents (ClusterStore, no kernel)
 * configured through Cilium's etcd.config file share identities and the ipcache; a wrong CA, a
 * missing client certificate and a wrong password each keep the agent running on its persisted
 * state, fail with their own error code and a log line naming the reason, and are retried until
 * fixed; the password is in no log line; the TLS probe against a plain server and a closed port.
 * Needs `etcd`, `etcdctl` and `openssl` (scripts/setup.sh).
 */
import t, { type Test } from 'tap'
import { copyFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { createServer, type AddressInfo } from 'node:net'
import { Writable } from 'node:stream'
import { pino, type Logger } from 'pino'
import type { ClusterStore } from '../../cluster/src/cluster.js'
import { resolveKvstoreTarget } from '../../cluster/src/etcd-config.js'
import { probeTls } from '../../cluster/src/tls-probe.js'
import { issue } from '../../lab/pki.js'
import { startTlsEtcd, type TlsEtcd } from '../helpers/etcd-tls.js'
import { openTestStore, publishWebPod, remoteIdentity, tempDir, until, WEB, webEndpoint } from '../helpers/cluster-store.js'

const PASSWORD = 'wdt-s3cret-Pa55word'
const ROOT_PASSWORD = 'wdt-root-Pa55word'

/** A logger whose lines are kept: parsed for assertions, raw to look for the password. */
function capture (): { logger: Logger, lines: () => Array<Record<string, unknown>>, raw: () => string } {
  const text: string[] = []
  const stream = new Writable({ write (chunk, _enc, cb) { text.push(String(chunk)); cb() } })
  const raw = (): string => text.join('')
  return {
    logger: pino({ level: 'info' }, stream),
    lines: () => raw().split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, unknown>),
    raw
  }
}


/** A store configured exactly as `warden run --kvstore etcd --kvstore-opt etcd.config=FILE` would be. */
async function agent (t: Test, configFile: string, name: string, ip: string, logger: Logger, stateDir?: string): Promise<ClusterStore> {
  const target = resolveKvstoreTarget('etcd', [`etcd.config=${configFile}`])
  return await openTestStore(t, { urls: target.urls, tls: target.tls, auth: target.auth, configFile: target.configFile, nodeName: name, nodeIP: ip, logger, stateDir })
}

const ep = webEndpoint
const entry = remoteIdentity

/** The good configuration: CA, client certificate, user and password. */
async function goodConfig (e: TlsEtcd, name = 'etcd.config', extra: Record<string, unknown> = {}): Promise<string> {
  return await e.writeConfig(name, {
    endpoints: [e.etcd.url], 'trusted-ca-file': e.pki.ca.cert, 'cert-file': e.pki.client.cert, 'key-file': e.pki.client.key,
    username: 'warden', password: PASSWORD, ...extra
  })
}

/** The first log line with this error code. */
const lineWith = (lines: Array<Record<string, unknown>>, code: string): Record<string, unknown> | undefined => lines.find((l) => l.code === code)

t.test('TLS, client certificate and password: agents share identities and the ipcache; each misconfiguration fails on its own, retries, and leaks no password', async (t) => {
  const e = await startTlsEtcd(t, 23840, { rootPassword: ROOT_PASSWORD, user: 'warden', password: PASSWORD })
  const logA = capture()
  const logB = capture()
  const a = await agent(t, await goodConfig(e), 'node-a', '192.0.2.1', logA.logger)
  const b = await agent(t, await goodConfig(e), 'node-b', '192.0.2.2', logB.logger)
  t.ok(await a.conn.waitConnected(10000) && await b.conn.waitConnected(10000), 'both connected over TLS with the password')
  const webId = await publishWebPod(t, a, b)

  // etcd restarted: it forgot every auth token; each new session authenticates again.
  await e.etcd.stop()
  t.ok(await until(() => a.metrics().connected === 0 && b.metrics().connected === 0), 'both see the outage')
  a.publishEndpoints([ep('web-1', '10.42.1.10', webId, 1), ep('web-2', '10.42.1.11', webId, 2)])
  await e.etcd.start()
  t.ok(await until(() => entry(b.current(), '10.42.1.11/32') === webId), 'after the restart B gets the change made during the outage')
  t.equal(a.metrics().authFailures + b.metrics().authFailures, 0, 'no authentication failure on the way')

  // Each broken configuration: the store opens (from its persisted state), is not connected,
  // logs the reason once with its code, and keeps retrying.
  const cases = [
    { name: 'a wrong CA', file: await goodConfig(e, 'wrong-ca.config', { 'trusted-ca-file': e.otherCa.cert }), code: 'WARDEN_ERR_KVSTORE_TLS', reason: 'server-certificate-untrusted', counter: 'tlsFailures' },
    { name: 'no client certificate', file: await e.writeConfig('no-cert.config', { endpoints: [e.etcd.url], 'trusted-ca-file': e.pki.ca.cert, username: 'warden', password: PASSWORD }), code: 'WARDEN_ERR_KVSTORE_TLS', reason: 'client-certificate-rejected', counter: 'tlsFailures' },
    { name: 'a wrong password', file: await goodConfig(e, 'wrong-password.config', { password: 'not-the-password' }), code: 'WARDEN_ERR_KVSTORE_AUTH', reason: 'authentication-failed', counter: 'authFailures' }
  ]
  for (const c of cases) {
    await t.test(c.name, async (t) => {
      const log = capture()
      const stateDir = await tempDir(t)
      // the state a previous run persisted: the cluster as node-a saw it
      await a.persist()
      await copyFile(join(a.opts.stateDir, 'cluster.json'), join(stateDir, 'cluster.json'))
      const x = await agent(t, c.file, 'node-c', '192.0.2.3', log.logger, stateDir)
      t.strictSame(x.current().identities.get(webId), WEB, 'enforces the persisted cluster state meanwhile')
      t.ok(await until(() => x.metrics()[c.counter] >= 3), 'retries with backoff')
      t.equal(x.metrics().connected, 0, 'never connected')
      const line = lineWith(log.lines(), c.code)
      t.equal(line?.reason, c.reason, `logged with ${c.code} and the reason`)
      t.equal(line?.level, 50, 'as an error')
      t.equal(log.lines().filter((l) => l.code === c.code).length, 1, 'once, not once per retry')
      t.notOk(log.raw().includes(PASSWORD), 'the password is in no log line')
    })
  }

  await t.test('a wrong password fixed in etcd: the retrying agent connects', async (t) => {
    const log = capture()
    const x = await agent(t, await goodConfig(e, 'later.config', { password: 'the-new-password' }), 'node-d', '192.0.2.4', log.logger)
    t.ok(await until(() => x.metrics().authFailures >= 1), 'refused first')
    // the operator changes the user's password to the one the agent has
    await e.etcdctl(['user', 'passwd', 'warden', '--interactive=false'], 'the-new-password\n')
    t.ok(await x.conn.waitConnected(10000), 'connected at a retry, without a restart')
    t.ok(log.lines().some((l) => l.msg === 'kvstore reconnected: state relisted, keys republished'), 'and says so')
    t.notOk(log.raw().includes('the-new-password'), 'the new password is in no log line either')
  })

  t.notOk(logA.raw().includes(PASSWORD) || logB.raw().includes(PASSWORD), 'the password is in none of the agents\' log lines')
})

t.test('an auth token etcd expired within a session: the next call authenticates again, the session goes on', async (t) => {
  // etcd's simple tokens live --auth-token-ttl seconds after their last use
  const e = await startTlsEtcd(t, 23846, { rootPassword: ROOT_PASSWORD, user: 'warden', password: PASSWORD }, ['--auth-token-ttl', '1'])
  const logA = capture()
  const a = await agent(t, await goodConfig(e), 'node-a', '192.0.2.1', logA.logger)
  const b = await agent(t, await goodConfig(e), 'node-b', '192.0.2.2', capture().logger)
  t.ok(await a.conn.waitConnected(10000) && await b.conn.waitConnected(10000), 'both connected')
  await a.allocator.prepare([WEB], Date.now())
  const webId = a.allocator.acquireIdentity(WEB, Date.now())
  a.publishEndpoints([ep('web-1', '10.42.1.10', webId, 1)])
  t.ok(await until(() => entry(b.current(), '10.42.1.10/32') === webId), 'B has A\'s pod')
  const sessions = a.metrics().sessions
  await new Promise((resolve) => setTimeout(resolve, 2500)) // A's token expires: A makes no call that uses it
  a.publishEndpoints([ep('web-1', '10.42.1.10', webId, 1), ep('web-2', '10.42.1.11', webId, 2)])
  t.ok(await until(() => entry(b.current(), '10.42.1.11/32') === webId), 'A\'s write after the expiry reaches B')
  t.equal(a.metrics().sessions, sessions, 'in the same session (the client took a new token)')
  t.equal(a.metrics().authFailures, 0, 'no authentication failure')
})

t.test('the TLS probe tells a plain server and a closed port from a handshake failure', async (t) => {
  const plain = createServer((sock) => { sock.on('data', () => sock.end('HTTP/1.1 400 Bad Request\r\n\r\n')) })
  await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', resolve))
  t.teardown(() => plain.close())
  const port = (plain.address() as AddressInfo).port
  t.equal((await probeTls(`https://127.0.0.1:${port}`, {}, 2000))?.reason, 'not-tls', 'a server that answers in clear: not-tls')
  plain.close()
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal(await probeTls(`https://127.0.0.1:${port}`, {}, 2000), null, 'nothing listening: not a TLS failure (the outage it is)')
})

t.test('the client certificate is read again at each reconnect: a rotated one is used, a broken one is reported', async (t) => {
  const e = await startTlsEtcd(t, 23846)
  const dir = await tempDir(t)
  const foreign = await issue(e.pki.dir, e.otherCa, 'foreign', { cn: 'warden' })
  const cert = join(dir, 'client.crt')
  const key = join(dir, 'client.key')
  const install = async (pair: { cert: string, key: string }): Promise<void> => { await copyFile(pair.cert, cert); await copyFile(pair.key, key) }
  await install(e.pki.client)
  const log = capture()
  const a = await agent(t, await e.writeConfig('rotating.config', { endpoints: [e.etcd.url], 'trusted-ca-file': e.pki.ca.cert, 'cert-file': cert, 'key-file': key }), 'node-a', '192.0.2.1', log.logger)
  t.ok(await a.conn.waitConnected(10000), 'connected with the first certificate')

  // rotated to a certificate etcd does not trust, then etcd restarts: the reconnect uses the new files
  await install(foreign)
  await e.etcd.stop()
  await e.etcd.start()
  t.ok(await until(() => a.metrics().tlsFailures >= 1), 'the reconnect presents the rotated certificate')
  t.equal(lineWith(log.lines(), 'WARDEN_ERR_KVSTORE_TLS')?.reason, 'client-certificate-rejected', 'which etcd refuses, and the log says so')

  // a key file gone mid-rotation: reported as such, retried
  await rm(key)
  t.ok(await until(() => lineWith(log.lines(), 'WARDEN_ERR_KVSTORE_CONFIG') !== undefined), 'an unreadable key file is reported')
  t.match(String(lineWith(log.lines(), 'WARDEN_ERR_KVSTORE_CONFIG')?.err), /key-file: cannot read/, 'naming the key')

  await install(e.pki.client)
  t.ok(await a.conn.waitConnected(10000), 'the good pair back: connected, without a restart')
})
