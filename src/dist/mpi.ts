// Loads spinlm_comm (native/comm/: comm.cc, mpi.cc, nccl.cc), the optional MPI module, only when a process group is
// created: build/Release/spinlm_comm.node, or SPINLM_COMM_ADDON=/path/to/spinlm_comm.node. When it is
// missing (no MPI at build time, or the prebuilt binary, which never includes it) the error says how
// to get it.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { packageRoot } from '../backend/native/addon.js';

/** Buffers: a CPU tensor view { handle, byteOffset } or a TypedArray; null = in place. */
type Buf = object | null;

export interface CommAddon {
  commAbiVersion: number;
  /** progressThread: outstanding collectives progress while the main thread computes (overlap). */
  init(): { rank: number; size: number; library: string; progressThread: boolean };
  allReduce(send: Buf, recv: object, count: number, dtype: string, op: string, timeoutMs: number): void;
  reduceScatter(send: object, recv: object, count: number, dtype: string, op: string, timeoutMs: number): void;
  allGather(send: Buf, recv: object, count: number, dtype: string, timeoutMs: number): void;
  /** Issue a collective; returns a request id for wait(). */
  iallReduce(send: Buf, recv: object, count: number, dtype: string, op: string): number;
  ireduceScatter(send: object, recv: object, count: number, dtype: string, op: string): number;
  iallGather(send: Buf, recv: object, count: number, dtype: string): number;
  wait(id: number, timeoutMs: number, what: string): void;
  broadcast(buf: object, count: number, dtype: string, root: number, timeoutMs: number): void;
  barrier(timeoutMs: number): void;
  abort(code: number): void;
  /** NCCL (src/dist/nccl.ts), dlopen'ed on first use: `path` or the default search. */
  ncclLoad(path: string | null): { library: string; version: number };
  ncclUniqueId(): Uint8Array;
  ncclInit(id: Uint8Array, nranks: number, rank: number): object;
  ncclCollective(kind: 'allReduce' | 'reduceScatter' | 'allGather' | 'broadcast', comm: object, send: bigint | null, recv: bigint, count: number, dtype: string, opOrRoot: string | number, stream: bigint | null): void;
  ncclAsyncError(comm: object): string;
  ncclDestroy(comm: object, abort: boolean): void;
  finalize(): void;
}

const COMM_ABI_VERSION = 2;
let cached: CommAddon | undefined;

export function commAddonPath(): string {
  return process.env.SPINLM_COMM_ADDON ? resolve(process.env.SPINLM_COMM_ADDON) : join(packageRoot, 'build', 'Release', 'spinlm_comm.node');
}

export function loadCommAddon(): CommAddon {
  if (cached) return cached;
  const file = commAddonPath();
  if (!existsSync(file)) {
    throw new Error(
      `spinlm: multi-process training needs the MPI module ${file}, which is not built. ` +
        'Install MPI (Debian/Ubuntu: apt-get install libopenmpi-dev openmpi-bin) and rebuild with `npx node-gyp rebuild` ' +
        '(it builds spinlm_comm when mpicc is on PATH; the prebuilt binary never includes it).',
    );
  }
  try {
    cached = createRequire(import.meta.url)(file) as CommAddon;
  } catch (err) {
    throw new Error(`spinlm: could not load the MPI module ${file} (${(err as Error).message.split('\n')[0]}); is the MPI library it was built against installed?`, { cause: err });
  }
  if (cached.commAbiVersion !== COMM_ABI_VERSION) {
    const v = cached.commAbiVersion;
    cached = undefined;
    throw new Error(`spinlm: ${file} speaks comm ABI ${v}, this code expects ${COMM_ABI_VERSION}: rebuild it with \`npx node-gyp rebuild\``);
  }
  return cached;
}
