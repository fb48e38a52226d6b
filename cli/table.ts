/** Plain-text tables for the API commands: columns padded to their widest cell. */
export function table (head: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (r: readonly string[]): string => r.map((c, i) => i === r.length - 1 ? c : (c ?? '').padEnd(widths[i])).join('  ').trimEnd()
  return [line(head), ...rows.map(line)].join('\n')
}
