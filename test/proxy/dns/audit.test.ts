// Audit mode in the DNS proxy, against a real dnsmasq on 127.0.53.31 (no root needed; loopback):
// a query policy would refuse is forwarded and answered, logged and reported as `audit`.
import t from 'tap'
import type { Snapshot } from '../../../policy-store/src/index.js'
import type { L7Decision } from '../../../proxy/src/decision.js'
import { aRecords, makeSnapshot, query, startDnsmasq, startProxy } from '../../helpers/dns.js'

const EXPORTER = '127.0.53.41'
const DNS_IP = '127.0.53.31'

function withAudit (snap: Snapshot): Snapshot {
  return { ...snap, endpoints: snap.endpoints.map((e) => ({ ...e, audit: true as const })) }
}

t.test('a refused name is forwarded when the endpoint audits, refused when it does not', async (t) => {
  const dns = await startDnsmasq(t, { ip: DNS_IP, hosts: { 'api.github.com': ['198.18.53.10'], 'www.google.com': ['198.18.53.20'] } })
  const enforcing = makeSnapshot({ endpoints: [{ id: 7, name: 'data-exporter', ipv4: EXPORTER }], dns: [{ endpointId: 7, port: dns.port, matchNames: ['api.github.com'] }] })
  const decisions: L7Decision[] = []
  const h = await startProxy(t, { snapshot: withAudit(enforcing), upstream: dns, onDecision: (d) => decisions.push(d) })

  const ans = await query(h.udp, 'www.google.com', { from: EXPORTER })
  t.equal(ans.rcode, 'NOERROR', 'audited: answered by the server')
  t.strictSame(aRecords(ans), ['198.18.53.20'])
  t.ok(h.logs.some((l) => l.msg === 'dns query' && l.verdict === 'audit' && l.reason === 'no-rule-matches' && l.level === 40), 'the would-be refusal at warn')
  t.ok(h.logs.some((l) => l.msg === 'dns query' && l.verdict === 'audit' && l.rcode === 'NOERROR'), 'the answer line says audit')
  t.match(h.proxy.metrics(), { audited: 1, refused: 0, allowed: 0 })
  t.match(decisions[0], { type: 'dns', verdict: 'audit', reason: 'no-rule-matches', dns: { name: 'www.google.com.' }, rule: { file: 'test.yaml' } })

  h.setSnapshot({ ...enforcing, version: 2 })
  const refused = await query(h.udp, 'www.google.com', { from: EXPORTER })
  t.equal(refused.rcode, 'REFUSED', 'audit off: the next query is refused')
  t.equal(decisions[1]?.verdict, 'denied')
})
