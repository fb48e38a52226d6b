import type { Command } from './main.js'
import { UsageError } from './usage.js'

export const command: Command = {
  summary: 'create or remove a namespace lab for the endpoints file (what a CNI would do)',
  usage: `Usage: warden lab up|down --endpoints FILE [--hosts FILE] [--prefix P] [--dns IP]
       warden lab up|down --cluster FILE

  up     per endpoint: netns <prefix><name>, veth <interface> <-> eth0 with its ipv4,
         routes both ways, /etc/netns/<ns>/hosts (every host's names) and resolv.conf
  down   remove all of it (idempotent; also after a partial up)

Options:
  --endpoints FILE  the endpoints file (endpoints: [{name, namespace, labels, ipv4, interface}])
  --hosts FILE      extra non-endpoint hosts: hosts: [{name, ipv4, interface, hostnames}]
  --prefix P        namespace name prefix (default "wl-")
  --dns IP          nameserver for every namespace's resolv.conf (default: none)
  --cluster FILE    a multi-node lab instead: nodes as namespaces on an underlay bridge, each
                    with its workloads, native routes between them, and an etcd (docs/lab.md)`,
  options: {
    endpoints: { type: 'string' },
    hosts: { type: 'string' },
    prefix: { type: 'string' },
    dns: { type: 'string' },
    cluster: { type: 'string' }
  },
  async run (values, positionals) {
    const action = positionals[0]
    if (action !== 'up' && action !== 'down') throw new UsageError('the action must be up or down')
    if (typeof values.cluster === 'string') {
      if (values.endpoints !== undefined || values.hosts !== undefined || values.prefix !== undefined || values.dns !== undefined) {
        throw new UsageError('--cluster takes no other option: the cluster file says everything')
      }
      return await cluster(action, values.cluster)
    }
    if (typeof values.endpoints !== 'string') throw new UsageError('--endpoints FILE or --cluster FILE is required')
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

async function cluster (action: 'up' | 'down', file: string): Promise<number> {
  const c = await import('../lab/cluster.js')
  try {
    const spec = c.readClusterSpec(file)
    if (action === 'down') {
      await c.clusterDown(spec)
      return 0
    }
    await c.clusterUp(spec)
    console.log(`etcd\t${c.underlayNs(spec)}\t${c.etcdEndpoint(spec)}`)
    for (const n of spec.nodes) {
      console.log(`node ${n.name}\t${c.nodeNs(spec, n.name)}\t${n.ip}\tpods ${n.podCidr}\tendpoints ${c.endpointsFile(spec, n.name)}`)
      for (const e of n.endpoints) console.log(`  ${c.podNs(spec, n.name, e.name)}\t${e.ipv4}\t${e.interface}`)
    }
    const n = spec.nodes[0]
    console.log(`\nan agent for node ${n.name} (each node's likewise):\n  ip netns exec ${c.nodeNs(spec, n.name)} node bin/warden.js run ` +
      `--policies POLICIES --endpoints ${c.endpointsFile(spec, n.name)} --uplink ul0 ` +
      `--bpffs ${c.bpffsRoot(spec)}/${n.name} --state-dir ${spec.workDir}/${n.name}/state ` +
      `${c.kvstoreArgs(spec).join(' ')} --node-name ${n.name}`)
    return 0
  } catch (err) {
    const e = err as Error & { code?: string }
    console.error(`warden lab ${action} --cluster: ${e.code ?? 'ERROR'}: ${e.message}`)
    return 1
  }
}
