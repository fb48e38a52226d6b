/**
 * `--identity-labels` and `--identity-labels-replace`, shared by `run`, `check` and `trace`, so
 * that checking and tracing count the same labels toward identities as the agent does.
 */
import type { ParseArgsConfig } from 'node:util'
import { IdentityLabelFilter } from '../policy-store/src/index.js'
import type { OptionValues } from './main.js'
import { UsageError } from './usage.js'

export const IDENTITY_LABEL_OPTIONS: NonNullable<ParseArgsConfig['options']> = {
  'identity-labels': { type: 'string', multiple: true },
  'identity-labels-replace': { type: 'boolean' }
}

/** The store options the flags give; a pattern that does not parse is a usage error. */
export function identityLabelOptions (v: OptionValues): { identityLabels: string[], identityLabelsReplace: boolean } {
  const identityLabels = ((v['identity-labels'] as string[] | undefined) ?? []).flatMap((x) => x.split(/\s+/)).filter((x) => x !== '')
  const identityLabelsReplace = v['identity-labels-replace'] === true
  try {
    void new IdentityLabelFilter(identityLabels, { replace: identityLabelsReplace })
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  return { identityLabels, identityLabelsReplace }
}
