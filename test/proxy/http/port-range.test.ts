// HTTP rules on a 4,096-port range through the proxy (Cilium's connectivity-test shape, `port:
// "4096"`, `endPort: 8191`; pkg/policy/api/l4.go, PortProtocol.EndPort): the one L7 table of the
// range decides a request whatever port in it the client dialled, and a port outside it has no
// table (fail closed, no-l7-table).
import t from 'tap'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { loadSnapshot, type Snapshot } from '../../../policy-store/src/index.js'
import { ADDR, RawClient, get, startBackend, startProxy } from '../../helpers/http-proxy.js'

const ENDPOINTS = fileURLToPath(new URL('../../fixtures/http-proxy/endpoints.yaml', import.meta.url))
const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: echo-ingress-l7-http-range}
spec:
  endpointSelector: {matchLabels: {app: billing-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: auditing-service}}]
    toPorts:
    - ports: [{port: "4096", endPort: 8191, protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public$"}]
`

async function rangeSnapshot (): Promise<Snapshot> {
  const dir = await mkdtemp(join(tmpdir(), 'wdq-range-'))
  try {
    await writeFile(join(dir, 'p.yaml'), POLICY)
    const { snapshot, errors } = await loadSnapshot({ policies: dir, endpoints: ENDPOINTS, watch: false })
    if (errors.length > 0) throw new Error(JSON.stringify(errors))
    return snapshot
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

t.test('one table decides every port of the range', async (t) => {
  const be = await startBackend(t)
  const snap = await rangeSnapshot()
  for (const [port, path, status] of [[4096, '/public', 200], [6000, '/public', 200], [8191, '/public', 200], [6000, '/private', 403], [8192, '/public', 403]] as const) {
    const px = await startProxy(t, be.port, snap, {}, { dstPort: port })
    const c = await RawClient.connect(t, px.port, ADDR.AUDITING)
    c.write(get(path))
    t.equal((await c.response())?.status, status, `${path} to port ${port}`)
    if (port === 8192) t.match(px.logs.find((l) => l.msg === 'http request'), { reason: 'no-l7-table' }, 'outside the range: no table')
  }
  t.strictSame(be.requests.map((r) => r.url), ['/public', '/public', '/public'], 'only the allowed requests reached the backend')
})
