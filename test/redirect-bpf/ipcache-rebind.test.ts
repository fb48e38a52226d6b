// A start killed part-way through an upgrade can leave the pinned programs bound to an ipcache
// whose pin was replaced: they read a map nobody writes. The next start sees it (the programs'
// map ids) and reloads them against the pinned maps.
// Needs root and eBPF (CI runs as root): namespaces wdp101-*, veths wdp101*, pins under
// /sys/fs/bpf/wdp101, route table 2201; all removed in teardown.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { rmSync } from 'node:fs'
import { createMapRef, objGet, RawMap } from 'bpf'
import { datapathLab, isRoot } from '../helpers/lab-fixture.js'
import { connect, startServer } from '../helpers/lab-net.js'
import { entry, openEntries, snapshot } from '../helpers/lab-snapshot.js'
import { DEFAULT_IPCACHE_MAX_ENTRIES } from '../../redirect-bpf/src/index.js'
import { encodeIpcacheKey, encodeIpcacheValue, SIZE } from '../../redirect-bpf/src/layout.js'

const TCP = 6
const IN = 0
const OUT = 1

function bpftool (...args: string[]): unknown {
  return JSON.parse(execFileSync('bpftool', ['-j', ...args], { encoding: 'utf8' }))
}

t.test('programs bound to an ipcache no longer pinned are reloaded against the pinned one', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 101, ['a', 'b', 'c'])
  const [A, B, C] = [100, 101, 102]
  const s = await startServer(lab.ns('b'), 'tcp', 8080, 'b')
  t.teardown(s.stop)
  // c may send only to identity 1000 (a) on 8080; a destination's identity comes from the
  // ipcache, so c -> b (1001) is dropped by c's egress
  const policy = [...openEntries(A), ...openEntries(B), entry(C, OUT, 1000, TCP, 8080, 'allow'), entry(C, IN, 0, 0, 0, 'allow')]
  await lab.dp.apply(snapshot(lab.eps, policy))
  t.strictSame(await connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080, 1000), { ok: false, error: 'timeout' }, 'c is dropped before')
  await lab.dp.close()

  // The pins as a kill left them: l7p_ipcache is a new map (here: one where b has a's identity),
  // progs/ still holds the programs of the old map, whose pin is gone.
  const pin = `${lab.opts.bpffs}/l7p_ipcache`
  const old = createMapRef(objGet(pin), { transfer: true })
  const entries = [...new RawMap(old).entries()].map(([k, v]) => [Buffer.from(k), Buffer.from(v)] as const)
  old.close()
  rmSync(pin)
  execFileSync('bpftool', ['map', 'create', pin, 'type', 'lpm_trie', 'key', '8', 'value', '8',
    'entries', String(DEFAULT_IPCACHE_MAX_ENTRIES), 'name', 'l7p_ipcache', 'flags', '1'])
  const ref = createMapRef(objGet(pin), { transfer: true })
  const fresh = new RawMap(ref)
  for (const [k, v] of entries) fresh.set(k, v)
  fresh.set(encodeIpcacheKey(Buffer.alloc(SIZE.ipcacheKey), `${lab.ip('b')}/32`),
    encodeIpcacheValue(Buffer.alloc(SIZE.ipcacheValue), { identity: 1000, endpointId: B }))
  ref.close()
  const pinned = (bpftool('map', 'show', 'pinned', pin) as { id: number }).id
  const progIds = (): number[] => (bpftool('prog', 'show', 'pinned', `${lab.opts.bpffs}/progs/from_workload`) as { map_ids: number[] }).map_ids
  t.notOk(progIds().includes(pinned), 'the programs use another map than the pinned one')

  await lab.reopen()
  t.ok(progIds().includes(pinned), 'reopened: the programs use the pinned ipcache')
  // before any apply (which would rewrite b's entry): only the pinned map says b is 1000
  t.match(await connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080), { ok: true }, 'the attached filters read the pinned map')
  await lab.dp.apply(snapshot(lab.eps, policy))
  t.strictSame(await connect(lab.ns('c'), 'tcp', lab.ip('b'), 8080, 1000), { ok: false, error: 'timeout' }, 'and the agent\'s writes to it are enforced')
  t.match(await connect(lab.ns('a'), 'tcp', lab.ip('b'), 8080), { ok: true })
})
