/**
 * A real etcd for a test: its own ports (pairs in 23790-23799 and 23850-23869, one pair per test
 * file, so files run side by side; subtests of one file run in turn and may reuse it), a temp
 * data directory, and both removed in teardown even when the test fails. Taken: 23790
 * test/cluster/allocator, 23792 test/cluster/cluster, 23794 test/cluster/mirror, 23798
 * test/e2e/cluster-agent, 23850 test/cluster/endpoint-records, 23852 test/e2e/cluster-init.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { EtcdProcess } from '../../lab/etcd.js'

interface Teardown { teardown: (fn: () => void | Promise<void>) => void }

/** `clientPort` must be even and in 23790..23798 or 23850..23868; the peer port is the next one. */
export async function startEtcd (t: Teardown, clientPort: number): Promise<EtcdProcess> {
  const ours = (clientPort >= 23790 && clientPort <= 23798) || (clientPort >= 23850 && clientPort <= 23868)
  if (!ours || clientPort % 2 !== 0) throw new Error(`etcd test port ${clientPort} is not one of this project's (23790..23798 or 23850..23868, even)`)
  const dir = await mkdtemp(join(tmpdir(), 'wdk-etcd-'))
  const etcd = new EtcdProcess({ name: `wdk${clientPort}`, dataDir: join(dir, 'data'), clientPort, peerPort: clientPort + 1 })
  t.teardown(async () => {
    await etcd.stop()
    await rm(dir, { recursive: true, force: true })
  })
  await etcd.start()
  return etcd
}
