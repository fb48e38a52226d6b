/**
 * The smuggling harness through the real datapath: the demo lab (demo/session.ts: namespaces,
 * tc eBPF, `warden run` on the seed's policies) plus one harness policy, checkout may
 * `POST /api/v1/charge` on billing-service port 9090, where the raw recording backend listens
 * inside billing-service's namespace (nginx keeps 8080). The client driver runs inside
 * checkout-service's namespace, so every byte goes workload -> tc redirect -> warden's HTTP proxy
 * -> billing-service, as in a node.
 *
 * Lab slices (no other test uses them): workDir /run/warden-e2e-smuggle<n>, netns and veths
 * wds<n>-*, subnet 198.19.(50+n).0/24, bpffs /sys/fs/bpf/wdt-smuggle<n>, route table 2340+n,
 * ports 17040+n (HTTP proxy), 17140+n (DNS proxy), 17240+n (metrics).
 */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DemoSession, DEFAULT_DEMO, repoRoot, teardown, type DemoConfig } from '../../../demo/session.js'
import { isAlive } from '../../../demo/services.js'
import { CORPUS } from './corpus.js'
import { ClientDriver, RecordingBackend, runCase, type Rig } from './harness.js'
import { metric } from '../poll.js'

export const HARNESS_PORT = 9090

const HARNESS_POLICY = `apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "smuggling-harness"
spec:
  endpointSelector:
    matchLabels:
      app: billing-service
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: checkout-service
    toPorts:
    - ports:
      - port: "${HARNESS_PORT}"
        protocol: TCP
      rules:
        http:
        - method: "POST"
          path: "/api/v1/charge"
`

interface TapLike { teardown: (fn: () => unknown) => void }

export interface SmugglingLab {
  cfg: DemoConfig
  session: DemoSession
  rig: Rig
  billing: string
  agentPid: () => number | undefined
}

export function labConfig (n: number, policies: string): DemoConfig {
  return {
    ...DEFAULT_DEMO,
    workDir: `/run/warden-e2e-smuggle${n}`,
    nsPrefix: `wds${n}-`,
    ifPrefix: `wds${n}-`,
    subnet: `198.19.${50 + n}`,
    bpffs: `/sys/fs/bpf/wdt-smuggle${n}`,
    routeTable: 2340 + n,
    proxyPort: 17040 + n,
    dnsProxyPort: 17140 + n,
    metricsPort: 17240 + n,
    policies
  }
}

export async function smugglingLab (t: TapLike, n: number): Promise<SmugglingLab> {
  const policies = mkdtempSync(join(tmpdir(), `warden-e2e-smuggle${n}-`))
  cpSync(join(repoRoot(), 'demo', 'policies'), policies, { recursive: true })
  writeFileSync(join(policies, 'smuggling-harness.yaml'), HARNESS_POLICY)
  const cfg = labConfig(n, policies)
  t.teardown(async () => {
    await teardown(cfg)
    rmSync(policies, { recursive: true, force: true })
  })
  const session = await DemoSession.open(cfg)
  const billing = session.endpointAddress('billing-service')
  const backend = await RecordingBackend.start(t, session.ns('billing-service'), '0.0.0.0', HARNESS_PORT)
  const client = await ClientDriver.start(t, session.ns('checkout-service'), billing, HARNESS_PORT)
  // the agent's PID as the session recorded it (demo/session.ts keeps it in state.json)
  const agentPid = (): number | undefined => {
    try { return (JSON.parse(readFileSync(join(cfg.workDir, 'state.json'), 'utf8')) as { agentPid?: number }).agentPid } catch { return undefined }
  }
  const rig: Rig = {
    backend,
    client,
    idleUpstreams: async () => await metric(cfg.metricsPort, 'warden_http_upstream_idle'),
    checkAlive: async () => {
      const pid = agentPid()
      if (pid !== undefined && isAlive(pid)) return null
      const tail = session.agentLog().split('\n').slice(-5).join('\n')
      await session.startAgent() // so the rest of the corpus is still checked
      return `the agent (pid ${pid ?? '?'}) died; it was restarted. Its last log lines:\n${tail}`
    }
  }
  return { cfg, session, rig, billing, agentPid }
}

/** Access-log lines of the HTTP proxy written after offset `from` of the agent's log. */
export function accessLines (s: DemoSession, from: number): string[] {
  return s.agentLog().slice(from).split('\n').filter(l => l.includes('"http request"')).map(l => {
    try {
      const o = JSON.parse(l) as Record<string, unknown>
      return `${String(o.method)} ${String(o.path)} -> ${String(o.verdict)} ${String(o.status)}`
    } catch { return l }
  })
}

interface TapTest extends TapLike {
  test: (name: string, fn: (t: TapTest) => Promise<void>) => Promise<unknown>
  strictSame: (a: unknown, b: unknown, msg: string) => void
}

/**
 * One part of the corpus (every `parts`-th case from `part - 1`) through lab `part`: each case
 * once, and twice on one connection followed by a normal request. A case that let a forbidden
 * request through is reported with what the access log showed for it.
 */
export async function runCorpusPart (t: TapTest, part: number, parts: number): Promise<void> {
  const lab = await smugglingLab(t, part)
  let n = 0
  for (const [i, c] of CORPUS.entries()) {
    if (i % parts !== part - 1) continue
    for (const mode of ['once', 'twice'] as const) {
      let from = lab.session.agentLog().length
      let fails = await runCase(lab.rig, c, mode, `p${part}-${n++}`)
      if (fails.length > 0 && fails.every(f => f.includes('(never connected)'))) {
        // A client whose TCP connect did not complete says nothing about framing: the case ran
        // into a lab hiccup, not the proxy. Say so with the agent's last warnings, and run the
        // case once more; a second failure counts.
        await new Promise(resolve => setTimeout(resolve, 300))
        const notes = lab.session.agentLog().slice(from).split('\n').filter(l => /"level":[456]0/.test(l)).slice(-8)
        console.error(`smuggling ${c.name} (${mode}): a client never connected; the agent's last warnings:\n${notes.join('\n') || '(none)'}\nrunning the case again`)
        from = lab.session.agentLog().length
        fails = await runCase(lab.rig, c, mode, `p${part}-${n++}`)
      }
      if (fails.some(f => f.includes('forbidden request'))) {
        await new Promise(resolve => setTimeout(resolve, 300)) // the access log is flushed every 100 ms
        fails.push(`what the access log shows for it: ${accessLines(lab.session, from).join('; ') || 'nothing'}`)
      }
      t.strictSame(fails, [], `${c.name} (${mode}) [${c.source}]`)
    }
  }
}
