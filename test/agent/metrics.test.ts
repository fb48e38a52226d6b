// /metrics (agent/metrics.ts) and the HTTP workers' summed counters (agent/workers/pool.ts):
// what Prometheus reads. Pure functions, no root needed.
import t from 'tap'
import { metricName, renderMetrics } from '../../agent/metrics.js'
import { WorkerCounters } from '../../agent/workers/pool.js'
import { HTTP_GAUGES } from '../../proxy/src/http/index.js'
import { DNS_GAUGES } from '../../proxy/src/dns/index.js'
import { billingSnapshot, startProxy as startHttpProxy } from '../helpers/http-proxy.js'
import { makeSnapshot, startProxy as startDnsProxy } from '../helpers/dns.js'

t.test('counters are typed counter and end in _total, gauges are gauges, names are snake_case', async t => {
  const text = renderMetrics({
    warden_dns_spoofedAnswers: 3,
    warden_dns_inFlight: 2,
    warden_http_connections_total: 7,
    warden_http_connections_active: 1,
    warden_datapath_drop_policy: 5,
    warden_policy_version: 9,
    warden_broken: NaN
  }, new Set(['warden_dns_inFlight', 'warden_http_connections_active', 'warden_policy_version']))
  t.equal(text, [
    '# TYPE warden_datapath_drop_policy_total counter', 'warden_datapath_drop_policy_total 5',
    '# TYPE warden_dns_in_flight gauge', 'warden_dns_in_flight 2',
    '# TYPE warden_dns_spoofed_answers_total counter', 'warden_dns_spoofed_answers_total 3',
    '# TYPE warden_http_connections_active gauge', 'warden_http_connections_active 1',
    '# TYPE warden_http_connections_total counter', 'warden_http_connections_total 7',
    '# TYPE warden_policy_version gauge', 'warden_policy_version 9',
    ''
  ].join('\n'), 'sorted, one TYPE line each, a value that is not a number left out, no _total_total')
  t.equal(metricName('warden_dns_cachedIps'), 'warden_dns_cached_ips')
  t.equal(metricName('warden_x-y.z'), 'warden_x_y_z')
})

t.test('labelled series: one TYPE line per family, the family named in the gauges', async t => {
  const text = renderMetrics({
    'warden_http_worker_policy_version{worker="1"}': 7,
    'warden_http_worker_policy_version{worker="0"}': 8,
    'warden_http_worker_restarts{worker="0"}': 2,
    warden_policy_version: 8
  }, new Set(['warden_http_worker_policy_version', 'warden_policy_version']))
  t.equal(text, [
    '# TYPE warden_http_worker_policy_version gauge',
    'warden_http_worker_policy_version{worker="0"} 8',
    'warden_http_worker_policy_version{worker="1"} 7',
    '# TYPE warden_http_worker_restarts_total counter',
    'warden_http_worker_restarts_total{worker="0"} 2',
    '# TYPE warden_policy_version gauge', 'warden_policy_version 8',
    ''
  ].join('\n'), 'the labels stay as written; a counter family gets _total before them')
})

t.test('the gauges the modules declare are values they report', async t => {
  const http = await startHttpProxy(t, 9, await billingSnapshot())
  const httpKeys = Object.keys(http.proxy.metrics())
  for (const g of HTTP_GAUGES) t.ok(httpKeys.includes(g), `http: ${g}`)
  const dns = await startDnsProxy(t, { snapshot: makeSnapshot({ endpoints: [], dns: [], fqdn: [] }), upstream: { ip: '127.0.53.1', port: 9 } })
  const dnsKeys = Object.keys(dns.proxy.metrics())
  for (const g of DNS_GAUGES) t.ok(dnsKeys.includes(g), `dns: ${g}`)
})

t.test('a dead worker\'s counters stay in the sum; its gauges go; a late report is ignored', async t => {
  const c = new WorkerCounters(new Set(['connections_active']))
  c.report(11, { requests: 10, connections_active: 2 })
  c.report(12, { requests: 5, connections_active: 1 })
  t.strictSame(c.sum(), { requests: 15, connections_active: 3 })
  c.retire(11)
  t.strictSame(c.sum(), { requests: 15, connections_active: 1 }, 'no step back when worker 11 dies')
  c.report(11, { requests: 12, connections_active: 2 })
  t.strictSame(c.sum(), { requests: 15, connections_active: 1 }, 'a report of a retired thread does not count twice')
  c.report(13, { requests: 1, connections_active: 1 }) // its replacement counts from 0
  t.strictSame(c.sum(), { requests: 16, connections_active: 2 })
  c.retire(99)
  t.strictSame(c.sum(), { requests: 16, connections_active: 2 }, 'retiring a thread that never reported changes nothing')
})
