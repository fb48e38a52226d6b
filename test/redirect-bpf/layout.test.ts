// Kernel/userspace struct layouts: the TS codecs against byte fixtures and against the C
// header itself (compiled for the host with clang: offsets and sizes printed by C).
import t from 'tap'
import fc from 'fast-check'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  SIZE, REASONS, encodePolicyKey, decodePolicyKey, encodeIpcacheKey, decodeIpcacheKey, encodeCtKey,
  decodeCtKey, encodeEndpoint, encodeConfig, decodeEvent, COUNTER_SLOTS, CT_REPLIED, CT_SRC_LOCAL,
  CT_DST_LOCAL, CT_PROXY_UPSTREAM, CT_AUDIT, FEAT_HOST_ROUTING
} from '../../redirect-bpf/src/layout.js'
import { compilePolicy, policyRecords, portBlocks } from '../../redirect-bpf/src/policy.js'
import { toFlowEvent } from '../../redirect-bpf/src/events.js'
import { ICMP_PORT_BASE } from '../../policy-store/src/types.js'
import { entry } from '../helpers/lab-snapshot.js'

t.test('sizes and offsets match l7p.h as the C compiler sees it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wdp-layout-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const fields: Array<[string, string]> = [
    ['l7p_policy_key', 'identity'], ['l7p_policy_key', 'port'], ['l7p_ct_key', 'proto'],
    ['l7p_ct_entry', 'flags'], ['l7p_event', 'reason'], ['l7p_event', 'endpoint_id'],
    ['l7p_config', 'prog_tag'], ['l7p_config', 'features'], ['l7p_endpoint', 'endpoint_id']
  ]
  const structs = ['l7p_config', 'l7p_endpoint', 'l7p_attach', 'l7p_ipcache_key', 'l7p_ipcache_value',
    'l7p_policy_key', 'l7p_policy_value', 'l7p_ct_key', 'l7p_ct_entry', 'l7p_event', 'l7p_fib_key', 'l7p_fib_value']
  const src = `#include <stdio.h>\n#include <stddef.h>\n#include "${process.cwd()}/redirect-bpf/bpf/l7p.h"\nint main(void){\n` +
    structs.map((s) => `printf("${s} %zu\\n", sizeof(struct ${s}));`).join('\n') + '\n' +
    fields.map(([s, f]) => `printf("${s}.${f} %zu\\n", offsetof(struct ${s}, ${f}));`).join('\n') +
    `\nprintf("L7P_R_MAX %d\\n", L7P_R_MAX);\nprintf("L7P_COUNTER_SLOTS %d\\n", L7P_COUNTER_SLOTS);\n` +
    ['L7P_CT_REPLIED', 'L7P_CT_SRC_LOCAL', 'L7P_CT_DST_LOCAL', 'L7P_CT_PROXY_UPSTREAM', 'L7P_CT_AUDIT', 'L7P_FEAT_HOST_ROUTING', 'L7P_ICMP_PORT_BASE'].map((c) => `printf("${c} %d\\n", ${c});`).join('\n') +
    '\nreturn 0;}\n'
  writeFileSync(join(dir, 'l.c'), src)
  execFileSync('clang', ['-I/usr/include/x86_64-linux-gnu', '-o', join(dir, 'l'), join(dir, 'l.c')])
  const got = Object.fromEntries(execFileSync(join(dir, 'l'), { encoding: 'utf8' }).trim().split('\n').map((l) => l.split(' ') as [string, string]))
  const names: Record<string, number> = {
    l7p_config: SIZE.config, l7p_endpoint: SIZE.endpoint, l7p_attach: SIZE.attach, l7p_ipcache_key: SIZE.ipcacheKey,
    l7p_ipcache_value: SIZE.ipcacheValue, l7p_policy_key: SIZE.policyKey, l7p_policy_value: SIZE.policyValue,
    l7p_ct_key: SIZE.ctKey, l7p_ct_entry: SIZE.ctEntry,
    l7p_event: SIZE.event, l7p_fib_key: SIZE.fibKey, l7p_fib_value: SIZE.fibValue
  }
  for (const [s, n] of Object.entries(names)) t.equal(Number(got[s]), n, `sizeof ${s}`)
  // offsets the TS codecs use
  t.equal(Number(got['l7p_policy_key.identity']), 8)
  t.equal(Number(got['l7p_policy_key.port']), 12)
  t.equal(Number(got['l7p_ct_key.proto']), 12)
  t.equal(Number(got['l7p_ct_entry.flags']), 18)
  t.equal(Number(got['l7p_event.endpoint_id']), 32)
  t.equal(Number(got['l7p_event.reason']), 36)
  t.equal(Number(got['l7p_config.prog_tag']), 16)
  t.equal(Number(got['l7p_config.features']), 12)
  t.equal(Number(got['l7p_endpoint.endpoint_id']), 8)
  t.equal(Number(got.L7P_R_MAX), REASONS.length, 'one counter name per reason')
  t.equal(Number(got.L7P_COUNTER_SLOTS), COUNTER_SLOTS, 'counter slots')
  t.strictSame([got.L7P_CT_REPLIED, got.L7P_CT_SRC_LOCAL, got.L7P_CT_DST_LOCAL, got.L7P_CT_PROXY_UPSTREAM, got.L7P_CT_AUDIT, got.L7P_FEAT_HOST_ROUTING, got.L7P_ICMP_PORT_BASE].map(Number),
    [CT_REPLIED, CT_SRC_LOCAL, CT_DST_LOCAL, CT_PROXY_UPSTREAM, CT_AUDIT, FEAT_HOST_ROUTING, ICMP_PORT_BASE], 'flag values')
})

t.test('keys encode to the fixture bytes', async (t) => {
  const pk = encodePolicyKey(Buffer.alloc(SIZE.policyKey), { endpointId: 0x0102, direction: 1, protocol: 6, identity: 0x01000003, port: 8080, portPrefix: 16 })
  t.equal(pk.toString('hex'), '50000000' + '0201' + '01' + '06' + '03000001' + '1f90' + '0000')
  t.strictSame(decodePolicyKey(pk), { endpointId: 0x0102, direction: 1, protocol: 6, identity: 0x01000003, port: 8080, portPrefix: 16 })
  const ik = encodeIpcacheKey(Buffer.alloc(SIZE.ipcacheKey), '10.42.7.9/16')
  t.equal(ik.toString('hex'), '10000000' + '0a2a0000', 'host bits masked')
  t.equal(decodeIpcacheKey(ik), '10.42.0.0/16')
  const ck = encodeCtKey(Buffer.alloc(SIZE.ctKey), { saddr: '10.0.0.1', daddr: '10.0.0.2', sport: 40000, dport: 80, proto: 17 })
  t.equal(ck.toString('hex'), '0a000001' + '0a000002' + '9c40' + '0050' + '11000000')
  t.strictSame(decodeCtKey(ck), { saddr: '10.0.0.1', daddr: '10.0.0.2', sport: 40000, dport: 80, proto: 17 })
  t.equal(encodeEndpoint(Buffer.alloc(SIZE.endpoint), { identity: 300, ipv4: '1.2.3.4', endpointId: 7 }).toString('hex'), '2c010000' + '01020304' + '0700' + '0000')
  t.equal(encodeConfig(Buffer.alloc(SIZE.config), { proxyPort: 15001, dnsProxyPort: 15053, routeTable: 2004, flags: 3, features: 1, progTag: 1n }).toString('hex'),
    '993a' + 'cd3a' + 'd4070000' + '03000000' + '01000000' + '0100000000000000')
  t.throws(() => encodeCtKey(Buffer.alloc(16), { saddr: '1.2.3', daddr: '1.1.1.1', sport: 1, dport: 1, proto: 6 }), TypeError)
})

t.test('events decode from the fixture bytes', async (t) => {
  const b = Buffer.from('e803000000000000' + 'c6121001' + 'c6121002' + '9c40' + '1f90' + 'e8030000' + 'e9030000' + '0b000000' + '6400' + '06' + '02' + '05' + '01' + '0000', 'hex')
  t.equal(b.length, SIZE.event)
  const raw = decodeEvent(b)
  const ev = toFlowEvent(raw, 10_000, 1000n + 2_000_000n)
  t.strictSame(ev, {
    time: 10_000 - 2, endpointId: 100, srcIdentity: 1000, dstIdentity: 1001, srcIp: '198.18.16.1', dstIp: '198.18.16.2',
    srcPort: 40000, dstPort: 8080, protocol: 6, verdict: 'dropped', reason: 'drop_policy_deny', direction: 'egress', ifindex: 11
  })
  t.match(toFlowEvent({ ...raw, proto: 132 }), { protocol: 132, srcPort: 40000, dstPort: 8080 }, 'SCTP events keep their ports')
  t.match(toFlowEvent({ ...raw, proto: 47 }), { protocol: 47, srcPort: 0, dstPort: 0 }, 'a protocol without ports has none')
})

t.test('port ranges become exact aligned blocks', async (t) => {
  t.strictSame(portBlocks(80, 80), [[80, 16]])
  t.strictSame(portBlocks(1024, 65535), [[1024, 6], [2048, 5], [4096, 4], [8192, 3], [16384, 2], [32768, 1]])
  fc.assert(fc.property(fc.integer({ min: 1, max: 65535 }), fc.integer({ min: 0, max: 65535 }), (a, span) => {
    const lo = a
    const hi = Math.min(65535, a + span)
    const blocks = portBlocks(lo, hi)
    let next = lo
    for (const [start, plen] of blocks) {
      const size = 2 ** (16 - plen)
      if (start !== next || start % size !== 0) return false
      next = start + size
    }
    return next === hi + 1 && blocks.length <= 30
  }))
})

t.test('colliding entries keep the strongest verdict; ports, any-port and ranges compile', async (t) => {
  const m = compilePolicy([
    entry(1, 0, 5, 6, 80, 'allow', 90),
    entry(1, 0, 5, 6, 80, 'deny'),
    // port 88 written with and without endPort: two entries on one key
    entry(1, 0, 5, 6, 88, 'redirect-http', 88),
    entry(1, 0, 5, 6, 88, 'allow'),
    entry(1, 1, 0, 0, 0, 'allow')
  ])
  const byKey = new Map(policyRecords(m).map((r) => [JSON.stringify(decodePolicyKey(r.key)), r.verdict]))
  t.equal(byKey.get(JSON.stringify({ portPrefix: 16, endpointId: 1, direction: 0, protocol: 6, identity: 5, port: 80 })), 2, 'deny wins over the range allow')
  t.equal(byKey.get(JSON.stringify({ portPrefix: 16, endpointId: 1, direction: 0, protocol: 6, identity: 5, port: 88 })), 3, 'redirect kept over allow')
  t.equal(byKey.get(JSON.stringify({ portPrefix: 0, endpointId: 1, direction: 1, protocol: 0, identity: 0, port: 0 })), 1)
  t.throws(() => compilePolicy([{ ...entry(1, 0, 0, 6, 0, 'allow'), endPort: 5 }]), { code: 'WARDEN_ERR_POLICY_ENTRY' })
})
