/**
 * One datapath lab per test file (root, real kernel): hosts in namespaces, the programs
 * loaded into the test's own bpffs dir, route table and proxy ports (slices from the
 * brief: 198.18.(16+N).0/24, netns wdp<N>-*, veths wdp<N>*, table 2100+N, ports 16000+10N).
 * Everything is removed in t.teardown, also when the test fails.
 */
import { pino } from 'pino'
import { labDown, labUp, type LabSpec } from '../../lab/lab.js'
import { openDatapath, uninstall, type Datapath, type DatapathOptions } from '../../redirect-bpf/src/index.js'
import type { KernelEntry, Snapshot } from '../../policy-store/src/types.js'
import { snapshot, type EpSpec } from './lab-snapshot.js'

export interface Lab {
  spec: LabSpec
  opts: DatapathOptions
  dp: Datapath
  eps: EpSpec[]
  ns: (name: string) => string
  ip: (name: string) => string
  /** Apply a snapshot of all lab endpoints with these kernel entries. */
  apply: (kernel: KernelEntry[]) => Promise<Snapshot>
  /** Reopen the datapath (an agent restart). */
  reopen: () => Promise<Datapath>
}

interface TapLike { teardown: (fn: () => unknown) => void }

export function isRoot (): boolean { return process.getuid?.() === 0 }

/** Lab number `n`'s names, addresses, bpffs dir, route table and ports (ports 16000+10n .. +9 are the lab's). */
export function labLayout (n: number, names: string[], identities?: number[]): { prefix: string, eps: EpSpec[], spec: LabSpec, opts: DatapathOptions } {
  const prefix = `wdp${n}-`
  const eps: EpSpec[] = names.map((name, i) => ({
    id: 100 + i,
    name,
    ipv4: `198.18.${16 + n}.${10 + i}`,
    iface: `wdp${n}${name}`.slice(0, 15),
    identity: identities?.[i] ?? 1000 + i
  }))
  const spec: LabSpec = { prefix, hosts: eps.map((e) => ({ name: e.name, ipv4: e.ipv4, hostIf: e.iface })) }
  const opts: DatapathOptions = {
    bpffs: `/sys/fs/bpf/wdp${n}`,
    proxyPort: 16000 + 10 * n,
    dnsProxyPort: 16001 + 10 * n,
    uplinks: [],
    routeTable: 2100 + n,
    logger: pino({ level: process.env.WARDEN_TEST_LOG ?? 'silent' })
  }
  return { prefix, eps, spec, opts }
}

export async function datapathLab (t: TapLike, n: number, names: string[], identities?: number[]): Promise<Lab> {
  const { prefix, eps, spec, opts } = labLayout(n, names, identities)
  let dp: Datapath | undefined
  t.teardown(async () => {
    await dp?.close()
    await uninstall({ bpffs: opts.bpffs, routeTable: opts.routeTable })
    await labDown(spec)
  })
  await labDown(spec) // leftovers of an earlier, killed run
  await uninstall({ bpffs: opts.bpffs, routeTable: opts.routeTable })
  await labUp(spec)
  dp = await openDatapath(opts)
  const lab: Lab = {
    spec,
    opts,
    dp,
    eps,
    ns: (name) => prefix + name,
    ip: (name) => eps.find((e) => e.name === name)?.ipv4 ?? '',
    apply: async (kernel) => {
      const snap = snapshot(eps, kernel)
      await lab.dp.apply(snap)
      return snap
    },
    reopen: async () => {
      await lab.dp.close()
      dp = await openDatapath(opts)
      lab.dp = dp
      return dp
    }
  }
  return lab
}

/**
 * Wait until `cond()` holds, at most `ms`. Flow events reach the agent through the ring buffer's
 * epoll wake-up (or its 1 s fallback poll); on a loaded machine a fixed short sleep can end first.
 */
export async function eventually (cond: () => boolean, ms = 3000): Promise<void> {
  for (let waited = 0; waited < ms && !cond(); waited += 25) await new Promise((resolve) => setTimeout(resolve, 25))
}
