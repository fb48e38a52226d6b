import type { Command } from './main.js'
import type { DemoConfig } from '../demo/session.js'
import { UsageError } from './usage.js'

const USAGE = `Usage: warden demo [--nodes 2] [--keep | --down] [--deny-response 403|reset]

Builds a lab of network namespaces mirroring the seed's manifests (billing-service on nginx,
checkout, auditing, a monitoring pod, data-exporter, kube-dns on dnsmasq, and two HTTPS hosts
named api.github.com and www.google.com by the lab DNS), runs \`warden run\` on the seed's two
policies, runs every check the seed describes with curl from inside the workloads, prints a
table, tears everything down and exits non-zero if a check failed. Needs root.

  --nodes 2     the same across two nodes of a cluster lab (docs/lab.md), one agent each, sharing
                identities through an etcd: billing-service and kube-dns on node a, their clients
                on node b, so every HTTP check and DNS lookup crosses nodes; one more line shows
                node a's access log naming the client pod of node b
  --keep        leave the lab and the agent running and print commands to try by hand
  --down        remove what --keep left running
  --deny-response 403|reset   how the proxy answers an L7 denial (default 403, like Cilium)`

export const command: Command = {
  summary: 'run the seed\'s L7 HTTP and FQDN policies end to end in a lab',
  usage: USAGE,
  options: {
    keep: { type: 'boolean' },
    down: { type: 'boolean' },
    nodes: { type: 'string' },
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
    const nodes = (v.nodes as string | undefined) ?? '1'
    if (nodes !== '1' && nodes !== '2') throw new UsageError(`--nodes must be 1 or 2, got "${nodes}"`)
    if (nodes === '2') {
      const two = await import('../demo/two-nodes.js')
      if (v.down === true) {
        await two.teardownTwoNodes()
        console.log('warden demo --nodes 2: removed')
        return 0
      }
      const { ok } = await two.runTwoNodeDemo({ ...two.TWO_NODE_DEMO, denyResponse: deny }, { keep: v.keep === true })
      return ok ? 0 : 1
    }
    const cfg: DemoConfig = { ...DEFAULT_DEMO, denyResponse: deny }
    if (v.down === true) {
      await teardown(cfg)
      console.log('warden demo: removed')
      return 0
    }
    const { ok } = await runDemo(cfg, { keep: v.keep === true })
    return ok ? 0 : 1
  }
}
