/**
 * The few libbpf calls the `bpf` npm package does not cover, through koffi (FFI over
 * libbpf.so.1 from libbpf-dev): per-CPU lookups, the ring buffer consumer, and batched
 * lookups into caller-owned buffers (the package's getBatch copies every entry into a Buffer
 * of its own).
 */
import koffi from 'koffi'
import { BpfError } from './errors.js'

export interface Libbpf {
  objGet (path: string): number
  lookup (fd: number, key: Buffer, value: Buffer): boolean
  possibleCpus: number
  ringBuffer (fd: number, onSample: (data: Buffer) => void): RingBuffer
  /**
   * One BPF_MAP_LOOKUP_BATCH: up to `count[0]` entries into `keys`/`values` (packed), from the
   * position `inBatch` names (null: the start); the next position goes to `outBatch` and the
   * number read to `count[0]`. Returns 0, or a negative errno: -ENOENT when the walk is done
   * (entries may still have been read), -ENOSPC when a hash bucket holds more than `count`.
   */
  lookupBatch (fd: number, inBatch: Buffer | null, outBatch: Buffer, keys: Buffer, values: Buffer, count: number[]): number
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
  const lookupBatch = so.func('int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, _Inout_ uint32_t *count, void *opts)')
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
      const rb: unknown = rbNew(fd, cb, null, null) // an opaque pointer, or null
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
    lookupBatch (fd, inBatch, outBatch, keys, values, count) {
      const r = lookupBatch(fd, inBatch, outBatch, keys, values, count, null) as number
      // libbpf 1.x returns -errno; 0.x returned -1 and left it in errno
      return r === -1 ? -koffi.errno() : r
    },
    close (fd) { closeFd(fd) }
  }
  return lib
}
