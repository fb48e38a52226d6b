/**
 * Validation and normalisation of CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy
 * documents (Cilium's `Sanitize`; docs/policy.md). Strict: unknown fields, wrong types and
 * features we do not implement are errors with their location, never silently ignored.
 * Produces `PolicyRule`s with regexes compiled and namespaces injected.
 */
import { ERR, type PolicyError } from './errors.js'
import { parsePrefix, prefixContains, type Prefix } from './cidr.js'
import {
  makeSelector, namesNamespace, NAMESPACE_LABEL, OPERATORS, parseSelectorKey, usesReserved,
  type Operator, type Requirement, type Selector
} from './labels.js'
import { Checker, DNS1123_SUBDOMAIN, type Obj } from './checker.js'
import { isCidrGroup, validateCidrGroup } from './cidr-group.js'
import { ENTITIES, nextUid, type CidrGroup, type DnsRuleItem, type Entity, type FilePolicies, type NamedPortItem, type Peer, type PolicyRule, type PortItem, type RuleElement } from './model.js'
import type { PathSeg, ParsedFile } from './source-file.js'
import { DIR, type CompiledHttpRule, type RuleRef } from './types.js'
import { validateIcmps } from './validate-icmp.js'
import { parseNameMatch, validateDns, validateHttp } from './validate-l7.js'

/** Cilium's cap on ports per PortRule (`maxPorts` in pkg/policy/api/l4.go). */
export const MAX_PORTS = 40

const KINDS = ['CiliumNetworkPolicy', 'CiliumClusterwideNetworkPolicy'] as const
type Kind = typeof KINDS[number]
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/
/** IANA service name (Cilium's `isValidServiceName` shape): letters, digits, inner hyphens. */
const IANA_NAME = /^(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$/

/** Validate every document of a parsed file. Errors go to the file's reporter. */
export function validatePolicyFile (parsed: ParsedFile): { policies: FilePolicies, errors: PolicyError[] } {
  const rules: PolicyRule[] = []
  const cidrGroups: CidrGroup[] = []
  let policies = 0
  let skipped = 0
  for (const { value, reporter } of parsed.docs) {
    const before = reporter.errors.length
    if (isCidrGroup(value)) {
      const g = validateCidrGroup(value, new Checker(reporter))
      if (g !== null && reporter.errors.length === before) cidrGroups.push(g)
      continue
    }
    if (isForeignDocument(value)) { skipped++; continue }
    const docRules = validateDocument(value, new Checker(reporter))
    // A document with any error contributes nothing (never a half-applied policy).
    if (docRules !== null && reporter.errors.length === before) {
      rules.push(...docRules)
      policies++
    }
  }
  const file: FilePolicies = { file: parsed.reporter.file, rules, policies, skipped }
  if (cidrGroups.length > 0) file.cidrGroups = cidrGroups
  return { policies: file, errors: parsed.reporter.errors }
}

/**
 * A document of another API group (a Deployment or Service next to the policies, as in the
 * seed's manifests directory) is not a policy: it is skipped and counted, not an error.
 * Anything that claims cilium.io, or a Cilium policy kind, is validated strictly.
 */
function isForeignDocument (v: unknown): boolean {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false
  const { apiVersion, kind } = v as Obj
  return typeof apiVersion === 'string' && typeof kind === 'string' && !apiVersion.startsWith('cilium.io/') &&
    !(KINDS as readonly string[]).includes(kind)
}

function validateDocument (v: unknown, c: Checker): PolicyRule[] | null {
  const doc = c.obj(v, [], ['apiVersion', 'kind', 'metadata', 'spec', 'specs', 'status'])
  if (doc === null) return null
  if (doc.apiVersion === undefined) c.r.add(ERR.REQUIRED, [], 'apiVersion is required (cilium.io/v2)')
  else {
    const av = c.str(doc.apiVersion, ['apiVersion'])
    if (av !== null && av !== 'cilium.io/v2') c.r.add(ERR.KIND, ['apiVersion'], `unsupported apiVersion "${av}"; expected cilium.io/v2`)
  }
  const kindRaw = doc.kind === undefined ? null : c.str(doc.kind, ['kind'])
  if (doc.kind === undefined) c.r.add(ERR.REQUIRED, [], `kind is required (${KINDS.join(' or ')})`)
  if (kindRaw !== null && !(KINDS as readonly string[]).includes(kindRaw)) {
    c.r.add(ERR.KIND, ['kind'], `unsupported kind "${kindRaw}"; expected ${KINDS.join(' or ')}`)
    return null
  }
  if (kindRaw === null) return null
  const kind = kindRaw as Kind
  let name = ''
  let namespace: string | null = kind === 'CiliumNetworkPolicy' ? 'default' : null
  if (doc.metadata === undefined) c.r.add(ERR.REQUIRED, [], 'metadata.name is required')
  else {
    const md = c.obj(doc.metadata, ['metadata'], ['name', 'namespace', 'labels', 'annotations', 'uid', 'resourceVersion', 'generation', 'creationTimestamp'])
    if (md !== null) {
      if (md.name === undefined) c.r.add(ERR.REQUIRED, ['metadata'], 'metadata.name is required')
      else {
        const n = c.str(md.name, ['metadata', 'name'])
        if (n !== null && (n.length > 253 || !DNS1123_SUBDOMAIN.test(n))) c.r.add(ERR.VALUE, ['metadata', 'name'], `"${n}" is not a valid name (lower-case DNS-1123 subdomain)`)
        name = n ?? ''
      }
      if (md.namespace !== undefined) {
        const ns = c.str(md.namespace, ['metadata', 'namespace'])
        if (kind === 'CiliumClusterwideNetworkPolicy') c.r.add(ERR.VALUE, ['metadata', 'namespace'], 'a CiliumClusterwideNetworkPolicy is cluster-scoped and has no namespace')
        else if (ns !== null && !DNS1123_LABEL.test(ns)) c.r.add(ERR.VALUE, ['metadata', 'namespace'], `"${ns}" is not a valid namespace (DNS-1123 label)`)
        else if (ns !== null) namespace = ns
      }
    }
  }
  const policy = namespace === null ? name : `${namespace}/${name}`
  const specs: { v: unknown, path: PathSeg[], index: number }[] = []
  if (doc.spec !== undefined) specs.push({ v: doc.spec, path: ['spec'], index: 0 })
  if (doc.specs !== undefined) {
    const list = c.list(doc.specs, ['specs'])
    if (list !== null) {
      if (list.length === 0 && doc.spec === undefined) c.r.add(ERR.REQUIRED, ['specs'], 'specs is empty; a policy needs at least one rule')
      list.forEach((s, i) => specs.push({ v: s, path: ['specs', i], index: i }))
    }
  }
  if (doc.spec === undefined && doc.specs === undefined) c.r.add(ERR.REQUIRED, [], 'a policy needs `spec` or `specs`')
  const out: PolicyRule[] = []
  const ctx = { kind, policy, namespace, file: c.r.file }
  for (const s of specs) {
    const rule = validateRule(s.v, s.path, s.index, ctx, c)
    if (rule !== null) out.push(rule)
  }
  return out
}

interface Ctx { kind: Kind, policy: string, namespace: string | null, file: string }

const SECTIONS = ['ingress', 'ingressDeny', 'egress', 'egressDeny'] as const
type Section = typeof SECTIONS[number]

function validateRule (v: unknown, path: PathSeg[], specIndex: number, ctx: Ctx, c: Checker): PolicyRule | null {
  const o = c.obj(v, path, ['endpointSelector', 'ingress', 'ingressDeny', 'egress', 'egressDeny', 'enableDefaultDeny', 'labels', 'description', 'log'], ['nodeSelector'])
  if (o === null) return null
  let subject: Selector | null = null
  if (o.endpointSelector === undefined) {
    if (o.nodeSelector === undefined) c.r.add(ERR.REQUIRED, path, 'endpointSelector is required')
  } else {
    const sel = parseSelector(o.endpointSelector, [...path, 'endpointSelector'], c)
    if (sel !== null) subject = scopeSubject(sel, [...path, 'endpointSelector'], ctx, c)
  }
  if (o.description !== undefined) c.str(o.description, [...path, 'description'])
  if (o.log !== undefined) {
    const log = c.obj(o.log, [...path, 'log'], ['value'])
    if (log?.value !== undefined) c.str(log.value, [...path, 'log', 'value'])
  }
  if (o.labels !== undefined) {
    const labels = c.list(o.labels, [...path, 'labels'])
    labels?.forEach((l, i) => {
      const lo = c.obj(l, [...path, 'labels', i], ['key', 'value', 'source'])
      if (lo === null) return
      if (lo.key === undefined) c.r.add(ERR.REQUIRED, [...path, 'labels', i], 'key is required')
      for (const k of ['key', 'value', 'source']) if (lo[k] !== undefined) c.str(lo[k], [...path, 'labels', i, k])
    })
  }
  const enable: [boolean | null, boolean | null] = [null, null]
  if (o.enableDefaultDeny !== undefined) {
    const e = c.obj(o.enableDefaultDeny, [...path, 'enableDefaultDeny'], ['ingress', 'egress'])
    if (e?.ingress !== undefined) enable[0] = c.bool(e.ingress, [...path, 'enableDefaultDeny', 'ingress'])
    if (e?.egress !== undefined) enable[1] = c.bool(e.egress, [...path, 'enableDefaultDeny', 'egress'])
  }
  const elements: RuleElement[] = []
  const hasSection: [boolean, boolean] = [false, false]
  let itemCount = 0
  for (const section of SECTIONS) {
    if (o[section] === undefined) continue
    const list = c.list(o[section], [...path, section])
    if (list === null) continue
    const dir = section.startsWith('ingress') ? DIR.INGRESS : DIR.EGRESS
    if (list.length > 0) hasSection[dir] = true
    itemCount += list.length
    list.forEach((item, i) => {
      const ref: RuleRef = {
        file: ctx.file,
        line: c.r.lineOf([...path, section, i]),
        kind: ctx.kind,
        policy: ctx.policy,
        spec: specIndex,
        section,
        index: i
      }
      elements.push(...validateElement(item, [...path, section, i], section, ref, ctx, c))
    })
  }
  if (subject === null) return null
  return {
    uid: nextUid(),
    file: ctx.file,
    kind: ctx.kind,
    policy: ctx.policy,
    subject,
    elements,
    itemCount,
    hasSection,
    defaultDeny: [hasSection[0] && enable[0] !== false, hasSection[1] && enable[1] !== false]
  }
}

const PEER_FIELDS: Record<Section, { allowed: string[], unsupported: string[] }> = {
  ingress: { allowed: ['fromEndpoints', 'fromCIDR', 'fromCIDRSet', 'fromEntities', 'toPorts', 'icmps'], unsupported: ['fromRequires', 'fromGroups', 'fromNodes', 'authentication'] },
  ingressDeny: { allowed: ['fromEndpoints', 'fromCIDR', 'fromCIDRSet', 'fromEntities', 'toPorts', 'icmps'], unsupported: ['fromRequires', 'fromGroups', 'fromNodes'] },
  egress: { allowed: ['toEndpoints', 'toCIDR', 'toCIDRSet', 'toEntities', 'toFQDNs', 'toPorts', 'icmps'], unsupported: ['toRequires', 'toServices', 'toGroups', 'toNodes', 'authentication'] },
  egressDeny: { allowed: ['toEndpoints', 'toCIDR', 'toCIDRSet', 'toEntities', 'toPorts', 'icmps'], unsupported: ['toRequires', 'toServices', 'toGroups', 'toNodes'] }
}

function validateElement (v: unknown, path: PathSeg[], section: Section, ref: RuleRef, ctx: Ctx, c: Checker): RuleElement[] {
  const { allowed, unsupported } = PEER_FIELDS[section]
  const o = c.obj(v, path, allowed, unsupported)
  if (o === null) return []
  const before = c.r.errors.length
  const ingress = section.startsWith('ingress')
  const deny = section.endsWith('Deny')
  const pre = ingress ? 'from' : 'to'
  // Peer kinds; Cilium rejects mixing kinds in one element.
  const kinds: string[] = []
  let peers: Peer[] | null = null
  let anyPeer = false
  const add = (p: Peer): void => { (peers ??= []).push(p) }
  const ep = o[pre + 'Endpoints']
  if (ep !== undefined) {
    kinds.push(pre + 'Endpoints')
    peers ??= []
    c.list(ep, [...path, pre + 'Endpoints'])?.forEach((s, i) => {
      const p = [...path, pre + 'Endpoints', i]
      const sel = parseSelector(s, p, c)
      if (sel !== null) add({ kind: 'endpoints', selector: scopePeer(sel, ctx) })
    })
  }
  const cidr = o[pre + 'CIDR']
  const cidrSet = o[pre + 'CIDRSet']
  if (cidr !== undefined || cidrSet !== undefined) {
    kinds.push(cidr !== undefined ? pre + 'CIDR' : pre + 'CIDRSet')
    peers ??= []
  }
  if (cidr !== undefined) {
    c.list(cidr, [...path, pre + 'CIDR'])?.forEach((s, i) => {
      const p = [...path, pre + 'CIDR', i]
      const str = c.str(s, p)
      if (str === null) return
      const prefix = parsePrefix(str)
      if (typeof prefix === 'string') c.r.add(str.includes(':') ? ERR.UNSUPPORTED : ERR.CIDR, p, prefix)
      else add({ kind: 'cidr', prefix, except: [] })
    })
  }
  if (cidrSet !== undefined) {
    c.list(cidrSet, [...path, pre + 'CIDRSet'])?.forEach((s, i) => {
      const p = [...path, pre + 'CIDRSet', i]
      const so = c.obj(s, p, ['cidr', 'except', 'cidrGroupRef'], ['cidrGroupSelector'])
      if (so === null) return
      if (so.cidr !== undefined && so.cidrGroupRef !== undefined) { c.r.add(ERR.VALUE, p, 'cidr and cidrGroupRef are mutually exclusive'); return }
      if (so.cidr === undefined && so.cidrGroupRef === undefined) { if (so.cidrGroupSelector === undefined) c.r.add(ERR.REQUIRED, p, 'cidr or cidrGroupRef is required'); return }
      let prefix: Prefix | null = null
      let group: string | null = null
      let str = ''
      if (so.cidr !== undefined) {
        const cs = c.str(so.cidr, [...p, 'cidr'])
        if (cs === null) return
        str = cs
        const px = parsePrefix(cs)
        if (typeof px === 'string') { c.r.add(cs.includes(':') ? ERR.UNSUPPORTED : ERR.CIDR, [...p, 'cidr'], px); return }
        prefix = px
      } else {
        group = c.str(so.cidrGroupRef, [...p, 'cidrGroupRef'])
        if (group === null) return
        if (group.length > 253 || !DNS1123_SUBDOMAIN.test(group)) { c.r.add(ERR.VALUE, [...p, 'cidrGroupRef'], `"${group}" is not a valid CiliumCIDRGroup name`); return }
      }
      const except: Prefix[] = []
      if (so.except !== undefined) {
        c.list(so.except, [...p, 'except'])?.forEach((e, j) => {
          const ep2 = [...p, 'except', j]
          const es = c.str(e, ep2)
          if (es === null) return
          const ex = parsePrefix(es)
          if (typeof ex === 'string') c.r.add(ERR.CIDR, ep2, ex)
          else if (prefix !== null && !prefixContains(prefix, ex)) c.r.add(ERR.CIDR, ep2, `except "${es}" is not inside cidr "${str}"`)
          else except.push(ex)
        })
      }
      // A group's CIDRs are known only at compile time (another file may define or change it).
      add(prefix !== null ? { kind: 'cidr', prefix, except } : { kind: 'cidrGroup', name: group as string, except })
    })
  }
  const ent = o[pre + 'Entities']
  if (ent !== undefined) {
    kinds.push(pre + 'Entities')
    peers ??= []
    c.list(ent, [...path, pre + 'Entities'])?.forEach((s, i) => {
      const p = [...path, pre + 'Entities', i]
      const str = c.str(s, p)
      if (str === null) return
      const e = str.toLowerCase()
      if (!(ENTITIES as readonly string[]).includes(e)) c.r.add(ERR.ENTITY, p, `unknown entity "${str}" (expected one of: ${ENTITIES.join(', ')})`)
      else if (e === 'all') anyPeer = true
      else add({ kind: 'entity', entity: e as Entity })
    })
  }
  if (o.toFQDNs !== undefined) {
    kinds.push('toFQDNs')
    peers ??= []
    c.list(o.toFQDNs, [...path, 'toFQDNs'])?.forEach((s, i) => {
      const m = parseNameMatch(s, [...path, 'toFQDNs', i], c)
      if (m !== null) add({ kind: 'fqdn', matcher: m })
    })
  }
  if (kinds.length > 1) {
    c.r.add(ERR.VALUE, path, `combining ${kinds.join(' and ')} in one rule is not supported (as in Cilium); write them as separate rules`)
  }
  const finalPeers: Peer[] | null = anyPeer ? null : peers
  const dir = ingress ? DIR.INGRESS : DIR.EGRESS
  const out: RuleElement[] = []
  if (o.icmps !== undefined) {
    // Cilium (pkg/policy/api/rule_validation.go): ICMPs only without ToPorts in one rule.
    if (o.toPorts !== undefined) c.r.add(ERR.VALUE, [...path, 'icmps'], 'icmps and toPorts cannot be combined in one rule; write them as separate rules')
    for (const ports of validateIcmps(o.icmps, [...path, 'icmps'], c)) {
      out.push({ uid: nextUid(), ref, direction: dir, deny, peers: finalPeers, ports, namedPorts: null, http: null, dns: null })
    }
  } else if (o.toPorts === undefined) {
    // `{}` (no peer, no port) allows nothing (as in Cilium), but still switches on default deny.
    if (finalPeers !== null || anyPeer) {
      out.push({ uid: nextUid(), ref, direction: dir, deny, peers: finalPeers, ports: null, namedPorts: null, http: null, dns: null })
    }
  } else {
    const list = c.list(o.toPorts, [...path, 'toPorts'])
    list?.forEach((pr, i) => {
      const e = validatePortRule(pr, [...path, 'toPorts', i], section, ref, c)
      if (e !== null) out.push({ uid: nextUid(), ref, direction: dir, deny, peers: finalPeers, ...e })
    })
  }
  return c.r.errors.length === before ? out : []
}

function validatePortRule (v: unknown, path: PathSeg[], section: Section, ref: RuleRef, c: Checker): Pick<RuleElement, 'ports' | 'namedPorts' | 'http' | 'dns'> | null {
  const deny = section.endsWith('Deny')
  const o = deny
    ? c.obj(v, path, ['ports'], [])
    : c.obj(v, path, ['ports', 'rules'], ['serverNames', 'terminatingTLS', 'originatingTLS', 'listener'])
  if (o === null) return null
  if (deny && o.rules !== undefined) c.r.add(ERR.VALUE, [...path, 'rules'], 'deny rules cannot have L7 rules', true)
  let http: CompiledHttpRule[] | null = null
  let dns: DnsRuleItem[] | null = null
  if (o.rules !== undefined) {
    const rp = [...path, 'rules']
    const rules = c.obj(o.rules, rp, ['http', 'dns'], ['kafka', 'l7proto', 'l7'])
    if (rules !== null) {
      if (rules.http !== undefined && rules.dns !== undefined) c.r.add(ERR.VALUE, rp, 'multiple L7 protocol rule types (http and dns) in one rule')
      if (rules.http !== undefined) http = validateHttp(rules.http, [...rp, 'http'], ref, c)
      if (rules.dns !== undefined) {
        if (section === 'ingress') c.r.add(ERR.VALUE, [...rp, 'dns'], 'DNS rules are not allowed on ingress')
        dns = validateDns(rules.dns, [...rp, 'dns'], ref, c)
      }
    }
  }
  if (o.ports === undefined) { c.r.add(ERR.REQUIRED, path, 'ports is required'); return null }
  const list = c.list(o.ports, [...path, 'ports'])
  if (list === null) return null
  if (list.length === 0) { c.r.add(ERR.REQUIRED, [...path, 'ports'], 'ports must list at least one port'); return null }
  if (list.length > MAX_PORTS) c.r.add(ERR.PORT, [...path, 'ports'], `too many ports, the max is ${MAX_PORTS}`)
  const ports: PortItem[] = []
  const named: NamedPortItem[] = []
  list.forEach((p, i) => {
    const items = validatePort(p, [...path, 'ports', i], http !== null, dns !== null, c)
    if (items === null) return
    if (Array.isArray(items)) ports.push(...items)
    else named.push(items)
  })
  return { ports, namedPorts: named.length > 0 ? named : null, http, dns }
}

function validatePort (v: unknown, path: PathSeg[], hasHttp: boolean, hasDns: boolean, c: Checker): PortItem[] | NamedPortItem | null {
  const o = c.obj(v, path, ['port', 'endPort', 'protocol'])
  if (o === null) return null
  let port: number | null = null
  let name: string | null = null
  if (o.port === undefined) c.r.add(ERR.REQUIRED, path, 'port is required ("0" for all ports)')
  else if (typeof o.port === 'number') {
    // The CRD says string; an unquoted YAML number is unambiguous, so accept it.
    if (!Number.isInteger(o.port) || o.port < 0 || o.port > 65535) c.r.add(ERR.PORT, [...path, 'port'], `port ${o.port} is out of range 0..65535`)
    else port = o.port
  } else {
    const s = c.str(o.port, [...path, 'port'])
    if (s !== null) {
      if (/^[0-9]+$/.test(s)) {
        const n = Number(s)
        if (n > 65535) c.r.add(ERR.PORT, [...path, 'port'], `port ${s} is out of range 0..65535`)
        else port = n
      } else if (s === '') {
        c.r.add(ERR.PORT, [...path, 'port'], 'port must be specified')
      } else if (s.length <= 15 && IANA_NAME.test(s.toLowerCase())) {
        // Port names are case-insensitive (Cilium lower-cases them, pkg/policy/api/l4.go).
        name = s.toLowerCase()
      } else {
        c.r.add(ERR.PORT, [...path, 'port'], `"${s}" is not a port number (0..65535) or port name`)
      }
    }
  }
  let endPort = 0
  if (o.endPort !== undefined) {
    const e = o.endPort
    if (typeof e !== 'number' || !Number.isInteger(e)) c.r.add(ERR.TYPE, [...path, 'endPort'], `must be an integer, got ${c.typeName(e)}`)
    else if (e < 0 || e > 65535) c.r.add(ERR.PORT, [...path, 'endPort'], `endPort ${e} is out of range 0..65535`)
    else if (port !== null && e !== 0 && e < port) c.r.add(ERR.PORT, [...path, 'endPort'], `endPort ${e} is below port ${port}`)
    else if (port === 0 && e !== 0) c.r.add(ERR.PORT, [...path, 'endPort'], 'endPort needs a non-zero port')
    else endPort = e
  }
  let proto = 'ANY'
  if (o.protocol !== undefined) {
    const s = c.str(o.protocol, [...path, 'protocol'])
    if (s !== null) {
      proto = s.toUpperCase()
      if (!['TCP', 'UDP', 'SCTP', 'ANY'].includes(proto)) { c.r.add(ERR.PROTOCOL, [...path, 'protocol'], `unknown protocol "${s}" (expected TCP, UDP, SCTP or ANY)`); return null }
    }
  }
  if (name !== null) {
    if (o.endPort !== undefined && o.endPort !== 0) { c.r.add(ERR.PORT, [...path, 'endPort'], `endPort needs a port number, not the port name "${name}"`); return null }
    if (hasHttp && proto !== 'TCP' && proto !== 'ANY') { c.r.add(ERR.PROTOCOL, [...path, 'protocol'], `L7 rules can only apply to TCP (not ${proto}) except for DNS rules`); return null }
    if (hasDns && proto === 'SCTP') { c.r.add(ERR.PROTOCOL, [...path, 'protocol'], 'DNS rules apply to UDP or TCP (not SCTP)'); return null }
    // HTTP is TCP only: a named port with HTTP rules resolves to TCP container ports alone.
    return { name, protocol: proto === 'ANY' ? (hasHttp ? 6 : 0) : protoNumber(proto) }
  }
  if (port === null) return null
  if (endPort === port) endPort = 0
  if ((hasHttp || hasDns) && port === 0) { c.r.add(ERR.PORT, [...path, 'port'], 'L7 rules can not be used when a port is 0'); return null }
  if (hasHttp && proto !== 'TCP' && proto !== 'ANY') { c.r.add(ERR.PROTOCOL, [...path, 'protocol'], `L7 rules can only apply to TCP (not ${proto}) except for DNS rules`); return null }
  if (hasDns && proto === 'SCTP') { c.r.add(ERR.PROTOCOL, [...path, 'protocol'], 'DNS rules apply to UDP or TCP (not SCTP)'); return null }
  if (hasDns && endPort !== 0) { c.r.add(ERR.PORT, [...path, 'endPort'], 'DNS rules do not support port ranges'); return null }
  const e = endPort === 0 ? port : endPort
  if (port === 0) {
    if (proto === 'ANY') return [{ protocol: 0, port: 0, endPort: 0 }]
    return [{ protocol: protoNumber(proto), port: 0, endPort: 0 }]
  }
  // ANY with HTTP rules means TCP (HTTP is TCP only); with DNS rules TCP and UDP.
  const protos: (6 | 17 | 132)[] = proto !== 'ANY' ? [protoNumber(proto)] : hasHttp ? [6] : hasDns ? [6, 17] : [6, 17, 132]
  return protos.map((p) => ({ protocol: p, port, endPort: e }))
}

function protoNumber (p: string): 6 | 17 | 132 {
  return p === 'TCP' ? 6 : p === 'UDP' ? 17 : 132
}

function parseSelector (v: unknown, path: PathSeg[], c: Checker): Selector | null {
  const o = c.obj(v, path, ['matchLabels', 'matchExpressions'])
  if (o === null) return null
  const reqs: Requirement[] = []
  let ok = true
  if (o.matchLabels !== undefined) {
    const ml = c.obj(o.matchLabels, [...path, 'matchLabels'], Object.keys(o.matchLabels ?? {}))
    if (ml === null) ok = false
    else {
      for (const [k, val] of Object.entries(ml)) {
        const p = [...path, 'matchLabels', k]
        const s = c.str(val, p)
        if (s === null) { ok = false; continue }
        if (!checkKey(k, p, c) || !checkValue(s, p, c)) { ok = false; continue }
        const { source, key } = parseSelectorKey(k)
        reqs.push({ source, key, op: 'In', values: [s] })
      }
    }
  }
  if (o.matchExpressions !== undefined) {
    c.list(o.matchExpressions, [...path, 'matchExpressions'])?.forEach((e, i) => {
      const p = [...path, 'matchExpressions', i]
      const eo = c.obj(e, p, ['key', 'operator', 'values'])
      if (eo === null) { ok = false; return }
      if (eo.key === undefined || eo.operator === undefined) { c.r.add(ERR.REQUIRED, p, 'key and operator are required'); ok = false; return }
      const k = c.str(eo.key, [...p, 'key'])
      const op = c.str(eo.operator, [...p, 'operator'])
      if (k === null || op === null || !checkKey(k, [...p, 'key'], c)) { ok = false; return }
      if (!(OPERATORS as readonly string[]).includes(op)) {
        c.r.add(ERR.SELECTOR, [...p, 'operator'], `unknown operator "${op}" (expected In, NotIn, Exists or DoesNotExist)`)
        ok = false
        return
      }
      const values: string[] = []
      if (eo.values !== undefined) {
        const vl = c.list(eo.values, [...p, 'values'])
        if (vl === null) { ok = false; return }
        vl.forEach((x, j) => { const s = c.str(x, [...p, 'values', j]); if (s === null) ok = false; else values.push(s) })
      }
      if ((op === 'In' || op === 'NotIn') && values.length === 0) { c.r.add(ERR.SELECTOR, [...p, 'values'], `operator ${op} needs at least one value`); ok = false; return }
      if ((op === 'Exists' || op === 'DoesNotExist') && values.length > 0) { c.r.add(ERR.SELECTOR, [...p, 'values'], `operator ${op} takes no values`); ok = false; return }
      const { source, key } = parseSelectorKey(k)
      reqs.push({ source, key, op: op as Operator, values })
    })
  }
  return ok ? makeSelector(reqs) : null
}

function checkKey (k: string, path: PathSeg[], c: Checker): boolean {
  if (k === '' || /[\s=]/.test(k) || k.length > 317) { c.r.add(ERR.SELECTOR, path, `"${k}" is not a valid label key`, true); return false }
  return true
}

function checkValue (v: string, path: PathSeg[], c: Checker): boolean {
  if (v.length > 63 || !LABEL_VALUE.test(v)) { c.r.add(ERR.SELECTOR, path, `"${v}" is not a valid label value`); return false }
  return true
}

/** CNP: the subject is always within the policy's namespace (docs/policy.md). */
function scopeSubject (sel: Selector, path: PathSeg[], ctx: Ctx, c: Checker): Selector | null {
  if (ctx.namespace === null) return sel
  const ns = ctx.namespace
  const nsReqs = sel.reqs.filter((r) => r.key === NAMESPACE_LABEL && (r.source === 'k8s' || r.source === 'any'))
  const conflicting = nsReqs.filter((r) => !(r.op === 'In' && r.values.length === 1 && r.values[0] === ns))
  if (conflicting.length > 0) {
    // Cilium overwrites it with a warning; we refuse, so the author sees the policy cannot do that.
    c.r.add(ERR.SELECTOR, path, `a CiliumNetworkPolicy in namespace "${ns}" selects only endpoints of "${ns}"; use a CiliumClusterwideNetworkPolicy to select others`)
    return null
  }
  const rest = sel.reqs.filter((r) => !nsReqs.includes(r))
  return makeSelector([...rest, { source: 'k8s', key: NAMESPACE_LABEL, op: 'In', values: [ns] }])
}

/** CNP peers default to the policy's namespace; CCNP peers to any namespace (pods only). */
function scopePeer (sel: Selector, ctx: Ctx): Selector {
  if (namesNamespace(sel) || usesReserved(sel)) return sel
  if (ctx.namespace !== null) return makeSelector([...sel.reqs, { source: 'k8s', key: NAMESPACE_LABEL, op: 'In', values: [ctx.namespace] }])
  return makeSelector([...sel.reqs, { source: 'k8s', key: NAMESPACE_LABEL, op: 'Exists', values: [] }])
}
