// The DNS proxy's reply sockets (agent/reply-sockets.ts): one per server, bounded, least
// recently used closed first. Pure, no root needed.
import t from 'tap'
import { ReplySockets } from '../../agent/reply-sockets.js'

class Fake { closed = false; constructor (readonly key: string) {} close (): void { this.closed = true } }

t.test('one socket per server address and port, at most max, the least recently used closed', async t => {
  const opened: Fake[] = []
  const r = new ReplySockets(2, (ip, port) => { const f = new Fake(`${ip}:${port}`); opened.push(f); return f })
  const a = r.get('10.0.0.10', 53)
  const b = r.get('10.0.0.11', 53)
  t.equal(r.get('10.0.0.10', 53), a, 'the same server gets the same socket')
  t.not(r.get('10.0.0.10', 5353), a, 'another port is another socket')
  t.equal(r.size, 2)
  t.ok(b.closed && !a.closed, 'full: the least recently used (b: a was asked for again since) is closed')
  r.get('10.0.0.10', 53)
  r.get('10.0.0.12', 53)
  t.ok(opened[2].closed, '10.0.0.10:5353 went next, a was used more recently')
  t.notOk(a.closed)
  r.closeAll()
  t.ok(opened.every(f => f.closed), 'closeAll closes every one')
  t.equal(r.size, 0)
})
