/**
 * Why a TLS connection to etcd fails, in words an operator can act on. The gRPC client reports
 * every failed connection as UNAVAILABLE with the TLS library's text folded into a message; this
 * opens one TLS connection of its own with the same CA, certificate and key, and reads the
 * failure from Node's error codes instead of from that text. It runs only after a session
 * failed to start (so at most once per backoff step), never on a working connection.
 *
 * TLS 1.3 finishes the client's side of the handshake before the server has judged the client
 * certificate: a refusal arrives as an alert on the first read. So the probe sends the HTTP/2
 * preface and waits for the server's first bytes (its SETTINGS: TLS is fine) or the alert.
 */
import { connect } from 'node:tls'
import { isIP } from 'node:net'
import type { KvstoreTlsMaterial } from './etcd-config.js'

export type TlsFailureReason =
  /** The server's certificate does not chain to the trusted CA, or does not name the endpoint. */
  | 'server-certificate-untrusted'
  /** The server refused the client certificate, or required one and got none. */
  | 'client-certificate-rejected'
  /** The endpoint answered, but not with TLS (a plain-HTTP etcd). */
  | 'not-tls'
  | 'handshake-failed'

export interface TlsFailure { reason: TlsFailureReason, detail: string }

/** Node's codes for a server certificate that does not verify (tls.connect's `authorizationError`). */
const UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'CERT_UNTRUSTED', 'CERT_REJECTED', 'CERT_SIGNATURE_FAILURE',
  'INVALID_CA', 'INVALID_PURPOSE', 'ERR_TLS_CERT_ALTNAME_INVALID', 'HOSTNAME_MISMATCH', 'CERT_REVOKED'
])

/** OpenSSL's alerts a server sends about the client's certificate (Node's `ERR_SSL_*` codes). */
const CLIENT_CERT_ALERT = /ALERT_(BAD_CERTIFICATE|CERTIFICATE_REQUIRED|UNKNOWN_CA|CERTIFICATE_UNKNOWN|UNSUPPORTED_CERTIFICATE|CERTIFICATE_EXPIRED|CERTIFICATE_REVOKED|ACCESS_DENIED)$/

/** The client preface and an empty SETTINGS frame (RFC 9113 section 3.4). */
const H2_PREFACE = Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])])

/** Classify one error of a TLS socket; null when it is not about TLS (refused, reset, timed out). */
export function classifyTlsError (err: NodeJS.ErrnoException): TlsFailure | null {
  const code = err.code ?? ''
  if (UNTRUSTED.has(code)) return { reason: 'server-certificate-untrusted', detail: `${code}: ${err.message}` }
  if (CLIENT_CERT_ALERT.test(code)) return { reason: 'client-certificate-rejected', detail: `${code}: ${err.message}` }
  if (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG' || code === 'ERR_SSL_HTTP_REQUEST') return { reason: 'not-tls', detail: `${code}: ${err.message}` }
  if (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_')) return { reason: 'handshake-failed', detail: `${code}: ${err.message}` }
  return null
}

/** Connect to `url` (https://host:port) as the gRPC client would; resolves with the TLS failure, or null. */
export async function probeTls (url: string, material: KvstoreTlsMaterial, timeoutMs: number): Promise<TlsFailure | null> {
  const m = /^https:\/\/(\[[^\]]+\]|[^:]+):(\d+)$/.exec(url)
  if (m === null) return null
  const host = m[1].replace(/^\[|\]$/g, '')
  return await new Promise((resolve) => {
    // `done` runs only from the timer or a socket event, after both consts below are set.
    const done = (r: TlsFailure | null): void => { clearTimeout(timer); sock.destroy(); resolve(r) }
    const timer = setTimeout(() => done(null), timeoutMs)
    const sock = connect({
      host,
      port: Number(m[2]),
      // SNI names hosts, not addresses (RFC 6066); the certificate check covers both.
      servername: isIP(host) === 0 ? host : undefined,
      ca: material.rootCertificate,
      cert: material.certChain,
      key: material.privateKey,
      ALPNProtocols: ['h2']
    })
    sock.once('secureConnect', () => sock.write(H2_PREFACE))
    sock.once('data', () => done(null))
    sock.once('error', (err: NodeJS.ErrnoException) => done(classifyTlsError(err)))
    sock.once('close', () => done(null))
  })
}
