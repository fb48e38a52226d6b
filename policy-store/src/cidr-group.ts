/**
 * CiliumCIDRGroup documents: a named list of CIDRs that rules refer to with `cidrGroupRef`.
 * The compiler resolves the references (rule-files.ts, rule-locals.ts), so that a group in any
 * file of the directory, and any edit of it, applies to every rule that names it.
 */
import { ERR } from './errors.js'
import { parsePrefix, type Prefix } from './cidr.js'
import { DNS1123_SUBDOMAIN, type Checker, type Obj } from './checker.js'
import type { CidrGroup } from './model.js'

export function isCidrGroup (v: unknown): boolean {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && (v as Obj).kind === 'CiliumCIDRGroup'
}

/**
 * A CiliumCIDRGroup (pkg/k8s/apis/cilium.io/v2/cidrgroups_types.go): cluster-scoped, `spec.
 * externalCIDRs` a list of CIDRs (possibly empty). cilium.io/v2, or v2alpha1 as before 1.18.
 */
export function validateCidrGroup (v: unknown, c: Checker): CidrGroup | null {
  const doc = c.obj(v, [], ['apiVersion', 'kind', 'metadata', 'spec'])
  if (doc === null) return null
  const av = doc.apiVersion === undefined ? null : c.str(doc.apiVersion, ['apiVersion'])
  if (av === null) { if (doc.apiVersion === undefined) c.r.add(ERR.REQUIRED, [], 'apiVersion is required (cilium.io/v2)') } else if (av !== 'cilium.io/v2' && av !== 'cilium.io/v2alpha1') {
    c.r.add(ERR.KIND, ['apiVersion'], `unsupported apiVersion "${av}" for a CiliumCIDRGroup; expected cilium.io/v2 or cilium.io/v2alpha1`)
  }
  let name: string | null = null
  const md = doc.metadata === undefined ? null : c.obj(doc.metadata, ['metadata'], ['name', 'namespace', 'labels', 'annotations', 'uid', 'resourceVersion', 'generation', 'creationTimestamp'])
  if (md === null || md.name === undefined) c.r.add(ERR.REQUIRED, doc.metadata === undefined ? [] : ['metadata'], 'metadata.name is required')
  else {
    name = c.str(md.name, ['metadata', 'name'])
    if (name !== null && (name.length > 253 || !DNS1123_SUBDOMAIN.test(name))) c.r.add(ERR.VALUE, ['metadata', 'name'], `"${name}" is not a valid name (lower-case DNS-1123 subdomain)`)
  }
  if (md?.namespace !== undefined) c.r.add(ERR.VALUE, ['metadata', 'namespace'], 'a CiliumCIDRGroup is cluster-scoped and has no namespace')
  const prefixes: Prefix[] = []
  if (doc.spec === undefined) c.r.add(ERR.REQUIRED, [], 'spec is required')
  else {
    const spec = c.obj(doc.spec, ['spec'], ['externalCIDRs'])
    if (spec !== null && spec.externalCIDRs === undefined) c.r.add(ERR.REQUIRED, ['spec'], 'externalCIDRs is required (it may be empty)')
    else if (spec !== null) {
      c.list(spec.externalCIDRs, ['spec', 'externalCIDRs'])?.forEach((x, i) => {
        const p = ['spec', 'externalCIDRs', i]
        const str = c.str(x, p)
        if (str === null) return
        const prefix = parsePrefix(str)
        if (typeof prefix === 'string') c.r.add(str.includes(':') ? ERR.UNSUPPORTED : ERR.CIDR, p, prefix)
        else prefixes.push(prefix)
      })
    }
  }
  return name === null ? null : { name, prefixes, line: c.r.lineOf([]) }
}
