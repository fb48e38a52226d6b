/**
 * The DNS wire format, as far as the proxy has to trust it: the header, the question, and a
 * strict walk over the resource records of an answer (RFC 1035 §4.1).
 *
 * Why not dns-packet's decoder here: it ignores RDLENGTH for A and CNAME records (it always
 * advances 6 bytes for an A), reads past the end of a short buffer without failing, and joins
 * labels with '.' after decoding them as UTF-8, so the wire names `api.github` + `com` and
 * `api` + `github` + `com` both come out as "api.github.com". Anything that decides policy or
 * what the kernel learns must see the name the resolver sees, so names are rendered the way
 * miekg/dns (Cilium's library) renders them: ASCII lower-cased, special bytes escaped
 * (`\.`, `\DDD`), trailing dot. Such escaped names never match a Cilium matchName/matchPattern.
 *
 * Every function here is total: malformed input gives an error code, never an exception.
 */

export const HEADER_LEN = 12
/** RFC 1035 §2.3.4: 255 octets for a whole name on the wire. */
export const MAX_NAME_WIRE = 255
/** RFC 1035 / RFC 7766: a TCP message has a 16-bit length; UDP answers beyond EDNS sizes are rare. */
export const MAX_MESSAGE = 65535

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const
export const OPCODE_QUERY = 0
export const TYPE_A = 1
export const TYPE_CNAME = 5
export const TYPE_ANY = 255
export const CLASS_IN = 1

/** Errors of the parser (negative so a parse result can be an offset or an error). */
export const WIRE_ERR = {
  SHORT: -1,
  BAD_LABEL: -2,
  BAD_POINTER: -3,
  NAME_TOO_LONG: -4,
  COUNTS: -5,
  RDATA: -6,
  TRAILING: -7
} as const

export function readId (buf: Buffer): number { return buf.readUInt16BE(0) }
export function isResponse (buf: Buffer): boolean { return (buf[2] & 0x80) !== 0 }
export function opcodeOf (buf: Buffer): number { return (buf[2] >> 3) & 0x0f }
export function rcodeOf (buf: Buffer): number { return buf[3] & 0x0f }
export function qdcount (buf: Buffer): number { return buf.readUInt16BE(4) }
export function isTruncated (buf: Buffer): boolean { return (buf[2] & 0x02) !== 0 }

/** Bytes that miekg/dns escapes with a backslash inside a label. */
function isSpecial (c: number): boolean {
  return c === 0x2e /* . */ || c === 0x20 || c === 0x27 /* ' */ || c === 0x40 /* @ */ ||
    c === 0x3b /* ; */ || c === 0x28 || c === 0x29 || c === 0x22 /* " */ || c === 0x5c /* \ */
}

/** One label, lower-cased and escaped. */
function renderLabel (buf: Buffer, start: number, end: number): string {
  let plain = true
  for (let i = start; i < end; i++) {
    const c = buf[i]
    if (c < 0x21 || c > 0x7e || isSpecial(c)) { plain = false; break }
  }
  if (plain) return buf.toString('latin1', start, end).toLowerCase()
  let s = ''
  for (let i = start; i < end; i++) {
    const c = buf[i]
    if (c < 0x21 || c > 0x7e) s += '\\' + String(c).padStart(3, '0')
    else if (isSpecial(c)) s += '\\' + String.fromCharCode(c)
    else s += String.fromCharCode(c >= 0x41 && c <= 0x5a ? c + 32 : c)
  }
  return s
}

/** Result holder for readName, reused by callers to avoid an allocation per name. */
export interface NameCursor { name: string, end: number }

/**
 * Plain names (every byte 0x21-0x7e and not special) are rendered here, lower-cased, with
 * dots, then turned into a string with one latin1 slice: a flat string, cheap to hash and
 * compare, where concatenating labels made a rope that every Map lookup had to flatten first.
 * A plain rendering is one byte per wire byte, so MAX_NAME_WIRE is enough.
 */
const scratch = Buffer.allocUnsafe(MAX_NAME_WIRE)

/**
 * Rendered plain names, by a hash of their bytes (direct-mapped, 1024 slots). Most queries ask
 * for a name asked before: the string already made for it is returned after a byte compare,
 * instead of a new latin1 slice (a call into C++) whose hash every Map lookup of the cache then
 * computes again (V8 keeps the hash in the string). A slot holds the last name that hashed
 * there; a miss only costs the slice it saved. The compare is over every byte, so a hit is the
 * very string a slice would have made (bench/micro/dns-query.ts).
 */
const NAME_SLOTS = 1024
const names: string[] = new Array<string>(NAME_SLOTS).fill('')

/** The string of `scratch[0, n)` (latin1), `h` the FNV-1a hash readName computed over them. */
function internScratch (n: number, h: number): string {
  const slot = (h >>> 0) & (NAME_SLOTS - 1)
  const s = names[slot]
  if (s.length === n) {
    let i = 0
    while (i < n && s.charCodeAt(i) === scratch[i]) i++
    if (i === n) return s
  }
  const fresh = scratch.toString('latin1', 0, n)
  names[slot] = fresh
  return fresh
}

/**
 * Read a (possibly compressed) name at `offset`. On success sets `cur.name` (canonical form,
 * trailing dot; the root is ".") and `cur.end` (offset after the name in the original stream)
 * and returns 0; otherwise a WIRE_ERR code. Pointers must point strictly backwards to data
 * before the label that holds them, so a chain always terminates (no compression loops).
 *
 * `qName`, when given, is the rendered name at offset 12 and `qWire` its wire length: a pointer
 * there (most answer records' owners) reuses it instead of rendering it again. Only for a
 * response whose question the caller has checked equal to the query's (sameQuestion): then the
 * bytes at 12 are the query's question name up to ASCII case, which rendering folds.
 */
export function readName (buf: Buffer, offset: number, cur: NameCursor, allowPointers: boolean,
  qName?: string, qWire = 0): number {
  let n = 0 // bytes rendered into `scratch` while every label is plain
  let h = 0x811c9dc5 // FNV-1a over those bytes, for internScratch
  let plain = true
  let wire = 0
  let pos = offset
  let end = -1
  let limit = offset // a pointer must target an offset below this
  for (;;) {
    if (pos >= buf.length) return WIRE_ERR.SHORT
    const len = buf[pos]
    if (len === 0) {
      wire += 1
      if (wire > MAX_NAME_WIRE) return WIRE_ERR.NAME_TOO_LONG
      if (end < 0) end = pos + 1
      break
    }
    const kind = len & 0xc0
    if (kind === 0) {
      if (pos + 1 + len > buf.length) return WIRE_ERR.SHORT
      wire += len + 1
      if (wire > MAX_NAME_WIRE) return WIRE_ERR.NAME_TOO_LONG
      for (let i = pos + 1; plain && i <= pos + len; i++) {
        const c = buf[i]
        if (c < 0x21 || c > 0x7e || isSpecial(c)) plain = false
        else { const l = c >= 0x41 && c <= 0x5a ? c + 32 : c; scratch[n++] = l; h = Math.imul(h ^ l, 0x01000193) }
      }
      if (plain) { scratch[n++] = 0x2e; h = Math.imul(h ^ 0x2e, 0x01000193) }
      pos += len + 1
    } else if (kind === 0xc0) {
      if (!allowPointers) return WIRE_ERR.BAD_POINTER
      if (pos + 1 >= buf.length) return WIRE_ERR.SHORT
      const target = ((len & 0x3f) << 8) | buf[pos + 1]
      if (target >= limit || target < HEADER_LEN) return WIRE_ERR.BAD_POINTER
      if (end < 0) end = pos + 2
      if (target === HEADER_LEN && qName !== undefined && plain) {
        wire += qWire
        if (wire > MAX_NAME_WIRE) return WIRE_ERR.NAME_TOO_LONG
        cur.name = n === 0 ? qName : scratch.toString('latin1', 0, n) + (qName === '.' ? '' : qName)
        cur.end = end
        return 0
      }
      limit = target
      pos = target
    } else {
      return WIRE_ERR.BAD_LABEL // 0x40 / 0x80: extended label types (RFC 6891 deprecated them)
    }
  }
  // The whole name is well-formed; a name with an escaped byte is rendered again, label by label.
  cur.name = wire === 1 ? '.' : plain ? internScratch(n, h) : renderEscaped(buf, offset)
  cur.end = end
  return 0
}

/** The slow rendering of a name readName has already validated (so: no error checks). */
function renderEscaped (buf: Buffer, offset: number): string {
  let name = ''
  let pos = offset
  for (let len = buf[pos]; len !== 0; len = buf[pos]) {
    if ((len & 0xc0) === 0xc0) { pos = ((len & 0x3f) << 8) | buf[pos + 1]; continue }
    name += renderLabel(buf, pos + 1, pos + 1 + len) + '.'
    pos += len + 1
  }
  return name
}

/** The single question of a query, as the proxy decides on it. */
export interface Question {
  /** Canonical name: lower-case, escaped, trailing dot. */
  name: string
  type: number
  cls: number
  /** Offset right after the question; [12, end) is the question on the wire. */
  end: number
}

/**
 * Parse the header and the one question of a query. Returns a WIRE_ERR code when the bytes are
 * not a well-formed question (the caller answers FORMERR when at least the header is there).
 * No compression is allowed in a query's question: nothing precedes it to point to.
 */
export function parseQuestion (buf: Buffer, cur: NameCursor): Question | number {
  if (buf.length < HEADER_LEN) return WIRE_ERR.SHORT
  if (qdcount(buf) !== 1) return WIRE_ERR.COUNTS
  const err = readName(buf, HEADER_LEN, cur, false)
  if (err !== 0) return err
  if (cur.end + 4 > buf.length) return WIRE_ERR.SHORT
  return { name: cur.name, type: buf.readUInt16BE(cur.end), cls: buf.readUInt16BE(cur.end + 2), end: cur.end + 4 }
}

/**
 * Does the question of `resp` equal the one in `query[12, qEnd)`? Names compare ASCII
 * case-insensitively (servers may echo 0x20-randomised case); type and class exactly. A
 * response whose question uses a pointer does not match (nothing legitimate does that).
 */
export function sameQuestion (query: Buffer, qEnd: number, resp: Buffer): boolean {
  if (resp.length < qEnd || qdcount(resp) !== 1) return false
  for (let i = HEADER_LEN; i < qEnd; i++) {
    let a = query[i]
    let b = resp[i]
    if (a === b) continue
    if (a >= 0x41 && a <= 0x5a) a += 32
    if (b >= 0x41 && b <= 0x5a) b += 32
    if (a !== b) return false
  }
  return true
}

/** One record of the answer section that learning cares about. */
export interface AnswerRecord {
  owner: string
  type: number
  ttl: number
  /** Dotted quad for A, canonical target for CNAME, '' otherwise. */
  data: string
}

/**
 * Dotted quads made before, by address (direct-mapped, 1024 slots): answers mostly repeat the
 * addresses of earlier ones, and the cached string (hash included) is what the FQDN cache's Map
 * lookups and the log line then use, instead of four number-to-text conversions and a join.
 */
const QUAD_SLOTS = 1024
const quadKeys = new Int32Array(QUAD_SLOTS)
const quadStrs: string[] = new Array<string>(QUAD_SLOTS).fill('')

function dottedQuad (buf: Buffer, at: number): string {
  const a = buf[at]; const b = buf[at + 1]; const c = buf[at + 2]; const d = buf[at + 3]
  const key = (a << 24) | (b << 16) | (c << 8) | d
  const slot = (Math.imul(key, 0x9e3779b1) >>> 22) & (QUAD_SLOTS - 1)
  const s = quadStrs[slot]
  if (quadKeys[slot] === key && s !== '') return s
  const fresh = `${a}.${b}.${c}.${d}`
  quadKeys[slot] = key
  quadStrs[slot] = fresh
  return fresh
}

/**
 * Walk a whole response after its question (offset `qEnd`): every record of every section
 * must be framed by its RDLENGTH inside the message, A records must have 4 bytes, CNAME data
 * must be exactly one name, and nothing may follow the last record. Returns the A/CNAME
 * records of the answer section (class IN) or a WIRE_ERR code. `qname`: the query's rendered
 * question name, only once sameQuestion(query, qEnd, buf) holds (see readName).
 */
export function walkAnswers (buf: Buffer, qEnd: number, cur: NameCursor, qname?: string): AnswerRecord[] | number {
  const qWire = qEnd - 4 - HEADER_LEN
  const an = buf.readUInt16BE(6)
  const total = an + buf.readUInt16BE(8) + buf.readUInt16BE(10)
  const out: AnswerRecord[] = []
  let pos = qEnd
  for (let i = 0; i < total; i++) {
    const err = readName(buf, pos, cur, true, qname, qWire)
    if (err !== 0) return err
    pos = cur.end
    if (pos + 10 > buf.length) return WIRE_ERR.SHORT
    const owner = cur.name
    const type = buf.readUInt16BE(pos)
    const cls = buf.readUInt16BE(pos + 2)
    const ttl = buf.readUInt32BE(pos + 4)
    const rdlen = buf.readUInt16BE(pos + 8)
    const rd = pos + 10
    if (rd + rdlen > buf.length) return WIRE_ERR.SHORT
    if (cls === CLASS_IN && type === TYPE_A) {
      if (rdlen !== 4) return WIRE_ERR.RDATA
      if (i < an) out.push({ owner, type, ttl, data: dottedQuad(buf, rd) })
    } else if (cls === CLASS_IN && type === TYPE_CNAME) {
      const e = readName(buf, rd, cur, true, qname, qWire)
      if (e !== 0) return e
      if (cur.end !== rd + rdlen) return WIRE_ERR.RDATA
      if (i < an) out.push({ owner, type, ttl, data: cur.name })
    }
    pos = rd + rdlen
  }
  if (pos !== buf.length) return WIRE_ERR.TRAILING
  return out
}

/**
 * A reply made from the query itself: header and question copied, QR set, RD kept, the given
 * RCODE, no records. With `qEnd` 0 (question unreadable) only the header is sent, qdcount 0.
 */
export function errorReply (query: Buffer, qEnd: number, rcode: number): Buffer {
  const len = qEnd > 0 ? qEnd : HEADER_LEN
  const out = Buffer.allocUnsafe(len)
  query.copy(out, 0, 0, len)
  out[2] = 0x80 | (query[2] & 0x79) // QR, opcode, RD; AA and TC cleared
  out[3] = rcode & 0x0f // RA, Z, AD, CD cleared
  out.writeUInt16BE(qEnd > 0 ? 1 : 0, 4)
  out.writeUInt32BE(0, 6)
  out.writeUInt16BE(0, 10)
  return out
}
