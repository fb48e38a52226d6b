/**
 * `--kvstore`, `--kvstore-opt` and Cilium's etcd.config file: what is accepted, what is refused
 * (with WARDEN_ERR_KVSTORE_CONFIG naming the file and the key), and that the password never
 * prints. Real certificates (openssl, lab/pki.ts) in a temp directory; no etcd.
 */
import t from 'tap'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { inspect } from 'node:util'
import { stringify } from 'yaml'
import { parseEtcdConfig, parseKvstoreUrls, resolveKvstoreTarget, Secret } from '../../cluster/src/etcd-config.js'
import { makeCa, makeEtcdPki } from '../../lab/pki.js'
import { runCli } from '../helpers/cli.js'

t.test('--kvstore URLs', async (t) => {
  t.strictSame(parseKvstoreUrls('etcd://10.0.0.1:2379,etcd://etcd-2:2379'), ['http://10.0.0.1:2379', 'http://etcd-2:2379'])
  t.strictSame(parseKvstoreUrls('etcds://10.0.0.1:2379, https://etcd-2:2379/'), ['https://10.0.0.1:2379', 'https://etcd-2:2379'])
  for (const bad of ['', 'etcd://h', 'ftp://h:1', 'etcd://h:0', 'etcd://h:1,etcds://g:2', 'https://u:p@h:1']) {
    t.throws(() => parseKvstoreUrls(bad), { code: 'WARDEN_ERR_KVSTORE_CONFIG' }, JSON.stringify(bad))
  }
})

t.test('the etcd.config file', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'wdt-etcdcfg-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const pki = await makeEtcdPki(join(dir, 'pki'), ['127.0.0.1'])
  const other = await makeCa(join(dir, 'pki'), 'other-ca')
  let n = 0
  const file = async (cfg: unknown): Promise<string> => {
    const p = join(dir, `c${n++}.yaml`)
    await writeFile(p, typeof cfg === 'string' ? cfg : stringify(cfg))
    return p
  }
  const tls = { 'trusted-ca-file': pki.ca.cert, 'cert-file': pki.client.cert, 'key-file': pki.client.key }

  await t.test('Cilium\'s file, read as Cilium reads it', async (t) => {
    const f = await file({ endpoints: ['https://10.0.0.1:2379'], ...tls, username: 'warden', password: 'pw-1', 'dial-timeout': '5s' })
    const target = resolveKvstoreTarget('etcd', [`etcd.config=${f}`])
    t.strictSame(target.urls, ['https://10.0.0.1:2379'])
    t.strictSame(target.tls, { caFile: pki.ca.cert, certFile: pki.client.cert, keyFile: pki.client.key })
    t.equal(target.auth?.username, 'warden')
    t.equal(target.auth?.password.reveal(), 'pw-1')
    t.match(target.warnings, [/dial-timeout is ignored/], 'etcd client tuning keys are ignored with a warning')
    t.notOk(JSON.stringify(target).includes('pw-1'), 'JSON of the target hides the password')
    t.notOk(inspect(target, { depth: 9 }).includes('pw-1'), 'util.inspect too')
  })

  await t.test('relative paths are the file\'s directory\'s; ca-file is trusted-ca-file\'s old name', async (t) => {
    const f = await file({ endpoints: ['https://h:2379'], 'ca-file': 'pki/etcd-ca.crt', 'cert-file': 'pki/client.crt', 'key-file': 'pki/client.key' })
    t.strictSame(resolveKvstoreTarget('etcd', [`etcd.config=${f}`]).tls, { caFile: pki.ca.cert, certFile: pki.client.cert, keyFile: pki.client.key })
  })

  await t.test('endpoints from --kvstore, TLS from the file; https without a CA uses the default store', async (t) => {
    const f = await file({ ...tls })
    t.strictSame(resolveKvstoreTarget('etcds://h:2379', [`etcd.config=${f}`]).urls, ['https://h:2379'])
    t.strictSame(resolveKvstoreTarget('etcds://h:2379', []).tls, { caFile: undefined, certFile: undefined, keyFile: undefined })
    t.equal(resolveKvstoreTarget('etcd://h:2379', []).tls, undefined, 'plain stays plain')
  })

  const refused: Array<{ name: string, kvstore?: string, opts?: string[], cfg?: unknown, key?: string }> = [
    { name: 'a key of no etcd client configuration (a typo)', cfg: { endpoints: ['https://h:1'], 'trusted-ca': pki.ca.cert }, key: 'trusted-ca' },
    { name: 'JWT token auth', cfg: { endpoints: ['https://h:1'], token: 'x' }, key: 'token' },
    { name: 'certificate checks off', cfg: { endpoints: ['https://h:1'], 'insecure-skip-tls-verify': true }, key: 'insecure-skip-tls-verify' },
    { name: 'TLS files with plain http endpoints (no silent downgrade)', cfg: { endpoints: ['http://h:1'], ...tls }, key: 'trusted-ca-file' },
    { name: 'TLS files with an etcd:// --kvstore', kvstore: 'etcd://h:1', cfg: { ...tls }, key: 'trusted-ca-file' },
    { name: 'a password to a plain http endpoint', cfg: { endpoints: ['http://h:1'], username: 'u', password: 'p' }, key: 'username' },
    { name: 'insecure-transport with https', cfg: { endpoints: ['https://h:1'], 'insecure-transport': true }, key: 'insecure-transport' },
    { name: 'plain and TLS endpoints mixed', cfg: { endpoints: ['http://h:1', 'https://g:1'] } },
    { name: 'a certificate without its key', cfg: { endpoints: ['https://h:1'], 'cert-file': pki.client.cert }, key: 'cert-file' },
    { name: 'a user without a password', cfg: { endpoints: ['https://h:1'], username: 'u' }, key: 'username' },
    { name: 'a password that is not a string', cfg: { endpoints: ['https://h:1'], username: 'u', password: 1234 }, key: 'password' },
    { name: 'endpoints not a list', cfg: { endpoints: 'https://h:1' }, key: 'endpoints' },
    { name: 'endpoints in --kvstore and in the file', kvstore: 'etcds://h:1', cfg: { endpoints: ['https://h:1'] } },
    { name: '--kvstore etcd with a file without endpoints', cfg: { ...tls }, key: 'endpoints' },
    { name: '--kvstore etcd without a file', opts: [] },
    { name: 'an unreadable CA file', cfg: { endpoints: ['https://h:1'], 'trusted-ca-file': join(dir, 'missing.crt') }, key: 'trusted-ca-file' },
    { name: 'a CA file without a certificate', cfg: { endpoints: ['https://h:1'], 'trusted-ca-file': pki.client.key }, key: 'trusted-ca-file' },
    { name: 'a key that is not the certificate\'s', cfg: { endpoints: ['https://h:1'], 'cert-file': pki.client.cert, 'key-file': other.key }, key: 'key-file' },
    { name: 'not a mapping', cfg: '- a\n- b\n' },
    { name: 'not YAML', cfg: 'endpoints: [\n' },
    { name: 'a missing file', opts: [`etcd.config=${join(dir, 'nope.yaml')}`] },
    { name: 'a Cilium option warden does not implement', opts: ['etcd.qps=100'] },
    { name: 'an unknown option', opts: ['etcd.confg=/x'] }
  ]
  for (const c of refused) {
    await t.test(`refused: ${c.name}`, async (t) => {
      const opts = c.opts ?? [`etcd.config=${await file(c.cfg)}`]
      try {
        resolveKvstoreTarget(c.kvstore ?? 'etcd', opts)
        t.fail('accepted')
      } catch (err) {
        const e = err as Error & { code: string, context: Record<string, unknown> }
        t.equal(e.code, 'WARDEN_ERR_KVSTORE_CONFIG')
        if (c.key !== undefined) {
          t.equal(e.context.key, c.key, 'names the key')
          t.match(e.message, c.key, 'in the message')
          t.match(e.message, opts[0].slice('etcd.config='.length), 'with the file')
        }
      }
    })
  }

  await t.test('warden run refuses a bad etcd.config before starting anything', async (t) => {
    const f = await file({ endpoints: ['http://h:1'], ...tls })
    const r = await runCli(['run', '--policies', dir, '--endpoints', join(dir, 'e.yaml'), '--kvstore', 'etcd', '--kvstore-opt', `etcd.config=${f}`])
    t.equal(r.code, 2, 'a usage error')
    t.match(r.err, `WARDEN_ERR_KVSTORE_CONFIG: ${f}: trusted-ca-file is set but the endpoints are plain http`, 'with the code, the file and the key')
    const r2 = await runCli(['run', '--policies', dir, '--endpoints', join(dir, 'e.yaml'), '--kvstore-opt', `etcd.config=${f}`])
    t.match(r2.err, '--kvstore-opt needs --kvstore')
  })

  t.equal(`${String(new Secret('x'))}${JSON.stringify({ s: new Secret('x') })}`, '[redacted]{"s":"[redacted]"}')
})

t.test('a malformed file never quotes the password in its error', async (t) => {
  const secret = 's3cr3t-834561'
  const texts = [
    `endpoints: [https://h:1]\nusername: u\npassword: "${secret}\n`, // unclosed quote: a YAML syntax error
    `endpoints: [https://h:1]\nusername: u\npassword: ${secret}: more\n`,
    `endpoints: [https://h:1]\nusername: u\npassword: [${secret}\n`,
    `endpoints: [https://h:1]\nusername: u\npassword: ${secret}\npassword: ${secret}\n`, // a duplicate key
    `endpoints: [https://h:1]\nusername: u\npassword: [${secret}]\n`,
    'endpoints: [https://h:1]\nusername: u\npassword: 834561\n' // a number: not a string
  ]
  for (const text of texts) {
    let message = ''
    try { parseEtcdConfig(text, '/etc/warden/etcd.config') } catch (err) { message = (err as Error).message + inspect(err) }
    t.match(message, /^\/etc\/warden\/etcd\.config: /, `refused: ${JSON.stringify(message.split('\n')[0])}`)
    t.notMatch(message, /834561/, 'the password is not in the error')
  }
})
