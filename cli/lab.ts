import type { Command } from './main.js'
import { UsageError } from './usage.js'

export const command: Command = {
  summary: 'create or remove a namespace lab for the endpoints file (what a CNI would do)',
  usage: `Usage: warden lab up|down --endpoints FILE [--hosts FILE] [--prefix P] [--dns IP]

  up     per endpoint: netns <prefix><name>, veth <interface> <-> eth0 with its ipv4,
         routes both ways, /etc/netns/<ns>/hosts (every host's names) and resolv.conf
  down   remove all of it (idempotent; also after a partial up)

Options:
  --endpoints FILE  the endpoints file (endpoints: [{name, namespace, labels, ipv4, interface}])
  --hosts FILE      extra non-endpoint hosts: hosts: [{name, ipv4, interface, hostnames}]
  --prefix P        namespace name prefix (default "wl-")
  --dns IP          nameserver for every namespace's resolv.conf (default: none)`,
  options: {
    endpoints: { type: 'string' },
    hosts: { type: 'string' },
    prefix: { type: 'string' },
    dns: { type: 'string' }
  },
  async run (values, positionals) {
    const action = positionals[0]
    if (action !== 'up' && action !== 'down') throw new UsageError('the action must be up or down')
    if (typeof values.endpoints !== 'string') throw new UsageError('--endpoints FILE is required')
    const { labSpecFromFiles } = await import('../lab/endpoints-file.js')
    const { labUp, labDown, nsName } = await import('../lab/lab.js')
    try {
      const spec = labSpecFromFiles(values.endpoints, {
        hostsFile: values.hosts as string | undefined,
        prefix: values.prefix as string | undefined,
        dns: values.dns as string | undefined
      })
      if (action === 'up') {
        await labUp(spec)
        for (const h of spec.hosts) console.log(`${nsName(spec, h)}\t${h.ipv4}\t${h.hostIf}`)
      } else {
        await labDown(spec)
      }
      return 0
    } catch (err) {
      const e = err as Error & { code?: string }
      console.error(`warden lab ${action}: ${e.code ?? 'ERROR'}: ${e.message}`)
      return 1
    }
  }
}
