// Process groups: the collectives data-parallel training uses (all-reduce, reduce-scatter, all-gather,
// broadcast, barrier) over one tensor each, with a byte counter per collective. `MpiProcessGroup`
// runs them through MPI on CPU-backend tensors (native/comm/mpi.cc: MPI reads and writes the
// tensors' own memory, no host copies); `SoloGroup` is the one-process group (every collective is
// the identity), so code written for a group runs unchanged in one process.
//
// Ranks come from the MPI environment (mpirun sets OMPI_COMM_WORLD_RANK/SIZE); rank 0 alone prints
// and writes (isMain). Every collective has a deadline (SPINLM_COMM_TIMEOUT seconds, default 600):
// a rank that died or hangs makes the others fail with one error instead of waiting forever.
import type { Tensor } from '../tensor/tensor.js';
import { dtypeSize } from '../tensor/dtype.js';
import * as ops from '../ops/index.js';
import { type CommAddon, loadCommAddon } from './mpi.js';

export type ReduceOp = 'sum' | 'max' | 'min';
export type Collective = 'allReduce' | 'reduceScatter' | 'allGather' | 'broadcast' | 'barrier';

/** An issued collective (the *Async methods): wait() completes it; its buffers must stay untouched until then. */
export interface Work {
  wait(): void;
}

const DONE: Work = { wait() {} };

/** Bytes this rank sent, per collective, as the bandwidth-optimal (ring) algorithms send them. */
export type ByteCounters = Record<Collective, number> & { calls: number };

export interface ProcessGroup {
  readonly rank: number;
  readonly size: number;
  /** Rank 0: the one that prints progress and writes files. */
  readonly isMain: boolean;
  readonly bytes: ByteCounters;
  /** t = op over every rank's t, in place (f32 or i32). */
  allReduce(t: Tensor, op?: ReduceOp): void;
  /** recv [n] = block `rank` of op over every rank's send [size * n]. */
  reduceScatter(send: Tensor, recv: Tensor, op?: ReduceOp): void;
  /** full [size * n] = every rank's block; in place: this rank's block is already in full[rank * n, ...]. */
  allGather(full: Tensor, own?: Tensor): void;
  /**
   * Non-blocking forms (overlap with computation): the same collectives, issued now and completed by
   * wait(). Every rank issues the same collectives in the same order (as for the blocking forms); the
   * results are those of the blocking forms.
   */
  allReduceAsync(t: Tensor, op?: ReduceOp): Work;
  reduceScatterAsync(send: Tensor, recv: Tensor, op?: ReduceOp): Work;
  allGatherAsync(full: Tensor, own?: Tensor): Work;
  /** t = root's t. */
  broadcast(t: Tensor, root?: number): void;
  barrier(): void;
  /** Host arrays: sum / max / min over ranks, in place (Float64Array, Float32Array or Int32Array). */
  allReduceHost(a: Float64Array | Float32Array | Int32Array, op?: ReduceOp): void;
  /** Every rank's bytes, in rank order. */
  allGatherBytes(b: Uint8Array): Uint8Array[];
  /** Ends every rank of the job (exit code `code`); does not return. */
  abort(code: number): never;
  close(): void;
}

function zeroCounters(): ByteCounters {
  return { allReduce: 0, reduceScatter: 0, allGather: 0, broadcast: 0, barrier: 0, calls: 0 };
}

/** The one-process group: every collective leaves its data as it is. */
export class SoloGroup implements ProcessGroup {
  readonly rank = 0;
  readonly size = 1;
  readonly isMain = true;
  readonly bytes = zeroCounters();
  allReduce(): void {}
  reduceScatter(send: Tensor, recv: Tensor): void {
    if (send.numel !== recv.numel || send.dtype !== 'f32' || recv.dtype !== 'f32') throw new RangeError(`reduceScatter: one rank copies f32 send to recv of the same size, got ${send} and ${recv}`);
    ops.fill(recv, 0);
    ops.accumulate(recv as Tensor<'f32'>, send as Tensor<'f32'>, 1);
  }
  allGather(full: Tensor, own?: Tensor): void {
    if (own) throw new RangeError('allGather: one rank gathers in place only');
  }
  allReduceAsync(): Work {
    return DONE;
  }
  reduceScatterAsync(send: Tensor, recv: Tensor): Work {
    this.reduceScatter(send, recv);
    return DONE;
  }
  allGatherAsync(full: Tensor, own?: Tensor): Work {
    this.allGather(full, own);
    return DONE;
  }
  broadcast(): void {}
  barrier(): void {}
  allReduceHost(): void {}
  allGatherBytes(b: Uint8Array): Uint8Array[] {
    return [b];
  }
  abort(code: number): never {
    process.exit(code);
  }
  close(): void {}
}

const HOST_DTYPE = (a: ArrayBufferView): string => {
  if (a instanceof Float64Array) return 'f64';
  if (a instanceof Float32Array) return 'f32';
  if (a instanceof Int32Array) return 'i32';
  if (a instanceof Uint8Array) return 'u8';
  throw new TypeError('host collectives take Float64Array, Float32Array, Int32Array or Uint8Array');
};

/** The collective deadline in milliseconds: SPINLM_COMM_TIMEOUT (seconds; default 600). */
export function commTimeoutMs(): number {
  const s = Number(process.env.SPINLM_COMM_TIMEOUT ?? 600);
  if (!(s > 0)) throw new RangeError(`SPINLM_COMM_TIMEOUT must be a positive number of seconds, got ${process.env.SPINLM_COMM_TIMEOUT}`);
  return Math.round(s * 1000);
}

/** Thrown when a collective cannot complete: a peer died or hangs. */
export class CommError extends Error {
  override name = 'CommError';
}

export class MpiProcessGroup implements ProcessGroup {
  readonly rank: number;
  readonly size: number;
  readonly library: string;
  /** Whether a native progress thread advances issued collectives while this thread computes. */
  readonly progressThread: boolean;
  readonly bytes = zeroCounters();
  private readonly native: CommAddon;
  private readonly timeout: number;
  private closed = false;
  /** Collectives issued so far (named in timeout errors: ranks disagreeing on it are out of step). */
  private seq = 0;

  constructor() {
    this.native = loadCommAddon();
    const { rank, size, library, progressThread } = this.native.init();
    this.progressThread = progressThread;
    this.rank = rank;
    this.size = size;
    this.library = library;
    this.timeout = commTimeoutMs();
  }

  get isMain(): boolean {
    return this.rank === 0;
  }

  private view(t: Tensor, what: string): Tensor {
    if (t.backend.name !== 'cpu') throw new TypeError(`${what}: the MPI process group moves CPU tensors, not ${t.backend.name} ones (a GPU backend needs the NCCL group)`);
    return t;
  }

  private commError(what: Collective, n: number, err: unknown): CommError {
    const msg = (err as Error).message.replace(/^spinlm comm: /, '');
    return new CommError(`spinlm: rank ${this.rank} of ${this.size}: collective #${n} (${what}): ${msg}; another rank died or is hung (SPINLM_COMM_TIMEOUT sets the limit)`, { cause: err });
  }

  private count(what: Collective, sent: number): number {
    if (this.closed) throw new Error(`${what}: the process group is closed`);
    this.bytes.calls++;
    this.bytes[what] += sent;
    return ++this.seq;
  }

  private run(what: Collective, sent: number, fn: () => void): void {
    const n = this.count(what, sent);
    try {
      fn();
    } catch (err) {
      throw this.commError(what, n, err);
    }
  }

  /** Issues a collective (`issue` returns the native request id); the Work waits with the deadline. */
  private start(what: Collective, sent: number, issue: () => number, keep: Tensor[]): Work {
    const n = this.count(what, sent);
    let id: number;
    try {
      id = issue();
    } catch (err) {
      throw this.commError(what, n, err);
    }
    let pending: Tensor[] | null = keep; // the buffers stay referenced until the collective is complete
    return {
      wait: () => {
        if (!pending) return;
        try {
          this.native.wait(id, this.timeout, what);
        } catch (err) {
          throw this.commError(what, n, err);
        }
        pending = null;
      },
    };
  }

  private allReduceBytes(bytes: number) {
    return (2 * (this.size - 1) * bytes) / this.size;
  }

  private checkReduceScatter(send: Tensor, recv: Tensor) {
    this.view(send, 'reduceScatter');
    this.view(recv, 'reduceScatter');
    if (send.numel !== recv.numel * this.size || send.dtype !== recv.dtype) throw new RangeError(`reduceScatter: send ${send} must hold ${this.size} blocks of recv ${recv}`);
  }

  private checkAllGather(full: Tensor, own?: Tensor): number {
    this.view(full, 'allGather');
    if (full.numel % this.size !== 0) throw new RangeError(`allGather: ${full} does not split into ${this.size} equal blocks`);
    const n = full.numel / this.size;
    if (own && (own.numel !== n || own.dtype !== full.dtype)) throw new RangeError(`allGather: own block ${own} must be 1/${this.size} of ${full}`);
    if (own) this.view(own, 'allGather');
    return n;
  }

  allReduce(t: Tensor, op: ReduceOp = 'sum'): void {
    this.view(t, 'allReduce');
    this.run('allReduce', this.allReduceBytes(t.byteLength), () => this.native.allReduce(null, t, t.numel, t.dtype, op, this.timeout));
  }

  reduceScatter(send: Tensor, recv: Tensor, op: ReduceOp = 'sum'): void {
    this.checkReduceScatter(send, recv);
    this.run('reduceScatter', ((this.size - 1) * send.byteLength) / this.size, () => this.native.reduceScatter(send, recv, recv.numel, recv.dtype, op, this.timeout));
  }

  allGather(full: Tensor, own?: Tensor): void {
    const n = this.checkAllGather(full, own);
    this.run('allGather', ((this.size - 1) * full.byteLength) / this.size, () => this.native.allGather(own ?? null, full, n, full.dtype, this.timeout));
  }

  allReduceAsync(t: Tensor, op: ReduceOp = 'sum'): Work {
    this.view(t, 'allReduce');
    return this.start('allReduce', this.allReduceBytes(t.byteLength), () => this.native.iallReduce(null, t, t.numel, t.dtype, op), [t]);
  }

  reduceScatterAsync(send: Tensor, recv: Tensor, op: ReduceOp = 'sum'): Work {
    this.checkReduceScatter(send, recv);
    return this.start('reduceScatter', ((this.size - 1) * send.byteLength) / this.size, () => this.native.ireduceScatter(send, recv, recv.numel, recv.dtype, op), [send, recv]);
  }

  allGatherAsync(full: Tensor, own?: Tensor): Work {
    const n = this.checkAllGather(full, own);
    return this.start('allGather', ((this.size - 1) * full.byteLength) / this.size, () => this.native.iallGather(own ?? null, full, n, full.dtype), own ? [full, own] : [full]);
  }

  broadcast(t: Tensor, root = 0): void {
    this.view(t, 'broadcast');
    this.run('broadcast', this.rank === root ? t.byteLength : 0, () => this.native.broadcast(t, t.numel, t.dtype, root, this.timeout));
  }

  barrier(): void {
    this.run('barrier', 0, () => this.native.barrier(this.timeout));
  }

  allReduceHost(a: Float64Array | Float32Array | Int32Array, op: ReduceOp = 'sum'): void {
    const dtype = HOST_DTYPE(a);
    this.run('allReduce', (2 * (this.size - 1) * a.byteLength) / this.size, () => this.native.allReduce(null, a, a.length, dtype, op, this.timeout));
  }

  allGatherBytes(b: Uint8Array): Uint8Array[] {
    const lengths = new Int32Array(this.size);
    lengths[this.rank] = b.length;
    this.run('allGather', 4 * (this.size - 1), () => this.native.allGather(null, lengths, 1, 'i32', this.timeout));
    const max = Math.max(...lengths);
    const all = new Uint8Array(max * this.size);
    all.set(b, this.rank * max);
    this.run('allGather', max * (this.size - 1), () => this.native.allGather(null, all, max, 'u8', this.timeout));
    return Array.from(lengths, (len, r) => all.slice(r * max, r * max + len));
  }

  abort(code: number): never {
    this.native.abort(code);
    throw new Error('unreachable');
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.native.finalize();
  }
}

/** Whether this process runs under mpirun with more than one rank. */
export function launchedByMpi(env: NodeJS.ProcessEnv = process.env): boolean {
  const size = Number(env.OMPI_COMM_WORLD_SIZE ?? env.PMI_SIZE ?? env.PMIX_SIZE ?? 1);
  return size > 1;
}

/** The environment's rank (before MPI is initialized): for messages and the log prefix. */
export function environmentRank(env: NodeJS.ProcessEnv = process.env): number {
  return Number(env.OMPI_COMM_WORLD_RANK ?? env.PMI_RANK ?? 0);
}

let current: ProcessGroup | undefined;

/**
 * The process group of this process: MPI when started by mpirun with 2+ ranks, else the solo group.
 * Created once; MPI is loaded only here.
 */
export function processGroup(): ProcessGroup {
  current ??= launchedByMpi() ? new MpiProcessGroup() : new SoloGroup();
  return current;
}

/** Whether processGroup() was called (MPI initialized under mpirun). */
export function processGroupStarted(): boolean {
  return current !== undefined;
}

/** Closes the process group if one was created (MPI_Finalize). */
export function closeProcessGroup(): void {
  current?.close();
}

/** Element size helper for callers that count bytes of views. */
export const elementBytes = dtypeSize;
