// `warden uninstall --bpffs DIR` runs as root with a path an operator typed: it removes only what
// warden made, refuses a directory that is not a warden pin directory before touching anything,
// and when an interface cannot be detached it keeps the record so that a second run finishes.
// Needs root and eBPF (CI runs as root): namespaces wdp12-*, veths wdp12*, pins under
// /sys/fs/bpf/wdp12, route table 2112; all removed in teardown.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createMapRef, objGet, RawMap } from 'bpf'
import { datapathLab, isRoot } from '../helpers/lab-fixture.js'
import { openEntries } from '../helpers/lab-snapshot.js'
import { uninstall } from '../../redirect-bpf/src/index.js'

function filters (iface: string, hook: string): string {
  return execFileSync('tc', ['filter', 'show', 'dev', iface, hook], { encoding: 'utf8' }).trim()
}
function attachRecords (bpffs: string): number {
  const m = new RawMap(createMapRef(objGet(join(bpffs, 'l7p_attach')), { transfer: true }))
  try { return [...m.entries()].length } finally { m.ref.close() }
}

t.test('a directory that is not on bpffs is refused and left as it was', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'warden-uninstall-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'precious'), 'x')
  await t.rejects(uninstall({ bpffs: dir, routeTable: 2112 }), { code: 'WARDEN_ERR_PIN_DIR', message: /not on a bpf filesystem/ })
  t.ok(existsSync(join(dir, 'precious')), 'nothing removed')
})

t.test('a directory that does not exist: nothing to do', async (t) => {
  await t.resolves(uninstall({ bpffs: '/sys/fs/bpf/wdp12-never-made', routeTable: 2112 }))
})

t.test('pin directories of a real datapath', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 12, ['a', 'b'])
  const bpffs = lab.opts.bpffs
  await lab.apply([...openEntries(100), ...openEntries(101)])
  await lab.dp.close()
  const iface = lab.eps[0].iface

  await t.test('holding another tool\'s pin: refused before anything is removed', async (t) => {
    const foreign = join(bpffs, 'other-tool')
    mkdirSync(foreign)
    try {
      await t.rejects(uninstall({ bpffs, routeTable: 2112 }), { code: 'WARDEN_ERR_PIN_DIR', message: /other-tool/ })
      t.ok(existsSync(join(bpffs, 'l7p_ct')), 'warden pins kept')
      t.match(filters(iface, 'ingress'), /from_workload/, 'filters still attached')
    } finally {
      rmdirSync(foreign)
    }
  })

  await t.test('a link to the pin directory is refused', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'warden-uninstall-link-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    symlinkSync(bpffs, join(dir, 'pins'))
    await t.rejects(uninstall({ bpffs: join(dir, 'pins'), routeTable: 2112 }), { code: 'WARDEN_ERR_PIN_DIR', message: /not a directory/ })
    t.ok(existsSync(join(bpffs, 'l7p_ct')), 'warden pins kept')
  })

  await t.test('an interface that cannot be detached keeps its record; a second run finishes', async (t) => {
    // a tc that fails for one interface, as a busy or broken netlink would
    const bin = mkdtempSync(join(tmpdir(), 'warden-uninstall-tc-'))
    t.teardown(() => rmSync(bin, { recursive: true, force: true }))
    const tc = execFileSync('sh', ['-c', 'command -v tc || echo /usr/sbin/tc'], { encoding: 'utf8' }).trim()
    writeFileSync(join(bin, 'tc'), `#!/bin/sh
case "$* " in *' del dev ${iface} '*) echo 'RTNETLINK answers: Operation not permitted' >&2; exit 2;; esac
exec ${tc} "$@"
`)
    chmodSync(join(bin, 'tc'), 0o755)
    const path = process.env.PATH
    process.env.PATH = `${bin}:${path ?? ''}`
    try {
      await t.rejects(uninstall({ bpffs, routeTable: 2112 }), { code: 'WARDEN_ERR_DETACH', message: /1 interface/ })
    } finally {
      process.env.PATH = path
    }
    t.equal(attachRecords(bpffs), 1, 'the failed interface\'s record is kept, the other one is gone')
    t.match(filters(iface, 'ingress'), /from_workload/, 'its filter is still there')
    t.equal(filters(lab.eps[1].iface, 'ingress'), '', 'the other interface was detached')

    await uninstall({ bpffs, routeTable: 2112 })
    t.equal(filters(iface, 'ingress'), '', 'detached by the second run')
    t.equal(filters(iface, 'egress'), '')
    t.notOk(existsSync(bpffs), 'pins and directory gone')
  })
})
