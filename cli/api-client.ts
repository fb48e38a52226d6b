/**
 * The CLI's side of the agent's local API (agent/api/server.ts): GET over the unix socket,
 * JSON back, or a stream of JSON lines for `observe`. No agent on the socket is a clear
 * `WARDEN_ERR_AGENT_NOT_RUNNING`, never a stack trace.
 */
import { request, type IncomingMessage } from 'node:http'
import type { OptionValues } from './main.js'

export const DEFAULT_API_SOCKET = '/run/warden/warden.sock'

/** The option every API command takes. */
export const API_SOCKET_OPTION = { 'api-socket': { type: 'string' as const } }

export class ApiError extends Error {
  constructor (readonly code: 'WARDEN_ERR_AGENT_NOT_RUNNING' | 'WARDEN_ERR_API', message: string, readonly status = 0) {
    super(message)
    this.name = 'ApiError'
  }
}

export function socketOf (v: OptionValues): string {
  return typeof v['api-socket'] === 'string' ? v['api-socket'] : DEFAULT_API_SOCKET
}

async function open (socketPath: string, path: string): Promise<IncomingMessage> {
  return await new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET', headers: { accept: 'application/json' } }, resolve)
    req.on('error', (err: Error & { code?: string }) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED' || err.code === 'ENOTSOCK') {
        reject(new ApiError('WARDEN_ERR_AGENT_NOT_RUNNING', `no warden agent is running on ${socketPath} (${err.code}); start one with \`warden run\`, or pass --api-socket PATH`))
      } else if (err.code === 'EACCES') {
        reject(new ApiError('WARDEN_ERR_API', `cannot open ${socketPath}: permission denied (the API socket is root's)`))
      } else reject(new ApiError('WARDEN_ERR_API', `cannot reach the agent on ${socketPath}: ${err.message}`))
    })
    req.end()
  })
}

async function readAll (res: IncomingMessage, max = 64 << 20): Promise<string> {
  let text = ''
  for await (const chunk of res) {
    text += String(chunk)
    if (text.length > max) throw new ApiError('WARDEN_ERR_API', `the agent's answer is over ${max} bytes`)
  }
  return text
}

export async function getJson<T = unknown> (socketPath: string, path: string): Promise<T> {
  const res = await open(socketPath, path)
  const text = await readAll(res)
  let body: unknown
  try { body = JSON.parse(text) } catch { throw new ApiError('WARDEN_ERR_API', `the agent answered ${String(res.statusCode)} with something that is not JSON`, res.statusCode) }
  if (res.statusCode !== 200) {
    const msg = (body as { error?: string }).error ?? `HTTP ${String(res.statusCode)}`
    throw new ApiError('WARDEN_ERR_API', msg, res.statusCode)
  }
  return body as T
}

/** Calls `onLine` with each JSON line; resolves when the agent ends the stream. */
export async function streamLines (socketPath: string, path: string, onLine: (v: unknown) => void): Promise<void> {
  const res = await open(socketPath, path)
  if (res.statusCode !== 200) {
    const text = await readAll(res)
    let msg = `HTTP ${String(res.statusCode)}`
    try { msg = (JSON.parse(text) as { error?: string }).error ?? msg } catch { /* not JSON: the status says enough */ }
    throw new ApiError('WARDEN_ERR_API', msg, res.statusCode)
  }
  let rest = ''
  for await (const chunk of res) {
    rest += String(chunk)
    let nl
    while ((nl = rest.indexOf('\n')) >= 0) {
      const line = rest.slice(0, nl)
      rest = rest.slice(nl + 1)
      if (line !== '') onLine(JSON.parse(line))
    }
  }
}
