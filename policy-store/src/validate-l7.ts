/**
 * The L7 parts of a PortRule: `rules.http` (regexes compiled, headers and header actions) and
 * `rules.dns`, and the name matchers `rules.dns` shares with `toFQDNs`.
 */
import { ERR } from './errors.js'
import type { Checker } from './checker.js'
import {
  compileFullMatch, compileMatchName, compileMatchPattern, MATCH_NAME_RE, MATCH_PATTERN_RE, type NameMatcher
} from './matchers.js'
import type { DnsRuleItem } from './model.js'
import type { PathSeg } from './source-file.js'
import type { CompiledHttpRule, HeaderAction, HeaderRequirement, MismatchAction, RuleRef, StringMatcher } from './types.js'

/** `headerMatches[].mismatch` values (pkg/policy/api/http.go). */
const MISMATCH_ACTIONS = ['LOG', 'ADD', 'DELETE', 'REPLACE'] as const
/** RFC 9110 token and field-value characters (no CR, LF or NUL: a value cannot split the head). */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/
/** Fields the proxy writes or strips itself (framing, hop-by-hop, routing): no action may edit them. */
const PROXY_FIELDS = ['host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'proxy-connection', 'upgrade', 'te', 'trailer', 'expect']

function regexField (v: unknown, path: PathSeg[], c: Checker): StringMatcher | null {
  const s = c.str(v, path)
  if (s === null) return null
  try {
    return compileFullMatch(s)
  } catch (err) {
    c.r.add(ERR.REGEX, path, `invalid RE2 regular expression "${s}": ${(err as Error).message}`)
    return null
  }
}

export function validateHttp (v: unknown, path: PathSeg[], ref: RuleRef, c: Checker): CompiledHttpRule[] | null {
  const list = c.list(v, path)
  if (list === null) return null
  const out: CompiledHttpRule[] = []
  list.forEach((h, i) => {
    const p = [...path, i]
    const o = c.obj(h, p, ['method', 'path', 'host', 'headers', 'headerMatches'])
    if (o === null) return
    const headers: HeaderRequirement[] = []
    const actions: HeaderAction[] = []
    if (o.headers !== undefined) {
      c.list(o.headers, [...p, 'headers'])?.forEach((hv, j) => {
        const s = c.str(hv, [...p, 'headers', j])
        if (s === null) return
        // Cilium: split at the first space; a trailing ':' on the name is dropped.
        const sp = s.indexOf(' ')
        const name = (sp === -1 ? s : s.slice(0, sp)).replace(/:$/, '').toLowerCase()
        if (name === '') { c.r.add(ERR.VALUE, [...p, 'headers', j], 'header name is empty'); return }
        headers.push({ name, value: sp === -1 ? null : s.slice(sp + 1) })
      })
    }
    if (o.headerMatches !== undefined) {
      c.list(o.headerMatches, [...p, 'headerMatches'])?.forEach((hm, j) => {
        const hp = [...p, 'headerMatches', j]
        // `secret` needs a Kubernetes secret source, which warden does not have.
        const ho = c.obj(hm, hp, ['name', 'value', 'mismatch'], ['secret'])
        if (ho === null) return
        if (ho.name === undefined) { c.r.add(ERR.REQUIRED, hp, 'name is required'); return }
        const name = c.str(ho.name, [...hp, 'name'])
        const value = ho.value === undefined ? null : c.str(ho.value, [...hp, 'value'])
        if (name === null || name === '') return
        const lower = name.toLowerCase()
        const v = value === '' ? null : value
        if (ho.mismatch === undefined) { headers.push({ name: lower, value: v }); return }
        const m = c.str(ho.mismatch, [...hp, 'mismatch'])
        if (m === null) return
        if (!(MISMATCH_ACTIONS as readonly string[]).includes(m)) {
          c.r.add(ERR.VALUE, [...hp, 'mismatch'], `unknown mismatch action "${m}" (expected one of: ${MISMATCH_ACTIONS.join(', ')})`)
          return
        }
        if (m === 'LOG') { actions.push({ name: lower, value: v, mismatch: m }); return }
        // An action edits the forwarded request: only a valid field, never one that frames the
        // message or routes it (those the proxy writes itself).
        if (!HEADER_NAME.test(name)) { c.r.add(ERR.VALUE, [...hp, 'name'], `"${name}" is not a valid header name`); return }
        if (PROXY_FIELDS.includes(lower)) { c.r.add(ERR.UNSUPPORTED, [...hp, 'name'], `mismatch action ${m} on "${lower}" is not supported: the proxy writes that field itself`); return }
        if (v !== null && !HEADER_VALUE.test(v)) { c.r.add(ERR.VALUE, [...hp, 'value'], 'header value has characters a header field cannot carry'); return }
        actions.push({ name: lower, value: v, mismatch: m as MismatchAction })
      })
    }
    out.push({
      method: o.method === undefined ? null : regexField(o.method, [...p, 'method'], c),
      path: o.path === undefined ? null : regexField(o.path, [...p, 'path'], c),
      host: o.host === undefined ? null : regexField(o.host, [...p, 'host'], c),
      headers,
      ...(actions.length > 0 ? { headerActions: actions } : {}),
      rule: ref,
      httpIndex: i
    })
  })
  return out
}

export function parseNameMatch (v: unknown, path: PathSeg[], c: Checker): NameMatcher | null {
  const o = c.obj(v, path, ['matchName', 'matchPattern'])
  if (o === null) return null
  if ((o.matchName === undefined) === (o.matchPattern === undefined)) {
    c.r.add(ERR.VALUE, path, 'exactly one of matchName and matchPattern is required')
    return null
  }
  const field = o.matchName !== undefined ? 'matchName' : 'matchPattern'
  const s = c.str(o[field], [...path, field])
  if (s === null) return null
  const re = field === 'matchName' ? MATCH_NAME_RE : MATCH_PATTERN_RE
  if (s.length > 255 || !re.test(s)) {
    c.r.add(ERR.VALUE, [...path, field], `"${s}" is not a valid ${field} (allowed: ${field === 'matchName' ? 'letters, digits, - _ .' : 'letters, digits, - _ . *'}; at most 255)`)
    return null
  }
  return field === 'matchName' ? compileMatchName(s) : compileMatchPattern(s)
}

export function validateDns (v: unknown, path: PathSeg[], ref: RuleRef, c: Checker): DnsRuleItem[] | null {
  const list = c.list(v, path)
  if (list === null) return null
  // An empty list allows every name (Cilium's GeneratePattern on no rules).
  if (list.length === 0) return [{ pattern: '*', test: () => true, rule: ref }]
  const out: DnsRuleItem[] = []
  list.forEach((d, i) => {
    const m = parseNameMatch(d, [...path, i], c)
    if (m !== null) out.push({ pattern: m.pattern, test: m.test, rule: ref })
  })
  return out
}
