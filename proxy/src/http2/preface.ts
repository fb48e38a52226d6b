/**
 * The HTTP/2 connection preface (RFC 9113 §3.4): a client with prior knowledge, as every gRPC
 * client on a cleartext port, opens with these 24 bytes. No HTTP/1 request starts with them
 * (`PRI` is no method a server implements, and `HTTP/2.0` no HTTP/1 version), so the first
 * bytes of a connection decide its protocol before any parser sees them.
 */
export const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1')

export const enum H2_PREFACE_MATCH {
  /** The bytes are no HTTP/2 preface: HTTP/1. */
  NO,
  /** The whole preface is there: HTTP/2. */
  H2,
  /** Every byte so far is the preface's, and it is not complete: wait for more. */
  MORE
}

/** Where `data` (a connection's first bytes) stands against the preface. */
export function matchPreface (data: Buffer): H2_PREFACE_MATCH {
  // Most connections are HTTP/1 and differ at the first or second byte (`POST`, `PUT`).
  const n = data.length < H2_PREFACE.length ? data.length : H2_PREFACE.length
  for (let i = 0; i < n; i++) if (data[i] !== H2_PREFACE[i]) return H2_PREFACE_MATCH.NO
  return n === H2_PREFACE.length ? H2_PREFACE_MATCH.H2 : H2_PREFACE_MATCH.MORE
}
