/**
 * The few libbpf calls the `bpf` npm package does not cover, through koffi (FFI over
 * libbpf.so.1 from libbpf-dev): per-CPU lookups and the ring buffer consumer.
 */
import koffi from 'koffi'
import { BpfError } from './errors.js'

export interface Libbpf {
  objGet (path: string): number
  lookup (fd: number, key: Buffer, value: Buffer): boolean
  possibleCpus: number
  ringBuffer (fd: number, onSample: (data: Buffer) => void): RingBuffer
  close (fd: number): void
}

export interface RingBuffer {
  /** Drain every available record; returns how many were consumed. */
  consume (): number
  epollFd: number
  free (): void
}

let lib: Libbpf | undefined

export function libbpf (): Libbpf {
  if (lib !== undefined) return lib
  const so = koffi.load('libbpf.so.1')
  const libc = koffi.load('libc.so.6')
  const objGet = so.func('int bpf_obj_get(const char *path)')
  const lookupElem = so.func('int bpf_map_lookup_elem(int fd, const void *key, _Out_ void *value)')
  const numCpus = so.func('int libbpf_num_possible_cpus(void)')
  const sampleFn = koffi.proto('int l7p_ring_buffer_sample_fn(void *ctx, void *data, size_t size)')
  const rbNew = so.func('void *ring_buffer__new(int map_fd, l7p_ring_buffer_sample_fn *sample_cb, void *ctx, void *opts)')
  const rbConsume = so.func('int ring_buffer__consume(void *rb)')
  const rbEpollFd = so.func('int ring_buffer__epoll_fd(void *rb)')
  const rbFree = so.func('void ring_buffer__free(void *rb)')
  const closeFd = libc.func('int close(int fd)')
  const cpus = numCpus() as number

  lib = {
    objGet (path) {
      const fd = objGet(path) as number
      if (fd < 0) throw new BpfError('bpf_obj_get', path, `errno ${-fd}`, -fd)
      return fd
    },
    lookup (fd, key, value) {
      return (lookupElem(fd, key, value) as number) === 0
    },
    possibleCpus: cpus,
    ringBuffer (fd, onSample) {
      const cb = koffi.register((_ctx: unknown, data: unknown, size: number | bigint) => {
        // copy out of the ring before returning: the slot is reused after the callback
        onSample(Buffer.from(new Uint8Array(koffi.view(data, Number(size))).slice()))
        return 0
      }, koffi.pointer(sampleFn))
      const rb = rbNew(fd, cb, null, null)
      if (rb === null) {
        koffi.unregister(cb)
        throw new BpfError('ring_buffer__new', `fd ${fd}`, 'failed')
      }
      let freed = false
      return {
        consume: () => rbConsume(rb) as number,
        epollFd: rbEpollFd(rb) as number,
        free () {
          if (freed) return
          freed = true
          rbFree(rb)
          koffi.unregister(cb)
        }
      }
    },
    close (fd) { closeFd(fd) }
  }
  return lib
}
