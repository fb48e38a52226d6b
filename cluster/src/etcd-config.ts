/**
 * Where etcd is and how to talk to it: the `--kvstore` endpoints, the `--kvstore-opt` options,
 * and the etcd client configuration file Cilium reads (`--kvstore-opt etcd.config=FILE`, etcd's
 * own client YAML format: `endpoints`, `trusted-ca-file`, `cert-file`, `key-file`, `username`,
 * `password`). Cilium hands that file to etcd's `clientv3/yaml` reader; the keys and their
 * meaning here are the same, so a file written for Cilium works unchanged.
 *
 * Stricter than etcd's reader, which ignores what it does not know: a key of no etcd client
 * configuration is refused (a misspelt `trusted-ca-file` must not quietly change which CA is
 * trusted), settings that would weaken TLS are refused, and so is any mix of plain `http`
 * endpoints with TLS settings or credentials -- there is no silent downgrade. etcd client keys
 * that tune its own dialer (`dial-timeout`, ...) are ignored with a warning: the agent's
 * connection (connection.ts) has its own deadlines and backoff.
 *
 * The password is read from the file only (never a flag, so it is not in `ps` or a unit file)
 * and kept in a `Secret`, which prints as `[redacted]` wherever it ends up.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { inspect } from 'node:util'
import { parse } from 'yaml'
import { ClusterError, ERR } from './errors.js'

/** A value that must never reach a log: JSON and `util.inspect` show `[redacted]`. */
export class Secret {
  readonly #value: string
  constructor (value: string) { this.#value = value }
  reveal (): string { return this.#value }
  toJSON (): string { return '[redacted]' }
  toString (): string { return '[redacted]' }
  [inspect.custom] (): string { return '[redacted]' }
}

/** The files of the TLS settings (absolute paths); each is read again at every session start. */
export interface KvstoreTlsFiles {
  /** CA bundle the server's certificate must chain to; absent: Node's default CA store. */
  caFile?: string
  /** Client certificate chain and its key (both or neither). */
  certFile?: string
  keyFile?: string
}

/** Everything needed to reach etcd. */
export interface KvstoreTarget {
  /** `http://host:port` or `https://host:port`, all of one scheme. */
  urls: string[]
  /** Present when the endpoints are `https`. */
  tls?: KvstoreTlsFiles
  auth?: { username: string, password: Secret }
  /** The etcd.config file, when one was given (for errors and logs). */
  configFile?: string
  /** What the reader ignored, to be logged once by the agent. */
  warnings: string[]
}

/** The PEM material of KvstoreTlsFiles, as the etcd3 client takes it. */
export interface KvstoreTlsMaterial { rootCertificate?: Buffer, privateKey?: Buffer, certChain?: Buffer }

const URL_RE = /^(etcd|etcds|http|https):\/\/([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\]):([0-9]{1,5})\/?$/

function fail (message: string, context: Record<string, unknown>): never {
  throw new ClusterError(ERR.KVSTORE_CONFIG, message, context)
}

/** One endpoint -> `http(s)://host:port`; `etcd`/`etcds` are warden's spellings of `http`/`https`. */
function normalizeUrl (u: string, where: string): { url: string, secure: boolean } {
  const m = URL_RE.exec(u)
  if (m === null || Number(m[3]) < 1 || Number(m[3]) > 65535) fail(`${where}: ${JSON.stringify(u)} is not an etcd endpoint (etcd://HOST:PORT, etcds://HOST:PORT, http://HOST:PORT or https://HOST:PORT)`, { endpoint: u })
  const secure = m[1] === 'etcds' || m[1] === 'https'
  return { url: `${secure ? 'https' : 'http'}://${m[2]}:${m[3]}`, secure }
}

/** `etcd://host:port[,...]` (or `etcds://`, `http://`, `https://`) -> client URLs of one scheme. */
export function parseKvstoreUrls (spec: string): string[] {
  const list = spec.split(',').map((s) => s.trim()).filter((s) => s !== '')
  if (list.length === 0) fail('--kvstore needs at least one etcd://HOST:PORT', { kvstore: spec })
  const out = list.map((u) => normalizeUrl(u, '--kvstore'))
  oneScheme(out, '--kvstore')
  return out.map((e) => e.url)
}

function oneScheme (eps: { url: string, secure: boolean }[], where: string): void {
  if (eps.some((e) => e.secure) && eps.some((e) => !e.secure)) fail(`${where}: plain and TLS endpoints mixed (${eps.map((e) => e.url).join(', ')}): every endpoint must use TLS or none`, { endpoints: eps.map((e) => e.url) })
}

/** The `--kvstore-opt` options Cilium has that warden does not implement: refused by name. */
const CILIUM_OPTS_UNSUPPORTED = ['etcd.address', 'etcd.operator', 'etcd.qps', 'etcd.bootstrapQps', 'etcd.maxInflight', 'etcd.listLimit', 'etcd.keepaliveHeartbeat', 'etcd.keepaliveTimeout']

/** `--kvstore-opt KEY=VALUE` (repeatable) -> the etcd.config path, if given. */
export function parseKvstoreOpts (opts: readonly string[]): { configFile?: string } {
  let configFile: string | undefined
  for (const o of opts) {
    const i = o.indexOf('=')
    const key = i < 0 ? o : o.slice(0, i)
    const value = i < 0 ? '' : o.slice(i + 1)
    if (key === 'etcd.config') {
      if (value === '') fail('--kvstore-opt etcd.config needs a file: etcd.config=FILE', { option: o })
      if (configFile !== undefined) fail('--kvstore-opt etcd.config is given twice', { option: o })
      configFile = value
    } else if (CILIUM_OPTS_UNSUPPORTED.includes(key)) {
      fail(`--kvstore-opt ${key} is a Cilium option warden does not implement (only etcd.config=FILE)`, { option: o })
    } else {
      fail(`--kvstore-opt: unknown option ${JSON.stringify(key)} (only etcd.config=FILE)`, { option: o })
    }
  }
  return { configFile }
}

/** Keys of etcd's client YAML that warden reads. */
const READ = ['endpoints', 'trusted-ca-file', 'ca-file', 'cert-file', 'key-file', 'username', 'password', 'insecure-transport', 'insecure-skip-tls-verify']
/** Keys of etcd's client YAML that tune etcd's Go client; ignored with a warning. */
const IGNORED = ['auto-sync-interval', 'dial-timeout', 'dial-keep-alive-time', 'dial-keep-alive-timeout', 'reject-old-cluster', 'permit-without-stream',
  'max-unary-retries', 'backoff-wait-between', 'backoff-jitter-fraction', 'backoff-exponent', 'backoff-max-wait-between']

/** The etcd client configuration file, read and checked (every problem names the file and the key). */
export interface EtcdConfigFile {
  endpoints?: { url: string, secure: boolean }[]
  caFile?: string
  certFile?: string
  keyFile?: string
  username?: string
  password?: Secret
  insecureTransport: boolean
  warnings: string[]
}

function kindOf (v: unknown): string {
  return Array.isArray(v) ? 'a list' : typeof v === 'object' ? 'a mapping' : `a ${typeof v}`
}

function yamlWhere (err: unknown): string {
  const e = err as { linePos?: { line: number, col: number }[], code?: string }
  const at = e.linePos?.[0]
  return `${at !== undefined ? ` at line ${at.line}, column ${at.col}` : ''}${typeof e.code === 'string' ? ` (${e.code})` : ''}`
}

export function parseEtcdConfig (text: string, file: string): EtcdConfigFile {
  const bad = (key: string, message: string): never => fail(`${file}: ${key}: ${message}`, { file, key })
  let doc: unknown
  // yaml's message quotes the offending line, which may be the password's: only its position and code.
  try { doc = parse(text) } catch (err) { fail(`${file}: not valid YAML${yamlWhere(err)}`, { file }) }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) fail(`${file}: must be a mapping of etcd client settings (endpoints, trusted-ca-file, cert-file, key-file, username, password)`, { file })
  const m = doc as Record<string, unknown>
  const out: EtcdConfigFile = { insecureTransport: false, warnings: [] }
  for (const key of Object.keys(m)) {
    if (IGNORED.includes(key)) out.warnings.push(`${file}: ${key} is ignored (the agent's own deadlines and backoff apply)`)
    else if (key === 'token') bad(key, 'JWT token authentication is not supported; use username and password, or a client certificate')
    else if (!READ.includes(key)) bad(key, `not a key of etcd's client configuration (known: ${READ.join(', ')})`)
  }
  // etcd's reader (Go) treats an empty string as "not set"; so does this one.
  const str = (key: string): string | undefined => {
    const v = m[key]
    if (v === undefined || v === null || v === '') return undefined
    // the type, never the value: it may be the password
    if (typeof v !== 'string') bad(key, `must be a string, got ${kindOf(v)}`)
    return v as string
  }
  const bool = (key: string): boolean => {
    const v = m[key]
    if (v === undefined || v === null) return false
    if (typeof v !== 'boolean') bad(key, `must be true or false, got ${kindOf(v)}`)
    return v as boolean
  }
  if (m.endpoints !== undefined && m.endpoints !== null) {
    if (!Array.isArray(m.endpoints) || m.endpoints.length === 0 || !m.endpoints.every((e) => typeof e === 'string')) bad('endpoints', 'must be a non-empty list of URLs')
    const raw = (m.endpoints as string[]).map((e) => e.trim())
    if (raw.some((e) => /^etcds?:/.test(e))) bad('endpoints', 'use http:// or https:// in the etcd configuration file (etcd:// is --kvstore\'s spelling)')
    out.endpoints = raw.map((e) => normalizeUrl(e, `${file}: endpoints`))
    oneScheme(out.endpoints, `${file}: endpoints`)
  }
  // Relative paths are taken from the configuration file's directory, not the agent's working
  // directory (which a service manager sets): the file and its certificates travel together.
  const path = (key: string): string | undefined => { const p = str(key); return p === undefined ? undefined : resolve(dirname(resolve(file)), p) }
  const trusted = path('trusted-ca-file')
  const legacy = path('ca-file')
  if (trusted !== undefined && legacy !== undefined && trusted !== legacy) bad('ca-file', 'conflicts with trusted-ca-file (ca-file is its deprecated name; give one)')
  out.caFile = trusted ?? legacy
  out.certFile = path('cert-file')
  out.keyFile = path('key-file')
  if ((out.certFile === undefined) !== (out.keyFile === undefined)) bad(out.certFile === undefined ? 'key-file' : 'cert-file', 'cert-file and key-file go together (a client certificate needs its key)')
  out.username = str('username')
  const password = str('password')
  if ((out.username === undefined) !== (password === undefined)) bad(out.username === undefined ? 'password' : 'username', 'username and password go together')
  if (password !== undefined) out.password = new Secret(password)
  if (bool('insecure-skip-tls-verify')) bad('insecure-skip-tls-verify', 'true is refused: the server\'s certificate is always verified (give its CA in trusted-ca-file)')
  out.insecureTransport = bool('insecure-transport')
  if (out.insecureTransport && (out.caFile !== undefined || out.certFile !== undefined)) bad('insecure-transport', 'true together with TLS files: choose one')
  return out
}

/**
 * The target from the flags: `--kvstore` (URLs, or `etcd` -- Cilium's backend name -- when the
 * endpoints are in the configuration file) and `--kvstore-opt`. `readFile` is injectable for tests.
 */
export function resolveKvstoreTarget (kvstore: string, opts: readonly string[], readFile: (p: string) => string = (p) => readFileSync(p, 'utf8')): KvstoreTarget {
  const { configFile } = parseKvstoreOpts(opts)
  let cfg: EtcdConfigFile | undefined
  if (configFile !== undefined) {
    let text: string
    try { text = readFile(configFile) } catch (err) { fail(`cannot read the etcd configuration ${configFile}: ${(err as Error).message}`, { file: configFile }) }
    cfg = parseEtcdConfig(text, configFile)
  }
  let eps: { url: string, secure: boolean }[]
  if (kvstore.trim() === 'etcd') {
    if (cfg === undefined) fail('--kvstore etcd takes its endpoints from --kvstore-opt etcd.config=FILE; give that, or --kvstore etcd://HOST:PORT', { kvstore })
    if (cfg.endpoints === undefined) fail(`${configFile as string}: endpoints: missing (--kvstore etcd reads the endpoints from this file)`, { file: configFile, key: 'endpoints' })
    eps = cfg.endpoints
  } else {
    eps = parseKvstoreUrls(kvstore).map((url) => ({ url, secure: url.startsWith('https:') }))
    if (cfg?.endpoints !== undefined) fail(`the etcd endpoints are given twice: in --kvstore and in ${configFile as string}; use --kvstore etcd to take them from the file`, { kvstore, file: configFile })
  }
  const secure = eps[0].secure
  const where = configFile ?? '--kvstore'
  if (!secure && cfg !== undefined) {
    // No silent downgrade: TLS files or credentials next to a plain endpoint are a mistake.
    const tlsKey = cfg.caFile !== undefined ? 'trusted-ca-file' : cfg.certFile !== undefined ? 'cert-file' : undefined
    if (tlsKey !== undefined) fail(`${where}: ${tlsKey} is set but the endpoints are plain http (${eps.map((e) => e.url).join(', ')}): use https:// (or etcds://) endpoints`, { file: configFile, key: tlsKey })
    if (cfg.username !== undefined) fail(`${where}: username and password would travel in clear to plain http endpoints (${eps.map((e) => e.url).join(', ')}): use https:// (or etcds://) endpoints`, { file: configFile, key: 'username' })
  }
  if (secure && cfg?.insecureTransport === true) fail(`${where}: insecure-transport: true contradicts the https endpoints`, { file: configFile, key: 'insecure-transport' })
  const target: KvstoreTarget = { urls: eps.map((e) => e.url), warnings: cfg?.warnings ?? [], configFile }
  if (secure) target.tls = { caFile: cfg?.caFile, certFile: cfg?.certFile, keyFile: cfg?.keyFile }
  if (cfg?.username !== undefined && cfg.password !== undefined) target.auth = { username: cfg.username, password: cfg.password }
  // Read and check the files now: a missing or wrong file is a start error, not a retry loop.
  if (target.tls !== undefined) loadTlsMaterial(target.tls, configFile, readFileBuffer)
  return target
}

function readFileBuffer (p: string): Buffer { return readFileSync(p) }

/**
 * Read the TLS files and check them: the CA bundle holds certificates, the client certificate
 * parses, its key parses and is the certificate's. Errors name the configuration key and file.
 */
export function loadTlsMaterial (files: KvstoreTlsFiles, configFile: string | undefined, read: (p: string) => Buffer = readFileBuffer): KvstoreTlsMaterial {
  const where = configFile ?? '--kvstore'
  const load = (key: string, p: string): Buffer => {
    try { return read(p) } catch (err) { return fail(`${where}: ${key}: cannot read ${p}: ${(err as Error).message}`, { file: configFile, key, path: p }) }
  }
  const out: KvstoreTlsMaterial = {}
  if (files.caFile !== undefined) {
    out.rootCertificate = load('trusted-ca-file', files.caFile)
    try { new X509Certificate(out.rootCertificate) } catch (err) { fail(`${where}: trusted-ca-file: ${files.caFile} holds no PEM certificate: ${(err as Error).message}`, { file: configFile, key: 'trusted-ca-file', path: files.caFile }) }
  }
  if (files.certFile !== undefined && files.keyFile !== undefined) {
    out.certChain = load('cert-file', files.certFile)
    out.privateKey = load('key-file', files.keyFile)
    let cert: X509Certificate
    try { cert = new X509Certificate(out.certChain) } catch (err) { return fail(`${where}: cert-file: ${files.certFile} holds no PEM certificate: ${(err as Error).message}`, { file: configFile, key: 'cert-file', path: files.certFile }) }
    let key
    try { key = createPrivateKey(out.privateKey) } catch (err) { return fail(`${where}: key-file: ${files.keyFile} holds no usable private key (PEM, unencrypted): ${(err as Error).message}`, { file: configFile, key: 'key-file', path: files.keyFile }) }
    if (!cert.checkPrivateKey(key)) fail(`${where}: key-file: ${files.keyFile} is not the key of the certificate in ${files.certFile}`, { file: configFile, key: 'key-file', path: files.keyFile })
  }
  return out
}
