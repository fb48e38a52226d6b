/** Prometheus text exposition (version 0.0.4) of a flat name -> number record. */
export function renderMetrics (values: Record<string, number>): string {
  let out = ''
  for (const name of Object.keys(values).sort()) {
    const v = values[name]
    if (!Number.isFinite(v)) continue
    out += `# TYPE ${name} ${name.endsWith('_total') ? 'counter' : 'gauge'}\n${name} ${v}\n`
  }
  return out
}
