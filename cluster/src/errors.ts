/** Errors of the cluster store: one code per failure an operator can act on, with context. */
export const ERR = {
  /** A key or value in etcd that does not have Cilium's shape. */
  KVSTORE_FORMAT: 'WARDEN_ERR_KVSTORE_FORMAT',
  /** The kvstore did not answer (unreachable, timed out); the caller retries. */
  KVSTORE_UNAVAILABLE: 'WARDEN_ERR_KVSTORE_UNAVAILABLE',
  /**
   * etcd refused this agent's credentials (wrong user name or password, a user without
   * permission on `cilium/state/`, auth not enabled while a password is configured); the
   * connection retries with backoff, as the operator fixes either side.
   */
  KVSTORE_AUTH: 'WARDEN_ERR_KVSTORE_AUTH',
  /**
   * The TLS handshake with etcd failed: its certificate is not trusted by `trusted-ca-file`, it
   * refused (or required) the client certificate, or the endpoint does not speak TLS. Retried
   * with backoff.
   */
  KVSTORE_TLS: 'WARDEN_ERR_KVSTORE_TLS',
  /** A `--kvstore` URL, option, etcd configuration file or cluster flag that cannot be used. */
  KVSTORE_CONFIG: 'WARDEN_ERR_KVSTORE_CONFIG',
  /** No free identity found in a bounded number of tries (nodes racing); the next compile retries. */
  IDENTITY_CONTENTION: 'WARDEN_ERR_IDENTITY_CONTENTION',
  /** Every cluster identity (256..65535) is taken. */
  IDENTITY_EXHAUSTED: 'WARDEN_ERR_IDENTITY_EXHAUSTED',
  /** The persisted cluster state file cannot be read. */
  STATE: 'WARDEN_ERR_STATE'
} as const
export type ClusterErrorCode = typeof ERR[keyof typeof ERR]

export class ClusterError extends Error {
  constructor (readonly code: ClusterErrorCode, message: string, readonly context: Record<string, unknown> = {}) {
    super(message)
    this.name = 'ClusterError'
  }
}
