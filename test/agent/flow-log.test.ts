// Flow lines: one JSON object per kernel event with one `time` (pino's) and the packet's time as
// `packetTime`; drops at warn; at most N lines a second, the rest counted in one summary line.
import t from 'tap'
import pino from 'pino'
import { FlowLogLimiter } from '../../agent/flow-log.js'
import type { FlowEvent } from '../../redirect-bpf/src/index.js'

function event (verdict: FlowEvent['verdict']): FlowEvent {
  return { time: 1_700_000_000_123.5, endpointId: 3, srcIdentity: 257, dstIdentity: 2, srcIp: '198.19.0.14', dstIp: '198.19.0.101', srcPort: 40000, dstPort: 443, protocol: 6, verdict, reason: verdict === 'dropped' ? 'drop_policy' : 'new_allowed', direction: 'egress', ifindex: 7 }
}

t.test('one time key, the packet\'s as packetTime; drops at warn', async (t) => {
  const lines: string[] = []
  const log = pino({ level: 'info' }, { write: (s: string) => { lines.push(s) } })
  const f = new FlowLogLimiter(log, 10)
  t.teardown(() => f.close())
  f.logEvent(event('dropped'))
  f.logEvent(event('allowed'))
  t.equal(lines.length, 2)
  t.equal((lines[0].match(/"time":/g) ?? []).length, 1, 'no duplicate key')
  const d = JSON.parse(lines[0]) as Record<string, unknown>
  t.match(d, { level: 40, msg: 'flow dropped', packetTime: 1_700_000_000_123.5, srcIp: '198.19.0.14', reason: 'drop_policy' })
  t.match(JSON.parse(lines[1]), { level: 30, msg: 'flow', verdict: 'allowed' })
})

t.test('beyond the per-second budget lines are counted, not written', async (t) => {
  const lines: string[] = []
  const log = pino({ level: 'info' }, { write: (s: string) => { lines.push(s) } })
  const f = new FlowLogLimiter(log, 5)
  t.teardown(() => f.close())
  for (let i = 0; i < 50; i++) f.logEvent(event('dropped'))
  t.equal(lines.length, 5)
  await new Promise((resolve) => setTimeout(resolve, 1100))
  t.match(JSON.parse(lines[5]), { msg: 'flow log rate limit: lines suppressed', suppressed: 45 })
})
