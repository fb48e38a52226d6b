// headerMatches with a `mismatch` action: the rule still matches and the proxy edits the
// forwarded request (Cilium's MismatchAction in pkg/policy/api/http.go, translated to
// cilium.HeaderMatch in pkg/envoy and applied by cilium/proxy's cilium/network_policy.cc HeaderMatches:
// LOG keeps the request as it is and records the mismatch, ADD appends the value, DELETE removes
// a header present with another value, REPLACE sets the value). A header without `mismatch`
// still has to match for the rule to allow.
import t from 'tap'
import { ADDR, RawClient, billingSnapshot, get, startBackend, startProxy, type Tap } from '../../helpers/http-proxy.js'

async function once (t: Tap, headers: Array<{ name: string, value: string | null, mismatch?: string }>, request: string): Promise<{ status: number | undefined, seen: Record<string, string | string[] | undefined>, raw: string, log: Record<string, unknown> | undefined }> {
  const be = await startBackend(t)
  const px = await startProxy(t, be.port, await billingSnapshot({ auditing: [{ method: 'GET', path: '/api/v1/invoices/.*', headers }] }))
  const c = await RawClient.connect(t, px.port, ADDR.AUDITING)
  c.write(request)
  const r = await c.response()
  return { status: r?.status, seen: be.requests[0]?.headers ?? {}, raw: be.received(), log: px.logs.find((l) => l.msg === 'http request') }
}

t.test('LOG: a mismatch is allowed, forwarded unchanged, and named in the access log', async (t) => {
  const r = await once(t, [{ name: 'X-Tenant', value: 'blue', mismatch: 'LOG' }], get('/api/v1/invoices/1', 'billing:8080', 'X-Tenant: red\r\n'))
  t.equal(r.status, 200)
  t.equal(r.seen['x-tenant'], 'red', 'unchanged')
  t.equal(r.log?.headerActions, 'LOG x-tenant')
  const ok = await once(t, [{ name: 'X-Tenant', value: 'blue', mismatch: 'LOG' }], get('/api/v1/invoices/1', 'billing:8080', 'X-Tenant: blue\r\n'))
  t.equal(ok.log?.headerActions, undefined, 'a match logs no action')
})

t.test('ADD: the value is appended to a missing or different header', async (t) => {
  const missing = await once(t, [{ name: 'X-Tenant', value: 'blue', mismatch: 'ADD' }], get('/api/v1/invoices/1'))
  t.equal(missing.status, 200)
  t.equal(missing.seen['x-tenant'], 'blue')
  const other = await once(t, [{ name: 'X-Tenant', value: 'blue', mismatch: 'ADD' }], get('/api/v1/invoices/1', 'billing:8080', 'X-Tenant: red\r\n'))
  t.equal(other.seen['x-tenant'], 'red, blue', 'kept and added (a multi-valued header)')
  t.equal(other.log?.headerActions, 'ADD x-tenant')
})

t.test('REPLACE: the header ends with exactly the policy value', async (t) => {
  const r = await once(t, [{ name: 'X-Tenant', value: 'blue', mismatch: 'REPLACE' }], get('/api/v1/invoices/1', 'billing:8080', 'X-Tenant: red\r\nx-tenant: green\r\n'))
  t.equal(r.status, 200)
  t.equal(r.seen['x-tenant'], 'blue')
  t.notMatch(r.raw, /red|green/, 'no old value reaches the backend')
})

t.test('DELETE: a header with another value is removed; an absent one changes nothing', async (t) => {
  const r = await once(t, [{ name: 'X-Tenant', value: 'blue', mismatch: 'DELETE' }], get('/api/v1/invoices/1', 'billing:8080', 'X-Tenant: red\r\n'))
  t.equal(r.status, 200)
  t.equal(r.seen['x-tenant'], undefined)
  t.equal(r.log?.headerActions, 'DELETE x-tenant')
  const absent = await once(t, [{ name: 'X-Tenant', value: 'blue', mismatch: 'DELETE' }], get('/api/v1/invoices/1'))
  t.equal(absent.status, 200)
  t.equal(absent.log?.headerActions, undefined, 'nothing to delete, nothing logged')
  const kept = await once(t, [{ name: 'X-Tenant', value: 'blue', mismatch: 'DELETE' }], get('/api/v1/invoices/1', 'billing:8080', 'X-Tenant: blue\r\n'))
  t.equal(kept.seen['x-tenant'], 'blue', 'a matching header stays')
})

t.test('actions run only when the rest of the rule matches; a plain headerMatch still denies', async (t) => {
  const denied = await once(t, [{ name: 'X-Tenant', value: 'blue', mismatch: 'ADD' }], get('/api/v1/charge'))
  t.equal(denied.status, 403, 'the path does not match: denied, nothing added')
  const strict = await once(t, [{ name: 'X-Tenant', value: 'blue' }], get('/api/v1/invoices/1', 'billing:8080', 'X-Tenant: red\r\n'))
  t.equal(strict.status, 403, 'without mismatch a different value fails the rule')
})
