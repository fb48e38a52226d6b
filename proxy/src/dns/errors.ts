/** Typed errors of the DNS proxy. Runtime faults in traffic are counted and logged, not thrown. */
export type DnsProxyErrorCode =
  | 'WARDEN_ERR_DNS_OPTIONS' // an option is out of range
  | 'WARDEN_ERR_DNS_STATE' // the persisted cache could not be read or written

export class DnsProxyError extends Error {
  readonly code: DnsProxyErrorCode
  readonly context: Readonly<Record<string, unknown>>

  constructor (code: DnsProxyErrorCode, message: string, context: Record<string, unknown> = {}, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause })
    this.name = 'DnsProxyError'
    this.code = code
    this.context = context
  }
}
