/**
 * The lines of a log another process is still writing that it has finished: everything up to the
 * last newline. The last line may be there only in part (a JSON line cut short would not parse,
 * a partial match would count twice), so it waits for the next read.
 */
export function completeLines (text: string): string[] {
  const end = text.lastIndexOf('\n')
  return end < 0 ? [] : text.slice(0, end).split('\n')
}
