/**
 * Cluster stores for tests against a real etcd (no kernel): opened with short leases and quick
 * probes and closed in teardown, the state directory a temp dir of the test's own, plus the
 * endpoint and lookup shorthands the cluster tests share.
 */
import type { Test } from 'tap'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { ClusterStore, type ClusterOptions } from '../../cluster/src/cluster.js'
import { MemoryIdentityAllocator, RESERVED, type ContainerPort, type Endpoint, type RemoteState } from '../../policy-store/src/index.js'

export const WEB = ['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=shop']

export async function tempDir (t: Test, prefix = 'warden-cluster-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  return dir
}

/** A ClusterStore with the test timings (lease 3 s unless given); closed in teardown. */
export async function openTestStore (t: Test, opts: Pick<ClusterOptions, 'urls' | 'nodeName' | 'nodeIP'> & Partial<ClusterOptions>): Promise<ClusterStore> {
  const c = await ClusterStore.open({
    clusterName: 'default',
    leaseTtlSeconds: 3,
    local: new MemoryIdentityAllocator(),
    logger: pino({ level: 'silent' }),
    probeMs: 200,
    timeoutMs: 1000,
    backoffMinMs: 100,
    backoffMaxMs: 400,
    prepareTimeoutMs: 2000,
    ...opts,
    stateDir: opts.stateDir ?? await tempDir(t)
  })
  t.teardown(async () => await c.close())
  return c
}

/** Polls `check` until it holds (every 50 ms, at most `ms`); the assertion is on the final state. */
export async function until (check: () => boolean, ms = 15000): Promise<boolean> {
  const end = Date.now() + ms
  while (!check()) {
    if (Date.now() > end) return false
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return true
}

/** A local endpoint with the `web` labels (namespace shop). */
export function webEndpoint (name: string, ipv4: string, identity: number, id: number, ports: ContainerPort[] = []): Endpoint {
  return { id, name, namespace: 'shop', labels: { app: 'web' }, identityLabels: WEB, identity, ipv4, interface: `lxc-${name}`, ports, line: 1 }
}

/** The identity a remote state gives `prefix`, if any. */
export const remoteIdentity = (r: RemoteState, prefix: string): number | undefined => r.ipcache.find((e) => e.prefix === prefix)?.identity

/**
 * A (at 192.0.2.1) numbers the web labels and publishes pod web-1 (10.42.1.10); asserts that B
 * gets the pod with that identity and its labels, and A's address as remote-node. The identity.
 */
export async function publishWebPod (t: Test, a: ClusterStore, b: ClusterStore): Promise<number> {
  await a.allocator.prepare([WEB], Date.now())
  const webId = a.allocator.acquireIdentity(WEB, Date.now())
  a.publishEndpoints([webEndpoint('web-1', '10.42.1.10', webId, 1)])
  // (the pod's entry and its identity's labels come through separate watches: wait for both)
  t.ok(await until(() => remoteIdentity(b.current(), '10.42.1.10/32') === webId && b.current().identities.has(webId)), 'B has A\'s pod with its identity')
  t.strictSame(b.current().identities.get(webId), WEB, 'and the identity\'s labels')
  t.equal(remoteIdentity(b.current(), '192.0.2.1/32'), RESERVED.REMOTE_NODE, 'A\'s address is remote-node on B')
  return webId
}
