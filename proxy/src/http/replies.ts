/**
 * Local replies, prebuilt as Buffers (none is built per request). Only the `date` header
 * changes; the buffers are rebuilt at most once per second, when first used in a new second.
 *
 * The 403 is Cilium's (its Envoy's HTTP deny reply): `HTTP/1.1 403 Forbidden`,
 * `content-length: 15`, `content-type: text/plain`, `date`, body `Access denied\r\n` (the
 * configured message plus CRLF). We leave out Envoy's `server: envoy`.
 */

export type ReplyKind = 403 | 400 | 408 | 413 | 417 | 431 | 501 | 502 | 503 | 504 | 505
const REASONS: Record<ReplyKind, string> = {
  400: 'Bad Request',
  403: 'Forbidden',
  408: 'Request Timeout',
  413: 'Payload Too Large',
  417: 'Expectation Failed',
  431: 'Request Header Fields Too Large',
  501: 'Not Implemented',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
  505: 'HTTP Version Not Supported'
}
const BODIES: Record<Exclude<ReplyKind, 403>, string> = {
  400: 'Bad Request\r\n',
  408: 'Request Timeout\r\n',
  413: 'Payload Too Large\r\n',
  417: 'Expectation Failed\r\n',
  431: 'Request Header Fields Too Large\r\n',
  501: 'Not Implemented\r\n',
  502: 'upstream reset before response headers\r\n',
  503: 'upstream connect error\r\n',
  504: 'upstream request timeout\r\n',
  505: 'HTTP Version Not Supported\r\n'
}

export class Replies {
  private second = -1
  private keepAlive = new Map<ReplyKind, Buffer>()
  private close = new Map<ReplyKind, Buffer>()
  private readonly denyBody: string

  constructor (denyMessage: string) {
    this.denyBody = denyMessage + '\r\n'
  }

  /** The reply bytes; `close` adds `connection: close` (the caller then ends the socket). */
  get (kind: ReplyKind, close: boolean): Buffer {
    const now = Date.now()
    const sec = Math.floor(now / 1000)
    if (sec !== this.second) {
      this.second = sec
      this.keepAlive = new Map()
      this.close = new Map()
    }
    const cache = close ? this.close : this.keepAlive
    let b = cache.get(kind)
    if (b === undefined) {
      b = this.build(kind, close, new Date(sec * 1000).toUTCString())
      cache.set(kind, b)
    }
    return b
  }

  private build (kind: ReplyKind, close: boolean, date: string): Buffer {
    const body = kind === 403 ? this.denyBody : BODIES[kind]
    const len = Buffer.byteLength(body)
    return Buffer.from(`HTTP/1.1 ${kind} ${REASONS[kind]}\r\ncontent-length: ${len}\r\ncontent-type: text/plain\r\ndate: ${date}\r\n` +
      (close ? 'connection: close\r\n' : '') + '\r\n' + body, 'utf8')
  }
}
