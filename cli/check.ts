/**
 * `warden check --policies DIR [--endpoints FILE]`: validate and compile, print every error as
 * `file:line:col: path: message` (exit 1), or a one-line summary (exit 0).
 */
import type { Command } from './main.js'
import { UsageError } from './usage.js'
import { IDENTITY_LABEL_OPTIONS, identityLabelOptions } from './identity-labels.js'
import { formatPolicyError, loadSnapshot } from '../policy-store/src/index.js'

export const command: Command = {
  summary: 'validate policy files (and an endpoints file); print errors with their location',
  usage: `Usage: warden check --policies DIR [--endpoints FILE] [--identity-labels LIST] [--identity-labels-replace]

Loads every .yaml/.yml/.json file below DIR (CiliumNetworkPolicy,
CiliumClusterwideNetworkPolicy, CiliumCIDRGroup) and compiles them. Prints each error as
  file:line:col: field.path: message
and exits 1 if there is any; otherwise prints a one-line summary and exits 0.
--identity-labels and --identity-labels-replace as for \`warden run\`.`,
  options: {
    policies: { type: 'string' },
    endpoints: { type: 'string' },
    ...IDENTITY_LABEL_OPTIONS
  },
  async run (values) {
    const policies = values.policies as string | undefined
    if (policies === undefined) {
      throw new UsageError('--policies DIR is required')
    }
    const { errors, summary } = await loadSnapshot({ policies, endpoints: values.endpoints as string | undefined, ...identityLabelOptions(values) })
    if (errors.length > 0) {
      for (const e of errors) console.log(formatPolicyError(e))
      console.error(`warden check: ${errors.length} error(s)`)
      return 1
    }
    const s = summary
    console.log(`ok: ${s.files} file(s), ${s.policies} ${s.policies === 1 ? 'policy' : 'policies'}, ${s.rules} rule(s), ${s.cidrGroups > 0 ? `${s.cidrGroups} CIDR group(s), ` : ''}${s.endpoints} endpoint(s), ${s.identities} ${s.identities === 1 ? 'identity' : 'identities'}` +
      (s.skippedDocuments > 0 ? ` (skipped ${s.skippedDocuments} non-Cilium document(s))` : ''))
    return 0
  }
}
