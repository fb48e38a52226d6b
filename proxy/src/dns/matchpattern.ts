/**
 * Cilium's DNS name selectors (`matchName`, `matchPattern`) as matchers over canonical names
 * (lower-case, trailing dot), after cilium/cilium pkg/fqdn/matchpattern (docs/policy.md): `*`
 * alone matches every well-formed name and the root; a leading `**.` is one or more whole
 * labels; any other run of `*` is `[-a-zA-Z0-9_]*` inside one label; the result is anchored. The policy store compiles its own; this module exists so
 * the DNS proxy and its tests do not depend on the store's internals.
 */
import RE2 from 're2'

const DNS_CHARS = '[-a-zA-Z0-9_]'
const MATCH_ALL = `(?:${DNS_CHARS}+[.])+|[.]`

/** Lower-case and fully qualify a name as written in a policy or a query. */
export function toFqdn (name: string): string {
  const n = name.toLowerCase()
  return n.endsWith('.') ? n : n + '.'
}

function escapeLiteral (s: string): string {
  return s.replace(/[.]/g, '[.]')
}

/** The anchored-body RE2 source of a matchPattern (without `^(?:` and `)$`). */
export function matchPatternSource (pattern: string): string {
  const p = toFqdn(pattern)
  if (/^\*+\.?$/.test(p)) return MATCH_ALL
  let head = ''
  let rest = p
  const lead = /^\*\*+\./.exec(p)
  if (lead !== null) {
    head = `${DNS_CHARS}+(?:[.]${DNS_CHARS}+)*[.]`
    rest = p.slice(lead[0].length)
  }
  return head + escapeLiteral(rest.replace(/\*+/g, '*')).replace(/\*/g, `${DNS_CHARS}*`)
}

export interface NameMatcher {
  /** `matchName:<fqdn>` or `matchPattern:<fqdn>`, as FqdnSelector.key. */
  readonly key: string
  readonly pattern: string
  test (fqdn: string): boolean
}

/**
 * `*` alone, without RE2: one or more labels of [-a-zA-Z0-9_], each followed by a dot, or the
 * root. Same language as MATCH_ALL; a char scan is much cheaper than an RE2 call on the DNS
 * proxy's hot path (docs/design/hot-paths.md).
 */
export function isPlainFqdn (fqdn: string): boolean {
  if (fqdn === '.') return true
  let labelLen = 0
  for (let i = 0; i < fqdn.length; i++) {
    const c = fqdn.charCodeAt(i)
    if (c === 0x2e) {
      if (labelLen === 0) return false
      labelLen = 0
    } else if ((c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f || (c >= 0x41 && c <= 0x5a)) {
      labelLen++
    } else {
      return false
    }
  }
  return fqdn.length > 0 && labelLen === 0
}

/** Compile one `{ matchName }` or `{ matchPattern }` item. */
export function compileNameMatcher (sel: { matchName?: string, matchPattern?: string }): NameMatcher {
  if (sel.matchName !== undefined) {
    const want = toFqdn(sel.matchName)
    return { key: `matchName:${want}`, pattern: sel.matchName, test: (fqdn: string) => fqdn === want }
  }
  if (sel.matchPattern === undefined) throw new TypeError('one of matchName or matchPattern is required')
  const key = `matchPattern:${toFqdn(sel.matchPattern)}`
  const src = matchPatternSource(sel.matchPattern)
  if (src === MATCH_ALL) return { key, pattern: sel.matchPattern, test: isPlainFqdn }
  if (!sel.matchPattern.includes('*')) {
    const want = toFqdn(sel.matchPattern)
    return { key, pattern: sel.matchPattern, test: (fqdn: string) => fqdn === want }
  }
  const re = new RE2('^(?:' + src + ')$', 'u')
  return { key, pattern: sel.matchPattern, test: (fqdn: string) => re.test(fqdn) }
}
