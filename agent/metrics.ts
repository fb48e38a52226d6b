/**
 * Prometheus text exposition (version 0.0.4) of the agent's flat name -> number record.
 *
 * Names are made Prometheus-style here (camelCase -> snake_case), and every value that is not
 * listed in `gauges` is a counter: typed `counter`, its name ending in `_total`, so `rate()`
 * and `increase()` apply and a restart reads as a counter reset. The modules say which of
 * their values are gauges (HTTP_GAUGES, DNS_GAUGES); anything else they report only grows.
 *
 * A key may end in a label set, `name{worker="1"}`: one series of the family `name`, which
 * `gauges` names without labels. The label set is written as the agent made it (its own label
 * names and numbers, nothing a peer sends), so it is not escaped here.
 */
export function renderMetrics (values: Record<string, number>, gauges: ReadonlySet<string>): string {
  const rows: Array<[string, string, string, number]> = []
  for (const [key, v] of Object.entries(values)) {
    if (!Number.isFinite(v)) continue
    const brace = key.indexOf('{')
    const family = brace < 0 ? key : key.slice(0, brace)
    const labels = brace < 0 ? '' : key.slice(brace)
    const base = metricName(family)
    const gauge = gauges.has(family)
    rows.push([gauge || base.endsWith('_total') ? base : base + '_total', labels, gauge ? 'gauge' : 'counter', v])
  }
  rows.sort((a, b) => a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0)
  let out = ''
  let last = ''
  for (const [name, labels, type, v] of rows) {
    // one TYPE line per family, before its first series
    if (name !== last) out += `# TYPE ${name} ${type}\n`
    last = name
    out += `${name}${labels} ${v}\n`
  }
  return out
}

/** `warden_dns_spoofedAnswers` -> `warden_dns_spoofed_answers`; anything outside [a-zA-Z0-9_] -> `_`. */
export function metricName (key: string): string {
  return key.replace(/[^a-zA-Z0-9_]/g, '_').replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase()
}
