/** Errors of the cluster store: one code per failure an operator can act on, with context. */
export const ERR = {
  /** A key or value in etcd that does not have Cilium's shape. */
  KVSTORE_FORMAT: 'WARDEN_ERR_KVSTORE_FORMAT',
  /** The kvstore did not answer (unreachable, timed out); the caller retries. */
  KVSTORE_UNAVAILABLE: 'WARDEN_ERR_KVSTORE_UNAVAILABLE',
  /** A `--kvstore` URL or cluster flag that cannot be used. */
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
