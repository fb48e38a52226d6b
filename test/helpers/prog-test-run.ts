/**
 * Packet-level runs of the tc programs with BPF_PROG_TEST_RUN, as Cilium's bpf/tests do: the
 * object is loaded into a pin directory of the test's own (nothing is attached anywhere), the
 * test fills the maps, crafts a frame and reads back the return code, the skb's mark, the
 * counters and the ring buffer's events.
 *
 * The `bpf` package has no binding for BPF_PROG_TEST_RUN: it goes through libbpf's
 * bpf_prog_test_run_opts over koffi (libbpf.so.1, which redirect-bpf/src/libbpf.ts loads too).
 *
 * The context is a struct __sk_buff (ctx_in/ctx_out): the kernel takes mark, ifindex and
 * ingress_ifindex from it and writes the mark back. ifindex 0 or 1 is the loopback device; a
 * test makes it an endpoint's veth by naming ifindex 1 in l7p_endpoints.
 */
import koffi from 'koffi'
import { createMapRef, objGet, RawMap } from 'bpf'
import { existsSync } from 'node:fs'
import { libbpf } from '../../redirect-bpf/src/libbpf.js'
import { readCounters } from '../../redirect-bpf/src/events.js'
import { ensureBpffs, loadObject, mapPath, progPath, removePins, type MapName } from '../../redirect-bpf/src/loader.js'
import { decodeEvent, SIZE, type RawEvent } from '../../redirect-bpf/src/layout.js'

/** libbpf 1.x struct bpf_test_run_opts (bpf.h), field for field. */
const TestRunOpts = koffi.struct('l7p_bpf_test_run_opts', {
  sz: 'size_t',
  data_in: 'void *',
  data_out: 'void *',
  data_size_in: 'uint32_t',
  data_size_out: 'uint32_t',
  ctx_in: 'void *',
  ctx_out: 'void *',
  ctx_size_in: 'uint32_t',
  ctx_size_out: 'uint32_t',
  retval: 'uint32_t',
  repeat: 'int',
  duration: 'uint32_t',
  flags: 'uint32_t',
  cpu: 'uint32_t',
  batch_size: 'uint32_t'
})

/** sizeof(struct __sk_buff) and the offsets the kernel reads from a test run's context. */
const SKB_SIZE = 192
const SKB_MARK = 8
const SKB_INGRESS_IFINDEX = 36
const SKB_IFINDEX = 40

export const TC_ACT_OK = 0
export const TC_ACT_SHOT = 2
export const TC_ACT_REDIRECT = 7

let testRun: ((fd: number, opts: unknown) => number) | undefined

function bind (): (fd: number, opts: unknown) => number {
  if (testRun === undefined) {
    const so = koffi.load('libbpf.so.1')
    testRun = so.func('int bpf_prog_test_run_opts(int prog_fd, _Inout_ l7p_bpf_test_run_opts *opts)') as (fd: number, opts: unknown) => number
  }
  return testRun
}

export interface RunInput {
  /** The frame, Ethernet header first. */
  frame: Buffer
  /** skb->ifindex (0/1: loopback). */
  ifindex?: number
  /** skb->skb_iif: 0 for a locally generated packet. */
  ingressIfindex?: number
  mark?: number
}

export interface RunResult {
  retval: number
  /** skb->mark after the run. */
  mark: number
  /** The packet after the run (as the program left it). */
  frame: Buffer
}

export interface TestRunRig {
  bpffs: string
  maps: Record<'config' | 'endpoints' | 'ipcache' | 'policy' | 'ct' | 'fib', RawMap>
  run: (prog: 'from_workload' | 'to_workload', input: RunInput) => RunResult
  /** Counters (summed over CPUs) by reason name. */
  counters: () => Record<string, number>
  /** Events the ring buffer holds, oldest first; consumed. */
  events: () => RawEvent[]
  /** Empty the maps the programs read and write (not the counters). */
  clear: () => void
  close: () => void
}

/**
 * Load warden.bpf.o into `bpffs` (a directory of the test's own; leftovers of a killed run are
 * removed first, and the pins again when the load fails part-way).
 */
export async function openTestRunRig (bpffs: string): Promise<TestRunRig> {
  await ensureBpffs('/sys/fs/bpf')
  if (existsSync(bpffs)) removePins(bpffs)
  try {
    return await open(bpffs)
  } catch (err) {
    removePins(bpffs)
    throw err
  }
}

async function open (bpffs: string): Promise<TestRunRig> {
  await ensureBpffs(bpffs)
  await loadObject(bpffs, 'progs')
  const lib = libbpf()
  const fds: number[] = []
  const refs: Array<{ close: () => void }> = []
  const progFd = { from_workload: -1, to_workload: -1 }
  for (const p of ['from_workload', 'to_workload'] as const) {
    progFd[p] = lib.objGet(progPath(bpffs, p))
    fds.push(progFd[p])
  }
  const open = (name: MapName): RawMap => {
    const ref = createMapRef(objGet(mapPath(bpffs, name)), { transfer: true })
    refs.push(ref)
    return new RawMap(ref)
  }
  const maps = {
    config: open('l7p_config'),
    endpoints: open('l7p_endpoints'),
    ipcache: open('l7p_ipcache'),
    policy: open('l7p_policy'),
    ct: open('l7p_ct'),
    fib: open('l7p_fib')
  }
  const countersFd = lib.objGet(mapPath(bpffs, 'l7p_counters'))
  fds.push(countersFd)
  const evFd = lib.objGet(mapPath(bpffs, 'l7p_events'))
  const queue: RawEvent[] = []
  const rb = lib.ringBuffer(evFd, (data) => { queue.push(decodeEvent(data)) })
  lib.close(evFd)
  const fn = bind()

  return {
    bpffs,
    maps,
    run (prog, input) {
      const ctxIn = Buffer.alloc(SKB_SIZE)
      ctxIn.writeUInt32LE(input.mark ?? 0, SKB_MARK)
      ctxIn.writeUInt32LE(input.ingressIfindex ?? 0, SKB_INGRESS_IFINDEX)
      ctxIn.writeUInt32LE(input.ifindex ?? 1, SKB_IFINDEX)
      const ctxOut = Buffer.alloc(SKB_SIZE)
      const dataOut = Buffer.alloc(input.frame.length + 256)
      const opts = {
        sz: koffi.sizeof(TestRunOpts),
        data_in: input.frame,
        data_out: dataOut,
        data_size_in: input.frame.length,
        data_size_out: dataOut.length,
        ctx_in: ctxIn,
        ctx_out: ctxOut,
        ctx_size_in: SKB_SIZE,
        ctx_size_out: SKB_SIZE,
        retval: 0,
        repeat: 1,
        duration: 0,
        flags: 0,
        cpu: 0,
        batch_size: 0
      }
      const err = fn(progFd[prog], opts)
      if (err !== 0) throw new Error(`bpf_prog_test_run_opts(${prog}): errno ${-err}`)
      return { retval: opts.retval, mark: ctxOut.readUInt32LE(SKB_MARK), frame: dataOut.subarray(0, opts.data_size_out) }
    },
    counters () {
      return readCounters(countersFd)
    },
    events () {
      rb.consume()
      return queue.splice(0)
    },
    clear () {
      for (const m of [maps.endpoints, maps.ipcache, maps.policy, maps.ct, maps.fib]) {
        for (const k of [...m.keys()]) m.delete(k)
      }
      maps.config.set(Buffer.alloc(4), Buffer.alloc(SIZE.config))
      rb.consume()
      queue.length = 0
    },
    close () {
      rb.free()
      for (const fd of fds) lib.close(fd)
      for (const r of refs) r.close()
      removePins(bpffs)
    }
  }
}
