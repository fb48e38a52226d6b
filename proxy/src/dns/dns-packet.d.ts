/**
 * Types for the parts of dns-packet 5.x that warden uses (the package ships none, and
 * @types/dns-packet is not installed). Decoded shapes are loose on purpose: nothing that
 * decides policy reads them (see wire.ts).
 */
declare module 'dns-packet' {
  export interface Question { type: string, name: string, class?: string }
  export interface Answer { type: string, name: string, ttl?: number, class?: string, data?: unknown, [k: string]: unknown }
  export interface Packet {
    type?: 'query' | 'response'
    id?: number
    flags?: number
    rcode?: string
    questions?: Question[]
    answers?: Answer[]
    authorities?: Answer[]
    additionals?: Answer[]
  }
  export function encode (p: Packet): Buffer
  export function decode (b: Buffer): Packet & Required<Pick<Packet, 'questions' | 'answers' | 'authorities' | 'additionals'>> & { rcode: string, flag_tc: boolean }
  export function streamEncode (p: Packet): Buffer
  export function streamDecode (b: Buffer): Packet
  export const RECURSION_DESIRED: number
  export const AUTHORITATIVE_ANSWER: number
  export const TRUNCATED_RESPONSE: number
  const dnsPacket: {
    encode: typeof encode
    decode: typeof decode
    streamEncode: typeof streamEncode
    streamDecode: typeof streamDecode
    RECURSION_DESIRED: number
    AUTHORITATIVE_ANSWER: number
    TRUNCATED_RESPONSE: number
  }
  export default dnsPacket
}

declare module 'dns-packet/types.js' {
  const types: { toString (type: number): string, toType (name: string): number }
  export default types
}

declare module 'dns-packet/rcodes.js' {
  const rcodes: { toString (rcode: number): string, toRcode (name: string): number }
  export default rcodes
}
