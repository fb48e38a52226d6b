/**
 * Precompiled full-match string matchers for HTTP fields and DNS names. Cilium matches
 * `method`/`path`/`host` with RE2 FullMatch (notes §4.1), so a pattern is compiled as
 * `^(?:pattern)$`. RE2 costs microseconds per call (shared/notes/datapath.md), so patterns
 * that are literals compare with `===`, and `literal.*` is a prefix compare.
 */
import RE2 from 're2'
import type { StringMatcher } from './types.js'

const META = /[\\^$.|?*+()[\]{}]/

/** Compile; throws the RE2 SyntaxError for an invalid pattern. */
export function compileFullMatch (source: string): StringMatcher {
  if (!META.test(source)) return { source, test: (v: string) => v === source }
  if (source.endsWith('.*') && !META.test(source.slice(0, -2))) {
    // `.` does not match `\n` in RE2; keep that exact.
    const prefix = source.slice(0, -2)
    return { source, test: (v: string) => v.startsWith(prefix) && v.indexOf('\n', prefix.length) === -1 }
  }
  const re = new RE2('^(?:' + source + ')$', 'u')
  return { source, test: (v: string) => re.test(v) }
}

/** `api.GitHub.com` -> `api.github.com.` (Cilium's FQDN normalisation, notes §6.4). */
export function normalizeFqdn (name: string): string {
  const l = name.toLowerCase()
  return l.endsWith('.') ? l : l + '.'
}

export interface NameMatcher { pattern: string, key: string, test (fqdn: string): boolean }

export const MATCH_NAME_RE = /^([-a-zA-Z0-9_]+[.]?)+$/
export const MATCH_PATTERN_RE = /^([-a-zA-Z0-9_*]+[.]?)+$/

export function compileMatchName (name: string): NameMatcher {
  const n = normalizeFqdn(name)
  return { pattern: name, key: `matchName:${n}`, test: (f: string) => f === n }
}

/**
 * Cilium's matchPattern (pkg/fqdn/matchpattern): only `*` = everything; a leading `**.` =
 * one or more labels; any other run of `*` = `[-a-zA-Z0-9_]*` inside one label. Anchored.
 */
export function compileMatchPattern (pattern: string): NameMatcher {
  const n = normalizeFqdn(pattern)
  const key = `matchPattern:${n}`
  if (/^\*+\.$/.test(n)) return { pattern, key, test: () => true }
  let rest = n
  let re = ''
  const lead = /^\*\*+\./.exec(rest)
  if (lead !== null) {
    re += '(?:[-a-zA-Z0-9_]+\\.)+'
    rest = rest.slice(lead[0].length)
  }
  re += rest.replace(/\*+/g, '*').split('*').map((s) => s.replace(/\./g, '\\.')).join('[-a-zA-Z0-9_]*')
  const compiled = new RE2('^' + re + '$', 'u')
  return { pattern, key, test: (f: string) => compiled.test(f) }
}
