/**
 * Throwaway certificates for a TLS etcd in the lab, the demo and the tests, made with the
 * `openssl` command (scripts/setup.sh installs it): a CA, etcd's server certificate for the
 * addresses it listens on, and client certificates signed by that CA (or by another CA, to
 * test a refusal). EC P-256 keys, valid for a day, written unencrypted into `dir` (mode 0700):
 * whoever makes them removes the directory.
 */
import { execFile } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { isIP } from 'node:net'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

export interface CertFiles { cert: string, key: string }

async function openssl (args: string[]): Promise<void> {
  await run('openssl', args, { timeout: 30_000 })
}

async function newKey (path: string): Promise<void> {
  await openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', path])
}

/** A self-signed CA named `name`: `<dir>/<name>.crt` and `.key`. */
export async function makeCa (dir: string, name: string): Promise<CertFiles> {
  await mkdir(dir, { recursive: true, mode: 0o700 })
  const key = join(dir, `${name}.key`)
  const cert = join(dir, `${name}.crt`)
  await newKey(key)
  await openssl(['req', '-x509', '-new', '-key', key, '-out', cert, '-days', '1', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
  return { cert, key }
}

/**
 * A certificate for `cn` signed by `ca`: a server certificate naming `sans` (addresses or DNS
 * names) with `server`, else a client certificate (etcd takes its CN as the user name when
 * authentication is on and no password is given).
 */
export async function issue (dir: string, ca: CertFiles, name: string, opts: { cn: string, sans?: string[], server?: boolean }): Promise<CertFiles> {
  const key = join(dir, `${name}.key`)
  const cert = join(dir, `${name}.crt`)
  const csr = join(dir, `${name}.csr`)
  const ext = join(dir, `${name}.ext`)
  await newKey(key)
  await openssl(['req', '-new', '-key', key, '-out', csr, '-subj', `/CN=${opts.cn}`])
  const lines = ['basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature',
    // etcd's own server certificate also authenticates it as a client of its peers
    `extendedKeyUsage=${opts.server === true ? 'serverAuth,clientAuth' : 'clientAuth'}`]
  const sans = (opts.sans ?? []).map((s) => isIP(s) === 0 ? `DNS:${s}` : `IP:${s}`)
  if (sans.length > 0) lines.push(`subjectAltName=${sans.join(',')}`)
  await writeFile(ext, lines.join('\n') + '\n')
  await openssl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-out', cert, '-days', '1', '-extfile', ext])
  return { cert, key }
}

/** What a TLS etcd and its clients need: the CA, etcd's server pair, one client pair. */
export interface EtcdPki { dir: string, ca: CertFiles, server: CertFiles, client: CertFiles }

/** CA `etcd-ca`, server `etcd` for `hosts` (and localhost), client `warden` (CN `clientCn`). */
export async function makeEtcdPki (dir: string, hosts: string[], clientCn = 'warden'): Promise<EtcdPki> {
  const ca = await makeCa(dir, 'etcd-ca')
  const server = await issue(dir, ca, 'etcd', { cn: 'etcd', sans: [...hosts, 'localhost'], server: true })
  const client = await issue(dir, ca, 'client', { cn: clientCn })
  return { dir, ca, server, client }
}
