import t from 'tap'
import { closeSync, openSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { batchedDestination } from '../../agent/log-destination.js'
import { PortDestination } from '../../agent/workers/log.js'

async function tempFile (t: { teardown (fn: () => unknown): void }): Promise<{ path: string, fd: number }> {
  const dir = await mkdtemp(join(tmpdir(), 'warden-logdest-'))
  const path = join(dir, 'log')
  const fd = openSync(path, 'w')
  t.teardown(async () => { closeSync(fd); await rm(dir, { recursive: true, force: true }) })
  return { path, fd }
}

for (const sync of [true, false]) t.test(`pino lines arrive whole and in order, batched, after flush (sync: ${String(sync)})`, async t => {
  const { path, fd } = await tempFile(t)
  const dest = batchedDestination(fd, { minBytes: 1000, flushMs: 60_000, sync })
  t.teardown(() => dest.end())
  const log = pino({ base: null }, dest)
  for (let i = 0; i < 500; i++) log.info({ i }, 'http request')
  await new Promise<void>(resolve => { dest.flush(resolve) })
  const lines = readFileSync(path, 'utf8').split('\n').filter(l => l !== '').map(l => JSON.parse(l) as { i: number })
  t.equal(lines.length, 500, 'every line written')
  t.same(lines.map(l => l.i), Array.from({ length: 500 }, (_, i) => i), 'in order')
  t.equal(dest.dropped, 0)
})

t.test('a small trickle is written by the timer, without an explicit flush', async t => {
  const { path, fd } = await tempFile(t)
  const dest = batchedDestination(fd, { minBytes: 1 << 20, flushMs: 20 })
  t.teardown(() => dest.end())
  dest.write('{"a":1}\n')
  for (let i = 0; i < 100 && readFileSync(path, 'utf8') === ''; i++) await new Promise(resolve => setTimeout(resolve, 20))
  t.equal(readFileSync(path, 'utf8'), '{"a":1}\n')
})

t.test('bounded: beyond maxBytes waiting, lines are dropped and counted; end() writes the rest', async t => {
  const { path, fd } = await tempFile(t)
  const dest = batchedDestination(fd, { minBytes: 1 << 20, maxBytes: 100, flushMs: 60_000 })
  for (let i = 0; i < 20; i++) dest.write(`{"line":${String(i).padStart(2, '0')}}\n`) // 12 bytes each
  t.equal(dest.dropped, 12, '8 lines fit in 100 bytes, 12 dropped')
  dest.end()
  t.equal(readFileSync(path, 'utf8').split('\n').filter(l => l !== '').length, 8, 'the kept lines are written at end()')
})

t.test('a proxy worker\'s batches (PortDestination) join the main destination whole and in order, bounded', async t => {
  const { path, fd } = await tempFile(t)
  const dest = batchedDestination(fd, { minBytes: 1000, flushMs: 60_000, maxBytes: 200_000 })
  t.teardown(() => dest.end())
  const main = pino({ base: { worker: 0 } }, dest)
  const batches: Uint8Array[] = []
  const port = new PortDestination((b) => { batches.push(b); dest.writeBytes(b) }, { minBytes: 700, flushMs: 60_000 })
  t.teardown(() => port.end())
  const worker = pino({ base: { worker: 1 } }, port)
  for (let i = 0; i < 300; i++) {
    worker.info({ i }, 'http request')
    main.info({ i }, 'http request')
  }
  port.flush()
  t.ok(batches.length > 10, `the worker handed its lines over in batches (${batches.length})`)
  t.ok(batches.every((b) => b[b.length - 1] === 0x0a), 'each batch ends with a whole line')
  await new Promise<void>(resolve => { dest.flush(resolve) })
  const lines = readFileSync(path, 'utf8').split('\n').filter(l => l !== '').map(l => JSON.parse(l) as { worker: number, i: number })
  t.equal(lines.length, 600, 'every line of both, each one whole JSON')
  for (const w of [0, 1]) t.same(lines.filter(l => l.worker === w).map(l => l.i), Array.from({ length: 300 }, (_, i) => i), `worker ${w}'s in order`)

  const big = new Uint8Array(150_000).fill(0x61)
  dest.writeBytes(big)
  dest.writeBytes(big)
  t.equal(dest.dropped, 1, 'a batch beyond maxBytes waiting is dropped and counted')
})
