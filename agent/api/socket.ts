/**
 * The local API's unix socket: created mode 0600 (root only: it tells who talks to whom on the
 * node), its directory made if missing. A socket file left by an agent that died is replaced;
 * one a live agent answers on is refused, as is a path that is not a socket.
 */
import { connect, type Server } from 'node:net'
import { lstatSync, mkdirSync, unlinkSync } from 'node:fs'
import { dirname } from 'node:path'

export class ApiSocketError extends Error {
  constructor (readonly code: 'WARDEN_ERR_API_SOCKET_IN_USE' | 'WARDEN_ERR_API_SOCKET_PATH', message: string, readonly path: string) {
    super(message)
    this.name = 'ApiSocketError'
  }
}

/** Does something accept connections on `path`? */
async function answers (path: string): Promise<boolean> {
  return await new Promise((resolve) => {
    const s = connect(path)
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => resolve(false))
  })
}

export async function listenUnix (srv: Server, path: string): Promise<void> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 })
  let st
  try { st = lstatSync(path) } catch { st = undefined }
  if (st !== undefined) {
    if (!st.isSocket()) throw new ApiSocketError('WARDEN_ERR_API_SOCKET_PATH', `${path} exists and is not a socket; not replacing it`, path)
    if (await answers(path)) throw new ApiSocketError('WARDEN_ERR_API_SOCKET_IN_USE', `another agent is serving ${path} (stop it, or give this one another --api-socket)`, path)
    unlinkSync(path) // left by an agent that died
  }
  // The umask makes the socket 0600 from the moment it exists: no window for another user.
  const old = process.umask(0o177)
  try {
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject)
      srv.listen(path, () => { srv.off('error', reject); resolve() })
    })
  } finally {
    process.umask(old)
  }
}
