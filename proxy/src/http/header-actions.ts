/**
 * Apply the header actions of an allowed request (`headerMatches` with `mismatch`) to the
 * fields the proxy forwards, in rule order, as cilium/proxy edits Envoy's header map: ADD
 * appends a field, DELETE removes every field of that name, REPLACE removes them and adds one,
 * LOG changes nothing (the access log names it). Names are matched case-insensitively.
 */
import type { HeaderAction } from '../../../policy-store/src/types.js'
import { setFields, type ForwardRequest } from './request-head.js'

/** Edits `req` when some action changes the fields; returns the log text (`LOG x-a,ADD x-b`). */
export function applyHeaderActions (req: ForwardRequest, actions: readonly HeaderAction[]): string {
  let fields: string[] | null = null
  let logText = ''
  for (let i = 0; i < actions.length; i++) {
    const a = actions[i]
    logText += (i === 0 ? '' : ',') + a.mismatch + ' ' + a.name
    if (a.mismatch === 'LOG') continue
    if (fields === null) fields = req.headers.slice()
    if (a.mismatch !== 'ADD') fields = without(fields, a.name)
    if (a.mismatch !== 'DELETE') fields.push(a.name, a.value ?? '')
  }
  if (fields !== null) setFields(req, fields)
  return logText
}

function without (fields: string[], lowerName: string): string[] {
  const out: string[] = []
  for (let i = 0; i < fields.length; i += 2) {
    if (fields[i].length === lowerName.length && fields[i].toLowerCase() === lowerName) continue
    out.push(fields[i], fields[i + 1])
  }
  return out
}
