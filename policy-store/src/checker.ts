/**
 * Typed accessors for the policy validators (validate.ts and its parts): each checks a value's
 * shape and reports what is wrong, with its path, to the file's reporter.
 */
import { ERR } from './errors.js'
import type { PathSeg, Reporter } from './source-file.js'

export type Obj = Record<string, unknown>

export const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/

/** Small typed accessors that report as they check. */
export class Checker {
  constructor (readonly r: Reporter) {}

  typeName (v: unknown): string {
    if (v === null) return 'null'
    if (Array.isArray(v)) return 'list'
    if (typeof v === 'object') return 'map'
    return typeof v
  }

  obj (v: unknown, path: PathSeg[], allowed: readonly string[], unsupported: readonly string[] = []): Obj | null {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) {
      this.r.add(ERR.TYPE, path, `must be a map, got ${this.typeName(v)}`)
      return null
    }
    const o = v as Obj
    for (const k of Object.keys(o)) {
      if (unsupported.includes(k)) this.r.add(ERR.UNSUPPORTED, [...path, k], `\`${k}\` is not supported by warden yet`, true)
      else if (!allowed.includes(k)) this.r.add(ERR.UNKNOWN_FIELD, [...path, k], `unknown field "${k}" (expected one of: ${allowed.join(', ')})`, true)
    }
    return o
  }

  list (v: unknown, path: PathSeg[]): unknown[] | null {
    if (!Array.isArray(v)) {
      this.r.add(ERR.TYPE, path, `must be a list, got ${this.typeName(v)}`)
      return null
    }
    return v as unknown[]
  }

  str (v: unknown, path: PathSeg[]): string | null {
    if (typeof v !== 'string') {
      this.r.add(ERR.TYPE, path, `must be a string, got ${this.typeName(v)}${typeof v === 'number' || typeof v === 'boolean' ? ' (quote it)' : ''}`)
      return null
    }
    return v
  }

  bool (v: unknown, path: PathSeg[]): boolean | null {
    if (typeof v !== 'boolean') {
      this.r.add(ERR.TYPE, path, `must be true or false, got ${this.typeName(v)}`)
      return null
    }
    return v
  }
}
