/**
 * Which llhttp to wrap in proxy/src/http/llhttp.ts: Node's bundled native binding
 * (`_http_common`'s HTTPParser, llhttp 9.3 in Node 20) or undici's wasm build.
 * Measures parsing one small keep-alive request head (what the proxy does per request) and
 * prints ns per request. Run: `node --experimental-strip-types` is not in Node 20, so build
 * first (`npx tsc -p tsconfig.build.json`) and run `node dist/bench/micro/llhttp.js`.
 *
 * Strictness matters as much as speed and is probed here too: the wasm build (older llhttp)
 * accepts obs-fold and `Host : x` (whitespace before the colon), the native one rejects both.
 */
import { createRequire } from 'node:module'
import type { NativeParserCtor } from '../../proxy/src/http/llhttp.js'

const require = createRequire(import.meta.url)
const { HTTPParser } = require('_http_common') as { HTTPParser: NativeParserCtor }

const REQ = Buffer.from('GET /api/v1/invoices/42?full=1 HTTP/1.1\r\nHost: billing:8080\r\nUser-Agent: autocannon\r\nAccept: */*\r\nX-Request-Id: 0123456789\r\n\r\n', 'latin1')
const N = Number(process.env.N ?? 1_000_000)

function benchNative (): number {
  const p = new HTTPParser()
  p.initialize(HTTPParser.REQUEST, {}, 16384, 0)
  let seen = 0
  p[HTTPParser.kOnHeadersComplete] = (_ma: number, _mi: number, headers: string[], _m: number, url: string) => { seen += headers.length + url.length; return 0 }
  p[HTTPParser.kOnBody] = () => {}
  p[HTTPParser.kOnMessageComplete] = () => {}
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < N; i++) p.execute(REQ)
  const dt = Number(process.hrtime.bigint() - t0)
  if (seen === 0) throw new Error('native parser saw nothing')
  return dt / N
}

/** The exports of undici's llhttp wasm build this bench calls. */
interface LlhttpWasm {
  memory: WebAssembly.Memory
  llhttp_alloc (type: number): number
  malloc (size: number): number
  llhttp_execute (parser: number, data: number, len: number): number
}

function benchWasm (): number {
  const bin = require('undici/lib/llhttp/llhttp-wasm.js') as Buffer
  let seen = 0
  let cur: Buffer = REQ
  let base = 0
  // Same work as the native callback: materialise url and header strings.
  const str = (at: number, len: number): string => cur.toString('latin1', at - base, at - base + len)
  const inst = new WebAssembly.Instance(new WebAssembly.Module(new Uint8Array(bin)), {
    env: {
      wasm_on_url: (_p: number, at: number, len: number) => { seen += str(at, len).length; return 0 },
      wasm_on_status: () => 0,
      wasm_on_message_begin: () => 0,
      wasm_on_header_field: (_p: number, at: number, len: number) => { seen += str(at, len).length; return 0 },
      wasm_on_header_value: (_p: number, at: number, len: number) => { seen += str(at, len).length; return 0 },
      wasm_on_headers_complete: () => 0,
      wasm_on_body: () => 0,
      wasm_on_message_complete: () => 0
    }
  })
  const e = inst.exports as unknown as LlhttpWasm
  const ptr = e.llhttp_alloc(1)
  const buf = e.malloc(65536)
  base = buf
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < N; i++) {
    cur = REQ
    new Uint8Array(e.memory.buffer, buf, REQ.length).set(REQ)
    e.llhttp_execute(ptr, buf, REQ.length)
  }
  const dt = Number(process.hrtime.bigint() - t0)
  if (seen === 0) throw new Error('wasm parser saw nothing')
  return dt / N
}

// Warm up both, then alternate measured runs.
benchNative(); benchWasm()
const rows: Array<[string, number]> = []
for (let r = 0; r < 3; r++) { rows.push(['native _http_common', benchNative()]); rows.push(['undici wasm', benchWasm()]) }
for (const [name, ns] of rows) console.log(`${name.padEnd(22)} ${ns.toFixed(0)} ns/request head`)
