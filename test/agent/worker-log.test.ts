// An HTTP proxy worker's log lines wait on the main thread's message port until it takes them.
// A main thread that stops taking them must not grow the worker's memory: beyond the bound of
// unacknowledged bytes, lines are dropped and counted, and logging resumes once acknowledged.
import t from 'tap'
import { PortDestination } from '../../agent/workers/log.js'

const line = (i: number): string => `{"level":30,"msg":"http request","n":${i},"pad":"${'x'.repeat(80)}"}\n`

t.test('a main thread that takes nothing: at most the bound is posted, the rest counted', async (t) => {
  let posted = 0
  const dest = new PortDestination((b) => { posted += b.byteLength }, { minBytes: 4096, flushMs: 60_000, maxUnackedBytes: 64 * 1024 })
  t.teardown(() => dest.end())
  for (let i = 0; i < 100_000; i++) dest.write(line(i))
  dest.flush()
  t.ok(posted <= 64 * 1024, `posted ${posted} bytes`)
  t.ok(posted > 32 * 1024, 'up to the bound')
  t.ok(dest.dropped > 90_000, `dropped ${dest.dropped} lines`)
})

t.test('acknowledged batches make room again', async (t) => {
  const batches: Uint8Array[] = []
  const dest = new PortDestination((b) => { batches.push(b) }, { minBytes: 4096, flushMs: 60_000, maxUnackedBytes: 16 * 1024 })
  t.teardown(() => dest.end())
  for (let i = 0; i < 1000; i++) dest.write(line(i))
  dest.flush()
  const droppedWhileStalled = dest.dropped
  t.ok(droppedWhileStalled > 0)
  for (const b of batches.splice(0)) dest.acked(b.byteLength)
  for (let i = 0; i < 100; i++) dest.write(line(i))
  dest.flush()
  t.equal(dest.dropped, droppedWhileStalled, 'nothing more dropped after the acknowledgements')
  t.equal(batches.reduce((n, b) => n + Buffer.from(b).toString().split('\n').length - 1, 0), 100, 'every new line posted')
})
