/**
 * The few etcd v3 calls the cluster store makes, over one `etcd3` client, every one with a
 * deadline: a call to an unreachable etcd fails within `timeoutMs` (WARDEN_ERR_KVSTORE_UNAVAILABLE)
 * instead of hanging, and the connection's state machine (connection.ts) decides what follows.
 * The client's own retries and circuit breaker are off: one policy, ours, decides on retries.
 * A call etcd refuses for the agent's credentials fails as WARDEN_ERR_KVSTORE_AUTH instead, with
 * the reason: that is not an outage, and the operator must be told which it is.
 */
import {
  Etcd3, EtcdAuthenticationFailedError, EtcdPermissionDeniedError, EtcdUserNotFoundError,
  type IKeyValue, type IResponseHeader, type Watcher
} from 'etcd3'
import { noop } from 'cockatiel'
import { ClusterError, ERR } from './errors.js'
import type { KvstoreTlsMaterial, Secret } from './etcd-config.js'

export { parseKvstoreUrls } from './etcd-config.js'

/** etcd's answer to a read: the keys and the store revision they are at. */
export interface KvList { kvs: { key: string, value: string, modRevision: number, createRevision: number }[], revision: number, clusterId: string }

/** The end of the range holding every key that starts with `prefix` (etcd's prefix convention). */
export function prefixEnd (prefix: string): Buffer {
  const b = Buffer.from(prefix)
  for (let i = b.length - 1; i >= 0; i--) {
    if (b[i] < 0xff) { const end = b.subarray(0, i + 1); end[i]++; return Buffer.from(end) }
  }
  return Buffer.from([0])
}

function header (h: IResponseHeader): { revision: number, clusterId: string } {
  return { revision: Number(h.revision), clusterId: String(h.cluster_id) }
}

/**
 * Why etcd refused this agent's credentials; null when the error is not about them. An invalid
 * auth token is not among them: etcd forgets tokens when it restarts and expires idle ones, the
 * client authenticates again for a unary call, and a stream that fails with it ends the session
 * like any outage (the next session authenticates afresh).
 */
export function authFailure (err: unknown): { reason: string, detail: string } | null {
  const msg = (err as Error)?.message ?? ''
  if (err instanceof EtcdAuthenticationFailedError || err instanceof EtcdUserNotFoundError) return { reason: 'authentication-failed', detail: 'etcd refused the user name or password (etcd.config: username, password)' }
  if (err instanceof EtcdPermissionDeniedError) return { reason: 'permission-denied', detail: 'the etcd user may not read or write cilium/state/ (grant its role readwrite on that prefix)' }
  if (msg.includes('authentication is not enabled')) return { reason: 'auth-not-enabled', detail: 'a user name and password are configured but etcd has authentication disabled' }
  if (msg.includes('user name is empty')) return { reason: 'credentials-required', detail: 'etcd has authentication enabled and no user was given (etcd.config: username, password, or a client certificate whose CN is an etcd user)' }
  return null
}

/** How to reach etcd beyond its URLs: TLS material and credentials (etcd-config.ts). */
export interface KvSecurity {
  tls?: KvstoreTlsMaterial
  auth?: { username: string, password: Secret }
}

export class Kv {
  readonly client: Etcd3

  constructor (hosts: string[], readonly timeoutMs: number, security: KvSecurity = {}) {
    this.client = new Etcd3({
      hosts,
      // With credentials the client speaks TLS to every host; the URLs are https then (etcd-config.ts).
      // (no rootCertificate: Node's default CA store, as gRPC's createSsl takes it)
      credentials: security.tls as { rootCertificate: Buffer } | undefined,
      // The client authenticates before its first call and again when etcd says the token is
      // invalid; a new session (connection.ts) is a new client, so a new token.
      auth: security.auth === undefined ? undefined : { username: security.auth.username, password: security.auth.password.reveal() },
      dialTimeout: timeoutMs,
      defaultCallOptions: (ctx) => ctx.isStream ? {} : { deadline: Date.now() + timeoutMs },
      faultHandling: { host: () => noop, global: noop }
    })
  }

  private async call<T> (what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (err) {
      const auth = authFailure(err)
      if (auth !== null) throw new ClusterError(ERR.KVSTORE_AUTH, `etcd ${what}: ${auth.detail}`, { op: what, reason: auth.reason })
      throw new ClusterError(ERR.KVSTORE_UNAVAILABLE, `etcd ${what}: ${(err as Error).message}`, { op: what })
    }
  }

  async list (prefix: string): Promise<KvList> {
    const res = await this.call(`list ${prefix}`, async () => await this.client.kv.range({ key: Buffer.from(prefix), range_end: prefixEnd(prefix) }))
    return { ...header(res.header), kvs: res.kvs.map(kv) }
  }

  /** One key (null when absent), with the store's revision. */
  async get (key: string): Promise<{ value: string | null, modRevision: number, revision: number, clusterId: string }> {
    const res = await this.call(`get ${key}`, async () => await this.client.kv.range({ key: Buffer.from(key) }))
    const k = res.kvs[0]
    return { ...header(res.header), value: k === undefined ? null : k.value.toString(), modRevision: k === undefined ? 0 : Number(k.mod_revision) }
  }

  async put (key: string, value: string, lease?: string): Promise<number> {
    const res = await this.call(`put ${key}`, async () => await this.client.kv.put({ key: Buffer.from(key), value: Buffer.from(value), lease }))
    return header(res.header).revision
  }

  async delete (key: string): Promise<void> {
    await this.call(`delete ${key}`, async () => await this.client.kv.deleteRange({ key: Buffer.from(key) }))
  }

  /** Put every key in `puts` if `key` does not exist (create-if-absent); true when it did not. */
  async createIfAbsent (key: string, puts: { key: string, value: string, lease?: string }[]): Promise<boolean> {
    const res = await this.call(`create ${key}`, async () => await this.client.kv.txn({
      compare: [{ key: Buffer.from(key), target: 'Create', result: 'Equal', create_revision: 0 }],
      success: puts.map((p) => ({ request_put: { key: Buffer.from(p.key), value: Buffer.from(p.value), lease: p.lease } })),
      failure: []
    }))
    return res.succeeded
  }

  /** Put `puts` if `key` holds exactly `value`; true when it did. */
  async putIfValue (key: string, value: string, puts: { key: string, value: string, lease?: string }[]): Promise<boolean> {
    const res = await this.call(`compare ${key}`, async () => await this.client.kv.txn({
      compare: [{ key: Buffer.from(key), target: 'Value', result: 'Equal', value: Buffer.from(value) }],
      success: puts.map((p) => ({ request_put: { key: Buffer.from(p.key), value: Buffer.from(p.value), lease: p.lease } })),
      failure: []
    }))
    return res.succeeded
  }

  /** Delete `key` if it was not modified since `modRevision`; true when deleted. */
  async deleteIfUnchanged (key: string, modRevision: number): Promise<boolean> {
    const res = await this.call(`delete ${key}`, async () => await this.client.kv.txn({
      compare: [{ key: Buffer.from(key), target: 'Mod', result: 'Equal', mod_revision: modRevision }],
      success: [{ request_delete_range: { key: Buffer.from(key) } }],
      failure: []
    }))
    return res.succeeded
  }

  async grantLease (ttlSeconds: number): Promise<string> {
    const res = await this.call('lease grant', async () => await this.client.leaseClient.leaseGrant({ TTL: ttlSeconds }))
    return String(res.ID)
  }

  /** Seconds the lease has left; <= 0 when etcd no longer has it. */
  async leaseTtl (id: string): Promise<number> {
    const res = await this.call('lease ttl', async () => await this.client.leaseClient.leaseTimeToLive({ ID: id }))
    return Number(res.TTL)
  }

  /** One keep-alive round trip on the lease's stream; resolves with the TTL etcd granted (<= 0: gone). */
  async keepAlive (id: string): Promise<number> {
    return await this.call('lease keepalive', async () => {
      const stream = await this.client.leaseClient.leaseKeepAlive() as unknown as KeepAliveStream
      try {
        return await new Promise<number>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('keepalive timed out')), this.timeoutMs)
          stream.once('data', (res: { TTL: string }) => { clearTimeout(timer); resolve(Number(res.TTL)) })
          stream.once('error', (err: Error) => { clearTimeout(timer); reject(err) })
          stream.write({ ID: id })
        })
      } finally {
        stream.end()
      }
    })
  }

  async revokeLease (id: string): Promise<void> {
    await this.call('lease revoke', async () => await this.client.leaseClient.leaseRevoke({ ID: id }))
  }

  /** Watch a prefix from `fromRevision` (inclusive). */
  async watch (prefix: string, fromRevision: number): Promise<Watcher> {
    return await this.call(`watch ${prefix}`, async () => {
      let timer: NodeJS.Timeout | undefined
      const timeout = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error('watch not created in time')), this.timeoutMs) })
      try {
        return await Promise.race([this.client.watch().prefix(prefix).startRevision(String(fromRevision)).create(), timeout])
      } finally {
        clearTimeout(timer)
      }
    })
  }

  close (): void { this.client.close() }
}

function kv (k: IKeyValue): KvList['kvs'][number] {
  return { key: k.key.toString(), value: k.value.toString(), modRevision: Number(k.mod_revision), createRevision: Number(k.create_revision) }
}

interface KeepAliveStream {
  once: ((ev: 'data', fn: (res: { TTL: string }) => void) => void) & ((ev: 'error', fn: (err: Error) => void) => void)
  write: (req: { ID: string }) => void
  end: () => void
}
