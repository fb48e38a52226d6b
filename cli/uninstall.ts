import type { Command } from './main.js'
import { UsageError } from './usage.js'

export const command: Command = {
  summary: 'remove every tc filter, ip rule, route and pinned map warden made',
  usage: `Usage: warden uninstall [--bpffs DIR] [--route-table N]

Removes the datapath an agent installed: the tc filters on every interface it attached
(and the clsact qdiscs it created), its ip rule and local route (only if it added them),
and the pins it made under --bpffs. Refuses, before removing anything, a directory that is
not on a bpf filesystem or that holds pins warden did not make. When an interface cannot be
detached, its record and the pins stay: run it again once the cause is fixed. Safe to run twice.

Options:
  --bpffs DIR       pin directory (default /sys/fs/bpf/warden)
  --route-table N   routing table used when the pins are already gone (default 2004)`,
  options: {
    bpffs: { type: 'string', default: '/sys/fs/bpf/warden' },
    'route-table': { type: 'string' }
  },
  async run (values) {
    const { uninstall } = await import('../redirect-bpf/src/index.js')
    const rt = values['route-table'] === undefined ? undefined : Number(values['route-table'])
    if (rt !== undefined && (!Number.isInteger(rt) || rt < 1 || rt > 0xfffffffe)) {
      throw new UsageError(`--route-table must be a table number, got ${String(values['route-table'])}`)
    }
    try {
      await uninstall({ bpffs: values.bpffs as string, routeTable: rt })
      console.log(`warden uninstall: removed the datapath of ${String(values.bpffs)}`)
      return 0
    } catch (err) {
      const e = err as Error & { code?: string }
      console.error(`warden uninstall: ${e.code ?? 'ERROR'}: ${e.message}`)
      return 1
    }
  }
}
