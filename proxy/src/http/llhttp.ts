/**
 * The ONLY module that touches llhttp. We use Node's bundled native binding (`_http_common`'s
 * HTTPParser, llhttp 9.3 in Node 20), chosen over undici's wasm build by bench/micro/llhttp.ts:
 * the two parse a small request head at about the same speed, but the wasm build is an older
 * llhttp that ACCEPTS obs-fold and `Host : x` (whitespace before the colon), both
 * request-smuggling vectors, which the native 9.3 rejects with lenient flags off.
 *
 * The binding's callbacks, all handled here (Node 20, src/node_http_parser.cc):
 * - kOnMessageBegin().
 * - kOnHeaders(fields[], url): the binding holds at most 32 fields; when a head has more, it
 *   hands them over in batches through this callback, URL included, and then calls
 *   kOnHeadersComplete with headers and url UNDEFINED. Once it has done so on a parser, it
 *   keeps doing it for every later message of that parser ("have flushed" is never reset).
 *   Trailers after a chunked body arrive here too (just before kOnMessageComplete), and make
 *   every later head take the batched path. This adapter collects the batches, so a handler
 *   always gets the whole head in onHeadersComplete and the trailers in onMessageComplete.
 * - kOnHeadersComplete(major, minor, headers, method, url, status, statusText, upgrade,
 *   keepAlive) -> 0, SKIP_BODY, UPGRADE or PAUSE (llhttp stops right after the head and
 *   execute() returns an Error with code HPE_PAUSED and bytesParsed = head end).
 * - kOnBody(buffer): a copy of the body bytes, chunk framing removed.
 * - kOnMessageComplete().
 * - kOnExecute and kOnStreamAlloc are called only for a parser that consumes a stream
 *   (`parser.consume(handle)`); this adapter never does, it is fed by execute()/finish().
 *   kOnTimeout is exported but never called by the binding (Node's server times requests out
 *   in JavaScript); this proxy has its own deadlines.
 * maxHeaderSize counts the request line and every header byte, trailers too (HPE_HEADER_OVERFLOW).
 *
 * Lifetime: close() deletes the native parser at once. Doing that while llhttp is running --
 * from inside any callback of execute() OR finish() (a response framed by the connection's
 * close completes inside finish(), and its owner frees the connection there) -- is a
 * use-after-free that kills the process. destroy() therefore only marks the parser while a
 * native call is on the stack, and the outermost call frees it on its way out.
 */
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const common = loadCommon()

/** Node's bundled llhttp binding: the proxy cannot parse without it, so its absence is fatal. */
function loadCommon (): { HTTPParser: NativeParserCtor, methods: string[] } {
  let c: { HTTPParser?: NativeParserCtor, methods?: string[] } | undefined
  try { c = require('_http_common') as typeof c } catch { /* reported below */ }
  if (typeof c?.HTTPParser !== 'function' || !Array.isArray(c.methods) || typeof c.HTTPParser.kOnHeaders !== 'number') {
    throw Object.assign(new Error(`HTTP proxy: Node.js ${process.version} has no usable llhttp binding (_http_common.HTTPParser); run warden on the Node.js major that package.json's engines names`),
      { code: 'WARDEN_ERR_NODE_INTERNALS' })
  }
  return c as { HTTPParser: NativeParserCtor, methods: string[] }
}

/** The binding's parser, as far as this adapter and bench/ use it. */
export interface NativeParser {
  initialize (type: number, resource: object, maxHeaderSize: number, lenient: number): void
  execute (buf: Buffer): number | ParseError
  finish (): number | ParseError | undefined
  resume (): void
  pause (): void
  close (): void
  free (): void
  remove (): void
  [key: number]: unknown
}
export interface NativeParserCtor {
  new (): NativeParser
  REQUEST: number
  RESPONSE: number
  kOnMessageBegin: number
  kOnHeaders: number
  kOnHeadersComplete: number
  kOnBody: number
  kOnMessageComplete: number
  kOnExecute: number
  kLenientNone: number
}

/** What execute() returns on a parse error or a pause (llhttp's errno name in `code`). */
export interface ParseError extends Error {
  code: string
  reason: string
  bytesParsed: number
}

const HTTPParser = common.HTTPParser
/** Method names by llhttp's method index (`GET` is 1). */
export const METHODS: readonly string[] = common.methods
/** Return from onHeadersComplete to stop after the head (llhttp HPE_PAUSED). */
export const PAUSE = 21
/** Return from a response's onHeadersComplete: the message has no body (HEAD). */
export const SKIP_BODY = 1
/** Return from a response's onHeadersComplete: switch to a tunnel (CONNECT 2xx). */
export const UPGRADE = 2

/** Shared empty list (never written: frozen). */
const NO_FIELDS = Object.freeze([]) as unknown as string[]

/** The callbacks a parser owner implements; methods, bound once per parser (no closures per request). */
export interface ParserHandler {
  onMessageBegin (): void
  /** The whole head: `headers` is the flat `[name, value, ...]` list of every field. */
  onHeadersComplete (major: number, minor: number, headers: string[], method: number, url: string,
    status: number, upgrade: boolean, keepAlive: boolean): number
  onBody (chunk: Buffer): void
  /** `trailers`: the fields after a chunked body (flat list, usually empty). */
  onMessageComplete (trailers: string[]): void
}

export class Parser {
  private readonly native: NativeParser
  private readonly onBodyFn: (chunk: Buffer) => void
  private freed = false
  /** Native calls (execute, finish) on the stack; the parser is freed only when this is 0. */
  private depth = 0
  /** Between message begin and headers-complete: kOnHeaders batches belong to the head. */
  private inHead = false
  private batched: string[] = NO_FIELDS
  private batchedUrl = ''
  private trailers: string[] = NO_FIELDS

  constructor (kind: 'request' | 'response', maxHeaderBytes: number, private readonly handler: ParserHandler) {
    const p = new HTTPParser()
    // Lenient flags off: no CL+TE, no duplicate CL, no bare LF, no obs-fold (llhttp 9 strict).
    p.initialize(kind === 'request' ? HTTPParser.REQUEST : HTTPParser.RESPONSE, {}, maxHeaderBytes, HTTPParser.kLenientNone)
    p[HTTPParser.kOnMessageBegin] = () => { this.onMessageBegin() }
    p[HTTPParser.kOnHeaders] = (fields: string[], url: string) => { this.onHeaders(fields, url) }
    p[HTTPParser.kOnHeadersComplete] = (major: number, minor: number, headers: string[] | undefined, method: number,
      url: string | undefined, status: number, _statusText: string, upgrade: boolean, keepAlive: boolean) =>
      this.onHeadersComplete(major, minor, headers, method, url, status, upgrade, keepAlive)
    this.onBodyFn = (chunk: Buffer) => { handler.onBody(chunk) }
    p[HTTPParser.kOnBody] = this.onBodyFn
    p[HTTPParser.kOnMessageComplete] = () => { this.onMessageComplete() }
    this.native = p
  }

  private onMessageBegin (): void {
    // Nothing to reset in the common case: no allocation per message.
    this.inHead = true
    if (this.batched !== NO_FIELDS) this.batched = NO_FIELDS
    this.batchedUrl = ''
    this.trailers = NO_FIELDS
    this.handler.onMessageBegin()
  }

  private onHeaders (fields: string[], url: string): void {
    if (this.inHead) {
      if (this.batched === NO_FIELDS) this.batched = []
      for (let i = 0; i < fields.length; i++) this.batched.push(fields[i])
      this.batchedUrl += url
      return
    }
    // After the head: trailers (the binding repeats the URL here; it is not part of them).
    if (this.trailers === NO_FIELDS) this.trailers = []
    for (let i = 0; i < fields.length; i++) this.trailers.push(fields[i])
  }

  private onHeadersComplete (major: number, minor: number, headers: string[] | undefined, method: number,
    url: string | undefined, status: number, upgrade: boolean, keepAlive: boolean): number {
    this.inHead = false
    let all = headers ?? NO_FIELDS
    if (this.batched.length > 0) {
      all = headers === undefined ? this.batched : this.batched.concat(headers)
      this.batched = NO_FIELDS
    }
    const u = url === undefined ? this.batchedUrl : this.batchedUrl + url
    this.batchedUrl = ''
    return this.handler.onHeadersComplete(major, minor, all, method, u, status, upgrade, keepAlive)
  }

  private onMessageComplete (): void {
    const t = this.trailers
    this.trailers = NO_FIELDS
    this.handler.onMessageComplete(t)
  }

  /**
   * Whether body bytes are delivered to `onBody` (default: yes). The binding copies every body
   * piece into a new Buffer before calling it (about 1.5 us per response here); with the callback
   * off it skips both, and the owner frames the body itself. Can be switched from onHeadersComplete.
   */
  bodyCallback (on: boolean): void {
    this.native[HTTPParser.kOnBody] = on ? this.onBodyFn : undefined
  }

  /** Bytes consumed, or the error (HPE_PAUSED included). */
  execute (buf: Buffer): number | ParseError {
    if (this.freed) return 0
    this.depth++
    try {
      return this.native.execute(buf)
    } finally {
      this.leave()
    }
  }

  /** Signal EOF: completes a message framed by connection close; error if mid-message. */
  finish (): ParseError | null {
    if (this.freed) return null
    this.depth++
    try {
      const r = this.native.finish()
      return r instanceof Error ? r : null
    } finally {
      this.leave()
    }
  }

  private leave (): void {
    // destroy() was called from inside a callback: free now that llhttp has returned.
    if (--this.depth === 0 && this.freed) this.native.close()
  }

  resume (): void { if (!this.freed) this.native.resume() }

  /** Free the native parser; safe from inside one of its own callbacks (deferred then). */
  destroy (): void {
    if (this.freed) return
    this.freed = true
    if (this.depth === 0) this.native.close()
  }
}

export function isPaused (e: ParseError): boolean { return e.code === 'HPE_PAUSED' }
