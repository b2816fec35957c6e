// NCCL process group: the collectives of ProcessGroup on CUDA tensors, through NVIDIA's NCCL opened
// with dlopen at run time (native/comm/nccl.cc: no NCCL or CUDA at build time). MPI (or any
// ProcessGroup) starts the job: it carries NCCL's unique id from rank 0 to the others, the barrier
// and the small host-side exchanges; every tensor collective is an NCCL call enqueued on the CUDA
// backend's stream, reading and writing device memory (no host copies). Stream order makes the
// non-blocking forms free: a later kernel on the same stream sees the result.
//
// NEVER RUN ON A GPU: written and tested without one (tests: library search, the errors, and the
// calls reaching a stand-in libnccl with the right pointers, counts, types and ops). What a GPU run
// still needs is listed in docs/distributed.md.
import type { Tensor } from '../tensor/tensor.js';
import { dtypeSize } from '../tensor/dtype.js';
import { type CommAddon, loadCommAddon } from './mpi.js';
import { CommError, type ByteCounters, type ProcessGroup, type ReduceOp, type Work } from './process_group.js';

/** What the NCCL group needs from a CUDA backend: device addresses of tensors and its stream. */
export interface DeviceMemory {
  /** The device address of t's first element (t lives on this device). */
  devicePointer(t: Tensor): bigint;
  /** The cudaStream_t the backend's kernels run on (null: the default stream). */
  stream(): bigint | null;
}

const DONE: Work = { wait() {} };
const bare = (err: unknown) => (err as Error).message.replace(/^spinlm native: /, '');

/** Loads libnccl (SPINLM_NCCL_LIBRARY, else the loader's search and CUDA's usual directories). */
export function loadNccl(native: CommAddon = loadCommAddon()): { library: string; version: number } {
  const path = process.env.SPINLM_NCCL_LIBRARY || null;
  try {
    return native.ncclLoad(path);
  } catch (err) {
    throw new Error(
      `spinlm: several processes on --device cuda need NCCL: ${bare(err)}. ` +
        'Install it (NVIDIA CUDA repository: apt-get install libnccl2) or set SPINLM_NCCL_LIBRARY=/path/to/libnccl.so.2',
      { cause: err },
    );
  }
}

/**
 * The device memory interface of a backend: its native module's devicePointer(view) and
 * streamHandle(). A clear error where the backend has none (the CPU backend, or a CUDA build
 * without them).
 */
export function deviceMemoryOf(backend: { name: string; native?: unknown }): DeviceMemory {
  const n = backend.native as { devicePointer?: (t: Tensor) => bigint; streamHandle?: () => bigint } | undefined;
  if (backend.name !== 'cuda' || typeof n?.devicePointer !== 'function' || typeof n.streamHandle !== 'function') {
    throw new TypeError(`the NCCL process group needs CUDA tensors with device pointers; the ${backend.name} backend${backend.name === 'cuda' ? ' of this build exports no devicePointer()/streamHandle()' : ' has none (use the MPI group)'}`);
  }
  return { devicePointer: (t) => n.devicePointer!(t), stream: () => n.streamHandle!() };
}

export class NcclProcessGroup implements ProcessGroup {
  readonly rank: number;
  readonly size: number;
  readonly library: string;
  readonly version: number;
  private comm: object | null;

  /** Every rank of `host` calls this together (collective: rank 0 makes the id, all join). */
  constructor(
    private readonly host: ProcessGroup,
    private readonly mem: DeviceMemory,
    private readonly native: CommAddon = loadCommAddon(),
  ) {
    this.rank = host.rank;
    this.size = host.size;
    const { library, version } = loadNccl(native);
    this.library = library;
    this.version = version;
    const id = host.allGatherBytes(host.rank === 0 ? native.ncclUniqueId() : new Uint8Array(0))[0];
    if (id.length !== 128) throw new Error(`spinlm: rank ${this.rank}: NCCL unique id from rank 0 has ${id.length} bytes, not 128`);
    this.comm = native.ncclInit(id, this.size, this.rank);
  }

  get isMain(): boolean {
    return this.rank === 0;
  }

  get bytes(): ByteCounters {
    return this.host.bytes;
  }

  private call(kind: 'allReduce' | 'reduceScatter' | 'allGather' | 'broadcast', sent: number, send: bigint | null, recv: Tensor, count: number, opOrRoot: string | number): void {
    if (!this.comm) throw new Error(`${kind}: the NCCL process group is closed`);
    this.host.bytes.calls++;
    this.host.bytes[kind] += sent;
    try {
      this.native.ncclCollective(kind, this.comm, send, this.mem.devicePointer(recv), count, recv.dtype, opOrRoot, this.mem.stream());
    } catch (err) {
      throw new CommError(`spinlm: rank ${this.rank} of ${this.size}: NCCL ${kind}: ${bare(err)}`, { cause: err });
    }
  }

  allReduce(t: Tensor, op: ReduceOp = 'sum'): void {
    this.call('allReduce', (2 * (this.size - 1) * t.byteLength) / this.size, null, t, t.numel, op);
  }

  reduceScatter(send: Tensor, recv: Tensor, op: ReduceOp = 'sum'): void {
    if (send.numel !== recv.numel * this.size || send.dtype !== recv.dtype) throw new RangeError(`reduceScatter: send ${send} must hold ${this.size} blocks of recv ${recv}`);
    this.call('reduceScatter', ((this.size - 1) * send.byteLength) / this.size, this.mem.devicePointer(send), recv, recv.numel, op);
  }

  allGather(full: Tensor, own?: Tensor): void {
    if (full.numel % this.size !== 0) throw new RangeError(`allGather: ${full} does not split into ${this.size} equal blocks`);
    const n = full.numel / this.size;
    if (own && (own.numel !== n || own.dtype !== full.dtype)) throw new RangeError(`allGather: own block ${own} must be 1/${this.size} of ${full}`);
    // NCCL's in-place form: the send block is this rank's block of the receive buffer
    const send = own ? this.mem.devicePointer(own) : this.mem.devicePointer(full) + BigInt(this.rank * n * dtypeSize(full.dtype));
    this.call('allGather', ((this.size - 1) * full.byteLength) / this.size, send, full, n, 0);
  }

  broadcast(t: Tensor, root = 0): void {
    this.call('broadcast', this.rank === root ? t.byteLength : 0, null, t, t.numel, root);
  }

  allReduceAsync(t: Tensor, op?: ReduceOp): Work {
    this.allReduce(t, op);
    return DONE;
  }

  reduceScatterAsync(send: Tensor, recv: Tensor, op?: ReduceOp): Work {
    this.reduceScatter(send, recv, op);
    return DONE;
  }

  allGatherAsync(full: Tensor, own?: Tensor): Work {
    this.allGather(full, own);
    return DONE;
  }

  /** The host group's barrier, after checking NCCL's asynchronous error state (a dead peer, a network error). */
  barrier(): void {
    if (this.comm) {
      const e = this.native.ncclAsyncError(this.comm);
      if (e) throw new CommError(`spinlm: rank ${this.rank} of ${this.size}: NCCL: ${e}; another rank died or the network failed`);
    }
    this.host.barrier();
  }

  allReduceHost(a: Float64Array | Float32Array | Int32Array, op?: ReduceOp): void {
    this.host.allReduceHost(a, op);
  }

  allGatherBytes(b: Uint8Array): Uint8Array[] {
    return this.host.allGatherBytes(b);
  }

  abort(code: number): never {
    if (this.comm) this.native.ncclDestroy(this.comm, true);
    this.comm = null;
    return this.host.abort(code);
  }

  close(): void {
    if (this.comm) this.native.ncclDestroy(this.comm, false);
    this.comm = null;
    this.host.close();
  }
}
