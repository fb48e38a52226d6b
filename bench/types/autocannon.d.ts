// The subset of autocannon 8's programmatic API the bench uses (the package ships no types).
declare module 'autocannon' {
  import type { EventEmitter } from 'node:events'
  namespace autocannon {
    interface Options {
      url: string
      method?: 'GET' | 'POST' | 'PUT' | 'DELETE' | 'PATCH' | 'HEAD' | 'OPTIONS'
      connections?: number
      pipelining?: number
      workers?: number
      duration?: number
      timeout?: number
      headers?: Record<string, string>
      body?: string
    }
    interface Histogram { average: number, mean: number, p50: number, p99: number, p99_9: number, [k: string]: number }
    interface Result {
      errors: number
      timeouts: number
      non2xx: number
      '1xx': number
      '2xx': number
      '3xx': number
      '4xx': number
      '5xx': number
      statusCodeStats: Record<string, { count: number }>
      latency: Histogram
      requests: Histogram & { total: number, sent: number }
      duration: number
    }
    interface Instance extends EventEmitter { stop (): void }
  }
  function autocannon (opts: autocannon.Options, cb: (err: Error | null, result: autocannon.Result) => void): autocannon.Instance
  export = autocannon
}
