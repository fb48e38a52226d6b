/**
 * The ONLY module that touches llhttp. We use Node's bundled native binding (`_http_common`'s
 * HTTPParser, llhttp 9.3 in Node 20), chosen over undici's wasm build by bench/micro/llhttp.ts:
 * the two parse a small request head at about the same speed on this machine (2.1-2.9 us
 * either way, noisy), but the wasm build is an older llhttp that ACCEPTS obs-fold and
 * `Host : x` (whitespace before the colon), both request-smuggling vectors, which the native
 * 9.3 rejects with lenient flags off. Strictness decided it.
 *
 * Contract of the binding we rely on (Node 20, lib/_http_common.js + src/node_http_parser.cc):
 * - kOnHeadersComplete(major, minor, headers[], methodIndex, url, status, statusText, upgrade,
 *   keepAlive) -> return 0, 1 (no body: HEAD responses), 2 (upgrade) or PAUSED (21): llhttp then
 *   stops right after the head and execute() returns an Error with code HPE_PAUSED and
 *   bytesParsed = head end. We use that to hold pipelined requests.
 * - kOnHeaders(headers[], url) flushes every 32 header fields before headers-complete, and
 *   carries trailers after a chunked body.
 * - kOnBody(buffer) gets a copy of the body bytes (chunk framing already removed).
 * - maxHeaderSize counts the request line and every header byte (HPE_HEADER_OVERFLOW).
 *
 * Lifetime: close() deletes the native parser at once. Doing that while llhttp is running --
 * from inside any callback of execute() OR finish() (a response framed by the connection's
 * close completes inside finish(), and its owner frees the connection there) -- is a
 * use-after-free that kills the process. destroy() therefore only marks the parser while a
 * native call is on the stack, and the outermost call frees it on its way out.
 */
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const common = require('_http_common') as { HTTPParser: NativeParserCtor, methods: string[] }

interface NativeParser {
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
interface NativeParserCtor {
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

/** The callbacks a parser owner implements; methods, bound once per parser (no closures per request). */
export interface ParserHandler {
  onMessageBegin (): void
  /** Header fields flushed early (more than 32) or trailers after a chunked body. */
  onHeaders (headers: string[]): void
  onHeadersComplete (major: number, minor: number, headers: string[], method: number, url: string,
    status: number, upgrade: boolean, keepAlive: boolean): number
  onBody (chunk: Buffer): void
  onMessageComplete (): void
}

export class Parser {
  private readonly native: NativeParser
  private readonly onBodyFn: (chunk: Buffer) => void
  private freed = false
  /** Native calls (execute, finish) on the stack; the parser is freed only when this is 0. */
  private depth = 0

  constructor (kind: 'request' | 'response', maxHeaderBytes: number, handler: ParserHandler) {
    const p = new HTTPParser()
    // Lenient flags off: no CL+TE, no duplicate CL, no bare LF, no obs-fold (llhttp 9 strict).
    p.initialize(kind === 'request' ? HTTPParser.REQUEST : HTTPParser.RESPONSE, {}, maxHeaderBytes, HTTPParser.kLenientNone)
    p[HTTPParser.kOnMessageBegin] = () => { handler.onMessageBegin() }
    p[HTTPParser.kOnHeaders] = (headers: string[]) => { handler.onHeaders(headers) }
    p[HTTPParser.kOnHeadersComplete] = (major: number, minor: number, headers: string[] | undefined, method: number,
      url: string | undefined, status: number, _statusText: string, upgrade: boolean, keepAlive: boolean) =>
      handler.onHeadersComplete(major, minor, headers ?? [], method, url ?? '', status, upgrade, keepAlive)
    this.onBodyFn = (chunk: Buffer) => { handler.onBody(chunk) }
    p[HTTPParser.kOnBody] = this.onBodyFn
    p[HTTPParser.kOnMessageComplete] = () => { handler.onMessageComplete() }
    this.native = p
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
