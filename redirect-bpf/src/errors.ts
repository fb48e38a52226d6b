/** Errors of the datapath: a `code` (WARDEN_ERR_*) and the context a user needs to act. */
export class DatapathError extends Error {
  readonly code: string
  readonly context: Record<string, unknown>
  constructor (code: string, message: string, context: Record<string, unknown> = {}) {
    super(message)
    this.name = 'DatapathError'
    this.code = code
    this.context = context
  }
}

/** A failed system operation: a command (tc, ip, bpftool) or a bpf() call. */
export class BpfError extends DatapathError {
  constructor (op: string, object: string, detail: string, errno?: number) {
    super('WARDEN_ERR_BPF', `${op} ${object}: ${detail}`, { op, object, errno })
    this.name = 'BpfError'
  }
}
