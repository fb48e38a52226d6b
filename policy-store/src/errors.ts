/**
 * Errors of the policy store. Every problem in a policy or endpoints file is a `PolicyError`
 * (a plain record, so a list of them can be logged, returned by `loadSnapshot` and printed by
 * `warden check`); `PolicyLoadError` wraps the list when the initial load must fail closed.
 */

/** The codes, one per failure mode a user can act on. */
export const ERR = {
  READ: 'WARDEN_ERR_POLICY_READ',
  TOO_LARGE: 'WARDEN_ERR_POLICY_TOO_LARGE',
  EMPTY: 'WARDEN_ERR_POLICY_EMPTY',
  BINARY: 'WARDEN_ERR_POLICY_BINARY',
  SYNTAX: 'WARDEN_ERR_POLICY_SYNTAX',
  KIND: 'WARDEN_ERR_POLICY_KIND',
  TYPE: 'WARDEN_ERR_POLICY_TYPE',
  UNKNOWN_FIELD: 'WARDEN_ERR_POLICY_UNKNOWN_FIELD',
  REQUIRED: 'WARDEN_ERR_POLICY_REQUIRED',
  VALUE: 'WARDEN_ERR_POLICY_VALUE',
  PORT: 'WARDEN_ERR_POLICY_PORT',
  PROTOCOL: 'WARDEN_ERR_POLICY_PROTOCOL',
  ENTITY: 'WARDEN_ERR_POLICY_ENTITY',
  CIDR: 'WARDEN_ERR_POLICY_CIDR',
  REGEX: 'WARDEN_ERR_POLICY_REGEX',
  SELECTOR: 'WARDEN_ERR_POLICY_SELECTOR',
  UNSUPPORTED: 'WARDEN_ERR_POLICY_UNSUPPORTED',
  ENDPOINT_DUPLICATE: 'WARDEN_ERR_ENDPOINT_DUPLICATE',
  ENDPOINT_IP: 'WARDEN_ERR_ENDPOINT_IP',
  IDENTITY_EXHAUSTED: 'WARDEN_ERR_IDENTITY_EXHAUSTED',
  IDENTITY_NOT_PREPARED: 'WARDEN_ERR_IDENTITY_NOT_PREPARED',
  LABEL_FILTER: 'WARDEN_ERR_LABEL_FILTER',
  STATE: 'WARDEN_ERR_STATE'
} as const
export type PolicyErrorCode = typeof ERR[keyof typeof ERR]

export interface PolicyError {
  code: PolicyErrorCode
  /** The file as given (relative paths stay relative). */
  file: string
  /** 1-based; 0 when the error is about the file as a whole and it has no lines. */
  line: number
  col: number
  /** Kubernetes field path, e.g. `specs[0].ingress[1].toPorts[0].ports[0].port`; '' for the file. */
  path: string
  message: string
}

/** `file:line:col: path: message`, the format `warden check` prints and editors jump to. */
export function formatPolicyError (e: PolicyError): string {
  return `${e.file}:${e.line}:${e.col}: ${e.path === '' ? '' : e.path + ': '}${e.message}`
}

/** The initial load had errors: the agent must not start with a partial policy (fail closed). */
export class PolicyLoadError extends Error {
  readonly code = 'WARDEN_ERR_POLICY_LOAD'
  readonly errors: readonly PolicyError[]
  constructor (errors: readonly PolicyError[]) {
    super(`policy load failed with ${errors.length} error(s):\n` + errors.map(formatPolicyError).join('\n'))
    this.name = 'PolicyLoadError'
    this.errors = errors
  }
}

/** A programming or environment failure of the store itself (state dir, identity space). */
export class StoreError extends Error {
  readonly code: string
  readonly context: Record<string, unknown>
  constructor (code: string, message: string, context: Record<string, unknown> = {}) {
    super(message)
    this.name = 'StoreError'
    this.code = code
    this.context = context
  }
}

/** Render a path array as `a.b[0].c`. */
export function renderPath (path: readonly (string | number)[]): string {
  let out = ''
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`
    else out += out === '' ? seg : '.' + seg
  }
  return out
}
