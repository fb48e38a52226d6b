/**
 * Waiting for a running agent to converge, without timed assertions: poll a reading until it
 * is what the test wants or a deadline passes, then assert on the last reading (so a failure
 * shows what was there instead).
 */
import { get } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import type { DemoSession } from '../../demo/session.js'

export async function poll<T> (what: () => Promise<T> | T, ok: (v: T) => boolean, ms = 15_000, every = 100): Promise<T> {
  const deadline = Date.now() + ms
  let got = await what()
  while (!ok(got) && Date.now() < deadline) { await sleep(every); got = await what() }
  return got
}

/** One value of an agent's /metrics on loopback (NaN when absent). */
export async function metric (port: number, name: string): Promise<number> {
  const text = await new Promise<string>((resolve, reject) => {
    get(`http://127.0.0.1:${port}/metrics`, (res) => { let b = ''; res.on('data', (d) => { b += String(d) }); res.on('end', () => resolve(b)) }).on('error', reject)
  })
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text)
  return m === null ? NaN : Number(m[1])
}

/** The seed's billing check from checkout-service: the HTTP status, `timeout` or the curl exit. */
export async function charge (s: DemoSession): Promise<string> {
  const r = await s.exec('checkout-service', ['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '-X', 'POST',
    'http://billing-service:8080/api/v1/charge', '--connect-timeout', '2', '--max-time', '4'])
  return r.code === 28 ? 'timeout' : r.code === 0 ? r.stdout.trim() : `curl exit ${r.code}`
}
