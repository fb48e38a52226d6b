/**
 * The DNS proxy's reply sockets: one transparent socket per server address and port, to answer
 * as the server the workload asked. Each is a file descriptor; workloads ask a handful of
 * servers, but one that asks many addresses (policy allowing) must not exhaust descriptors, so
 * at most `max` are kept and the least recently used is closed. An answer still due through a
 * closed one is lost (counted in the DNS proxy's sendErrors); clients retry.
 */
export class ReplySockets<S extends { close (): void }> {
  /** key -> socket, least recently used first. */
  private readonly sockets = new Map<string, S>()

  constructor (private readonly max: number, private readonly open: (ip: string, port: number) => S) {}

  get (ip: string, port: number): S {
    const key = `${ip}:${port}`
    let s = this.sockets.get(key)
    if (s !== undefined) {
      this.sockets.delete(key)
      this.sockets.set(key, s)
      return s
    }
    if (this.sockets.size >= this.max) {
      const oldest = this.sockets.entries().next().value
      if (oldest !== undefined) { this.sockets.delete(oldest[0]); oldest[1].close() }
    }
    s = this.open(ip, port)
    this.sockets.set(key, s)
    return s
  }

  get size (): number { return this.sockets.size }

  closeAll (): void {
    for (const s of this.sockets.values()) s.close()
    this.sockets.clear()
  }
}
