/**
 * A real etcd serving TLS only, requiring a client certificate, and (optionally) with
 * authentication enabled, for a test: certificates made at test time (lab/pki.ts, openssl) in a
 * temp directory, its own ports (pairs in 23840-23848, one pair per test file), and the
 * process, certificates and data removed in teardown even when the test fails.
 * Taken: 23840 and 23846 test/cluster/kvstore-tls, 23842 test/e2e/cluster-tls-agent (23844 is
 * test/e2e/cluster-tls-lab's lab etcd).
 */
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { stringify } from 'yaml'
import { EtcdProcess, type EtcdAuth } from '../../lab/etcd.js'
import { makeCa, makeEtcdPki, type CertFiles, type EtcdPki } from '../../lab/pki.js'

interface Teardown { teardown: (fn: () => void | Promise<void>) => void }

export interface TlsEtcd {
  etcd: EtcdProcess
  pki: EtcdPki
  /** A CA that signed nothing etcd trusts (a wrong `trusted-ca-file`, or a foreign client). */
  otherCa: CertFiles
  dir: string
  /** Write an etcd client configuration file (Cilium's etcd.config format) into the temp dir. */
  writeConfig: (name: string, cfg: Record<string, unknown>) => Promise<string>
  /** etcdctl with the client certificate (as root with `auth`); `input` goes to its stdin. */
  etcdctl: (args: string[], input?: string) => Promise<void>
}

/** `clientPort` even, in 23840..23848; the peer port is the next one. */
export async function startTlsEtcd (t: Teardown, clientPort: number, auth?: EtcdAuth, extraArgs?: string[]): Promise<TlsEtcd> {
  if (clientPort < 23840 || clientPort > 23848 || clientPort % 2 !== 0) throw new Error(`TLS etcd test port ${clientPort} is not one of this project's (23840..23848, even)`)
  const dir = await mkdtemp(join(tmpdir(), 'wdt-etcd-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const pki = await makeEtcdPki(join(dir, 'pki'), ['127.0.0.1'])
  const otherCa = await makeCa(join(dir, 'pki'), 'other-ca')
  const etcd = new EtcdProcess({
    name: `wdt${clientPort}`,
    dataDir: join(dir, 'data'),
    clientPort,
    peerPort: clientPort + 1,
    tls: { certFile: pki.server.cert, keyFile: pki.server.key, trustedCaFile: pki.ca.cert, clientCertFile: pki.client.cert, clientKeyFile: pki.client.key },
    auth,
    extraArgs
  })
  t.teardown(async () => await etcd.stop())
  await etcd.start()
  const writeConfig = async (name: string, cfg: Record<string, unknown>): Promise<string> => {
    const p = join(dir, name)
    await writeFile(p, stringify(cfg), { mode: 0o600 })
    return p
  }
  const etcdctl = async (args: string[], input = ''): Promise<void> => {
    const env: NodeJS.ProcessEnv = { ...process.env, ETCDCTL_API: '3' }
    if (auth !== undefined) env.ETCDCTL_USER = `root:${auth.rootPassword}`
    await new Promise<void>((resolve, reject) => {
      const p = execFile('etcdctl', ['--endpoints', etcd.url, '--cacert', pki.ca.cert, '--cert', pki.client.cert, '--key', pki.client.key, ...args],
        { env, timeout: 15000 }, (err, _out, stderr) => { if (err !== null) reject(new Error(`etcdctl ${args.join(' ')}: ${stderr}`)); else resolve() })
      p.stdin?.on('error', () => {}) // etcdctl may exit without reading it: its status tells
      p.stdin?.end(input)
    })
  }
  return { etcd, pki, otherCa, dir, writeConfig, etcdctl }
}
