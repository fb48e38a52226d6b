// The namespace lab (what a CNI would do). Needs root (CI runs as root): namespaces
// wdp4-*, veths wdp4*, 198.18.20.0/24; all removed in teardown.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { labDown, labLeftovers, labUp, type LabSpec } from '../../lab/lab.js'
import { labSpecFromFiles } from '../../lab/endpoints-file.js'
import { connect, startServer } from '../helpers/lab-net.js'
import { isRoot } from '../helpers/lab-fixture.js'

t.test('lab up and down', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wdp4-'))
  writeFileSync(join(dir, 'endpoints.yaml'), `endpoints:
  - name: web
    namespace: shop
    labels: {app: web}
    ipv4: 198.18.20.10
    interface: wdp4web
  - name: db
    labels: {app: db}
    ipv4: 198.18.20.11
    interface: wdp4db
`)
  writeFileSync(join(dir, 'hosts.yaml'), `hosts:
  - name: ext
    ipv4: 198.18.20.50
    interface: wdp4ext
    hostnames: [api.example.com]
`)
  const spec: LabSpec = labSpecFromFiles(join(dir, 'endpoints.yaml'), { hostsFile: join(dir, 'hosts.yaml'), prefix: 'wdp4-', dns: '198.18.20.53' })
  t.teardown(async () => {
    await labDown(spec)
    rmSync(dir, { recursive: true, force: true })
  })

  await t.test('up: namespaces reach each other by address, with their own hosts and resolv.conf', async (t) => {
    await labUp(spec)
    const hosts = readFileSync('/etc/netns/wdp4-web/hosts', 'utf8')
    t.match(hosts, /198\.18\.20\.11 db db\.default db\.default\.svc\.cluster\.local/)
    t.match(hosts, /198\.18\.20\.50 ext api\.example\.com/)
    t.equal(readFileSync('/etc/netns/wdp4-ext/resolv.conf', 'utf8').split('\n')[0], 'nameserver 198.18.20.53')
    const s = await startServer('wdp4-db', 'tcp', 7070, 'db')
    t.teardown(s.stop)
    t.match(await connect('wdp4-web', 'tcp', '198.18.20.11', 7070), { ok: true, reply: { from: 'db', remote: /^198\.18\.20\.10:/ } })
    t.match(await connect('wdp4-ext', 'tcp', 'db', 7070), { ok: true }, 'names resolve from the namespace hosts file')
    t.equal(readFileSync('/proc/sys/net/ipv4/conf/wdp4web/forwarding', 'utf8').trim(), '1', 'forwarding on the lab veth')
  })

  await t.test('down removes everything and is idempotent', async (t) => {
    await labDown(spec)
    t.strictSame(await labLeftovers(spec), [])
    await labDown(spec)
    t.strictSame(await labLeftovers(spec), [])
  })

  await t.test('a failed up leaves nothing behind; an interface it did not make is refused', async (t) => {
    // the third namespace name is too long for the kernel: ip netns add fails mid-way
    const bad: LabSpec = { prefix: 'wdp4-', hosts: [...spec.hosts, { name: 'x'.repeat(300), ipv4: '198.18.20.12', hostIf: 'wdp4bad' }] }
    await t.rejects(labUp(bad), { code: 'WARDEN_ERR_LAB' })
    t.strictSame(await labLeftovers(spec), [])
    execFileSync('ip', ['link', 'add', 'wdp4own', 'type', 'veth', 'peer', 'name', 'wdp4ownp'])
    t.teardown(() => { try { execFileSync('ip', ['link', 'del', 'wdp4own']) } catch { /* the test removed it */ } })
    const taken: LabSpec = { prefix: 'wdp4-', hosts: [{ name: 'taken', ipv4: '198.18.20.13', hostIf: 'wdp4own' }] }
    await t.rejects(labUp(taken), { code: 'WARDEN_ERR_LAB', message: /already exists/ })
    t.ok(existsSync('/sys/class/net/wdp4own'), 'the existing interface is untouched')
  })
})
