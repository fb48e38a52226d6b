// Datapath.hasConnection against a CT map filled by hand: more entries than one batch holds,
// live and expired ones, and one dump per turn of the event loop.
// Needs root: netns wdp20-*, pins /sys/fs/bpf/wdp20, table 2120; removed in teardown.
import t from 'tap'
import { createMapRef, objGet, RawMap } from 'bpf'
import { datapathLab, isRoot } from '../helpers/lab-fixture.js'
import { encodeCtEntry, encodeCtKey, SIZE } from '../../redirect-bpf/src/layout.js'
import { monotonicNowNs } from '../../redirect-bpf/src/events.js'

t.test('hasConnection', { skip: isRoot() ? false : 'needs root' }, async (t) => {
  const lab = await datapathLab(t, 20, ['a'])
  const ct = new RawMap(createMapRef(objGet(`${lab.opts.bpffs}/l7p_ct`), { transfer: true }))
  t.teardown(() => ct.ref.close())
  const now = monotonicNowNs()
  const k = Buffer.alloc(SIZE.ctKey)
  const v = Buffer.alloc(SIZE.ctEntry)
  const put = (saddr: string, daddr: string, sport: number, expires: bigint): void => {
    ct.set(encodeCtKey(k, { saddr, daddr, sport, dport: 443, proto: 6 }),
      encodeCtEntry(v, { expires, srcIdentity: 1000, dstIdentity: 2, endpointId: 100, flags: 0 }))
  }
  // 6,000 live flows from the endpoint to 10.20.0.0/16 (more than one 4,096-entry batch),
  // and 1,000 expired ones to 10.21.0.0/16
  for (let i = 0; i < 6000; i++) put(lab.ip('a'), `10.20.${i >> 8}.${i & 255}`, 1024 + (i % 50000), now + 60_000_000_000n)
  for (let i = 0; i < 1000; i++) put(`10.21.${i >> 8}.${i & 255}`, lab.ip('a'), 2000 + i, now - 1_000_000_000n)
  // the turn that filled the map may have asked already: start on a fresh one
  await new Promise((resolve) => setImmediate(resolve))

  await t.test('live entries answer for either end; expired and unknown addresses do not', async (t) => {
    let wrong = 0
    for (let i = 0; i < 6000; i++) if (!lab.dp.hasConnection(`10.20.${i >> 8}.${i & 255}`)) wrong++
    t.equal(wrong, 0, 'every destination of a live flow')
    t.equal(lab.dp.hasConnection(lab.ip('a')), true, 'the source end too')
    wrong = 0
    for (let i = 0; i < 1000; i++) if (lab.dp.hasConnection(`10.21.${i >> 8}.${i & 255}`)) wrong++
    t.equal(wrong, 0, 'no source of an expired flow')
    t.equal(lab.dp.hasConnection('192.0.2.77'), false, 'an address in no flow')
  })

  await t.test('one dump answers a whole turn of the event loop; the next turn sees new flows', async (t) => {
    await new Promise((resolve) => setImmediate(resolve))
    t.equal(lab.dp.hasConnection('10.22.0.1'), false)
    put(lab.ip('a'), '10.22.0.1', 5555, now + 60_000_000_000n)
    t.equal(lab.dp.hasConnection('10.22.0.1'), false, 'same turn: the dump made by the first question')
    await new Promise((resolve) => setImmediate(resolve))
    t.equal(lab.dp.hasConnection('10.22.0.1'), true, 'next turn: a new dump')
  })
})
