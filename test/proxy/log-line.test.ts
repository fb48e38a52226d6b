// The hot-path line writer must produce exactly what pino writes, or operators' log pipelines
// would see two formats. Pure: no sockets, no root.
import t from 'tap'
import { Writable } from 'node:stream'
import pino from 'pino'
import fc from 'fast-check'
import { bindingsOf, epochText, fastLineOk, jsonString, LEVEL, LineWriter, millis3 } from '../../proxy/src/log-line.js'

function capture (opts: pino.LoggerOptions = {}): { logger: pino.Logger, lines: string[] } {
  const lines: string[] = []
  const stream = new Writable({ write (chunk, _enc, cb) { lines.push(String(chunk)); cb() } })
  // A fixed clock so two lines written at different moments compare equal byte for byte.
  const logger = pino({ base: { component: 'warden' }, timestamp: () => ',"time":1795876409629', ...opts }, stream)
  return { logger, lines }
}

const bindings = {
  srcIdentity: 256,
  src: 'default/checkout "svc"',
  srcLabels: ['k8s:app=checkout', 'k8s:io.kubernetes.pod.namespace=default'],
  dst: '198.19.0.10:8080',
  dstEndpoint: undefined
}

t.test('a line from LineWriter equals the line pino writes for the same record', async (t) => {
  const { logger, lines } = capture()
  const child = logger.child(bindings).child({ rule: { file: 'p.yaml', line: 12, policy: 'default/billing', section: 'ingress', index: 0 } })
  const writer = new LineWriter(logger)
  const paths = ['/api/v1/charge', '/a"b\\c', '/ünï\u0001code', '']
  for (const path of paths) {
    for (const [level, name] of [[LEVEL.info, 'info'], [LEVEL.warn, 'warn']] as const) {
      const reason = level === LEVEL.warn ? 'ingress-no-rule-match' : undefined
      child[name]({ method: 'POST', path, verdict: 'allowed', reason, status: 200, bytesIn: 3, bytesOut: 1024, durationMs: 0.153 }, 'http request')
      writer.write(level, bindingsOf(child),
        ',"method":' + jsonString('POST') + ',"path":' + jsonString(path) + ',"verdict":"allowed"' +
        (reason === undefined ? '' : ',"reason":' + jsonString(reason)) +
        ',"status":200,"bytesIn":3,"bytesOut":1024,"durationMs":0.153', jsonString('http request'))
      // pino writes to the stream asynchronously through its own buffering only for sonic-boom; a
      // Writable gets each line at once.
      t.equal(lines.length, 2, `two lines for ${JSON.stringify(path)} at ${name}`)
      t.equal(lines[1], lines[0], `same bytes for ${JSON.stringify(path)} at ${name}`)
      t.same(JSON.parse(lines[1]), JSON.parse(lines[0]))
      lines.length = 0
    }
  }
})

t.test('fastLineOk says no where pino would change the line', async (t) => {
  t.ok(fastLineOk(capture().logger), 'plain logger')
  t.ok(fastLineOk(capture().logger.child({ a: 1 })), 'child logger')
  t.notOk(fastLineOk(capture({ mixin: () => ({ extra: 1 }) }).logger), 'mixin')
  t.notOk(fastLineOk(capture({ formatters: { log: (o) => ({ ...o, wrapped: true }) } }).logger), 'formatters.log')
  t.notOk(fastLineOk(capture({ formatters: { level: (label) => ({ severity: label }) } }).logger), 'formatters.level')
  t.notOk(fastLineOk(capture({ hooks: { logMethod (args, method) { method.apply(this, args) } } }).logger), 'hooks.logMethod')
  t.notOk(fastLineOk(capture({ messageKey: 'message' }).logger), 'another message key')
})

t.test('jsonString is JSON.stringify for every string', async (t) => {
  for (const s of ['', 'api.github.com.', 'a"b', 'a\\b', 'tab\there', '\u0000', '\u001f', '\u007f', 'ünï', '\ud83d\ude00', '\ud800', 'x\udfff', '\\.\\255']) {
    t.equal(jsonString(s), JSON.stringify(s), JSON.stringify(s))
  }
  fc.assert(fc.property(fc.oneof(fc.string(), fc.fullUnicodeString(), fc.string16bits()), s => jsonString(s) === JSON.stringify(s)), { numRuns: 2000 })
})

t.test('millis3 writes what String writes for a duration rounded to microseconds', async (t) => {
  let bad = ''
  let n = 0
  const check = (ms: number): void => {
    n++
    const want = String(Math.round(ms * 1000) / 1000)
    if (millis3(ms) !== want && bad === '') bad = `${ms}: ${millis3(ms)} != ${want}`
  }
  for (let us = 0; us < 200_000; us++) check(us / 1000)
  for (let i = 0; i < 200_000; i++) check(Math.random() * 10 ** (i % 10))
  for (const v of [0, -0, 0.0004, 0.0005, 0.9995, 1e6 + 0.0015, 2 ** 31 / 1000, 2 ** 31 / 1000 + 5, 1e12, -1, NaN, Infinity]) check(v)
  t.equal(bad, '', `all ${n} values agree`)
})

t.test('epochText writes what String writes for a time in milliseconds', async (t) => {
  let bad = ''
  let n = 0
  const check = (ms: number): void => {
    n++
    if (epochText(ms) !== String(ms) && bad === '') bad = `${ms}: ${epochText(ms)} != ${String(ms)}`
  }
  const now = Date.now()
  for (let d = -100_000; d < 100_000; d++) check(now + d)
  for (let i = 0; i < 100_000; i++) check(Math.floor(Math.random() * 2 ** (20 + (i % 34))))
  for (let k = 6; k < 16; k++) { check(10 ** k); check(10 ** k - 1); check(10 ** k + 1) }
  for (const v of [0, -0, 999_999, 1e6, 2 ** 52 - 1, 2 ** 52, 2 ** 53, 1.5e12 + 0.5, -1e12, NaN, Infinity]) check(v)
  t.equal(bad, '', `all ${n} values agree`)
})

t.test("with pino's default clock the line carries the current time, as pino's does", async (t) => {
  const lines: string[] = []
  const stream = new Writable({ write (chunk, _enc, cb) { lines.push(String(chunk)); cb() } })
  const logger = pino({ base: null }, stream)
  const writer = new LineWriter(logger)
  for (let i = 0; i < 3; i++) {
    const before = Date.now()
    writer.write(LEVEL.info, '', ',"i":' + String(i), jsonString('m'))
    const time = (JSON.parse(lines[lines.length - 1]) as { time: number }).time
    t.ok(time >= before && time <= Date.now(), `line ${i}: time ${time} is now`)
    await new Promise(resolve => setTimeout(resolve, 5))
  }
  logger.info({ i: 9 }, 'm')
  writer.write(LEVEL.info, '', ',"i":9', jsonString('m'))
  const [a, b] = lines.slice(-2).map(l => JSON.parse(l) as Record<string, unknown>)
  t.same(Object.keys(b), Object.keys(a), 'same keys in the same order as pino')
  t.ok(Math.abs((b.time as number) - (a.time as number)) < 1000, 'same clock')
})
