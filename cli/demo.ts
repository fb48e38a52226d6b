import type { Command } from './main.js'
import { UsageError } from './usage.js'

const USAGE = `Usage: warden demo [--keep | --down] [--deny-response 403|reset]

Builds a lab of network namespaces mirroring the seed's manifests (billing-service on nginx,
checkout, auditing, a monitoring pod, data-exporter, kube-dns on dnsmasq, and two HTTPS hosts
named api.github.com and www.google.com by the lab DNS), runs \`warden run\` on the seed's two
policies, runs every check the seed describes with curl from inside the workloads, prints a
table, tears everything down and exits non-zero if a check failed. Needs root.

  --keep        leave the lab and the agent running and print commands to try by hand
  --down        remove what --keep left running
  --deny-response 403|reset   how the proxy answers an L7 denial (default 403, like Cilium)`

export const command: Command = {
  summary: 'run the seed\'s L7 HTTP and FQDN policies end to end in a lab',
  usage: USAGE,
  options: {
    keep: { type: 'boolean' },
    down: { type: 'boolean' },
    'deny-response': { type: 'string' }
  },
  async run (v) {
    if (process.getuid?.() !== 0) {
      console.error('warden demo: needs root (network namespaces, eBPF, tc)')
      return 1
    }
    const { runDemo, teardown, DEFAULT_DEMO } = await import('../demo/demo.js')
    const deny = (v['deny-response'] as string | undefined) ?? '403'
    if (deny !== '403' && deny !== 'reset') {
      throw new UsageError(`--deny-response must be 403 or reset, got "${deny}"`)
    }
    const cfg = { ...DEFAULT_DEMO, denyResponse: deny as '403' | 'reset' }
    if (v.down === true) {
      await teardown(cfg)
      console.log('warden demo: removed')
      return 0
    }
    const { ok } = await runDemo(cfg, { keep: v.keep === true })
    return ok ? 0 : 1
  }
}
