// The CUDA kernels as N-API functions (native/cuda/addon_cuda.cc; the ops bound by native/<family>_ops.cc): the `cuda` object of spinlm.node
// when that build compiled them (cmake-js where nvcc exists), or spinlm_cuda_emu.node, the same
// kernels run on the CPU by the emulator (tests: SPINLM_TEST_BACKENDS=cuda-emu).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { loadAddon, type NativeAddon, type NativeView, packageRoot } from '../native/addon.js';
import type { NativeOps } from '../native/op_list.js';

/** The device facts native/cuda reports. */
export interface CudaDeviceInfo {
  name: string;
  computeCapability: string;
  multiprocessors: number;
  totalBytes: number;
  freeBytes: number;
  /** CUDA versions as 1000 * major + 10 * minor: the driver's, the runtime's (linked statically). */
  driverVersion: number;
  runtimeVersion: number;
  /** The CUDA runtime this build was compiled against, the driver CUDA version it needs, and the oldest Linux driver release for that. */
  builtWithRuntime: number;
  driverNeeded: number;
  minDriver: string;
  cachedBytes: number;
  /** How matmul runs: cuBLAS (version, library path, input type) or the tiled kernel. */
  gemm: string;
  /** which path computeDtype 'bf16' GEMMs take (cuBLASLt, cublasGemmEx bf16, or the tiled kernel) */
  gemmBf16: string;
  /** High-water marks: bytes of live tensors, and those plus the allocator's cache. */
  peakAllocatedBytes: number;
  peakReservedBytes: number;
  emulated: boolean;
}

/** The ops of the op list with the CPU addon's arguments (the same bindings); memory and completion differ. */
export type CudaNative = NativeOps &
  Pick<NativeAddon, 'write' | 'free'> & {
    abiVersion: number;
    /** '' when the device can run, else why not (no driver, no device, ...). */
    unavailable(): string;
    info(): CudaDeviceInfo;
    /** A device buffer; `op` names the op in an out-of-memory error. */
    alloc(bytes: number, op: string): unknown;
    read<A extends ArrayBufferView>(src: NativeView, dst: A): Promise<A>;
    takeErrors(): Promise<number>;
  };

/** Bumped whenever a binding's arguments change (native/cuda/addon_cuda.cc exports the same number). */
const CUDA_ABI_VERSION = 11;

function checkAbi(n: CudaNative, from: string): CudaNative {
  if (n.abiVersion !== CUDA_ABI_VERSION) {
    throw new Error(
      `spinlm: ${from} speaks CUDA ABI ${n.abiVersion}, this code expects ${CUDA_ABI_VERSION}: rebuild it with \`npx cmake-js rebuild --out build-cmake\``,
    );
  }
  return n;
}

/** The real CUDA kernels, or null when this build of the addon has none. */
export function cudaNative(): CudaNative | null {
  const addon = loadAddon() as NativeAddon & { cuda?: CudaNative };
  return addon.cuda ? checkAbi(addon.cuda, 'the addon') : null;
}

let emu: CudaNative | undefined;
/** Where the emulator addon is looked for (SPINLM_CUDA_EMU_ADDON overrides). */
export function emulatorPath(): string {
  return process.env.SPINLM_CUDA_EMU_ADDON
    ? resolve(process.env.SPINLM_CUDA_EMU_ADDON)
    : join(packageRoot, 'build-cmake', 'Release', 'spinlm_cuda_emu.node');
}
/** Whether the emulator addon has been built. */
export function emulatorBuilt(): boolean {
  return existsSync(emulatorPath());
}
/** The kernels under the CPU emulator (build-cmake/Release/spinlm_cuda_emu.node). */
export function cudaEmulatorNative(): CudaNative {
  if (emu) return emu;
  const path = emulatorPath();
  if (!existsSync(path)) {
    throw new Error(
      `the CUDA emulator addon is not built (${path} is missing): install libboost-context-dev and run \`npx cmake-js rebuild --out build-cmake\``,
    );
  }
  emu = checkAbi(createRequire(import.meta.url)(path) as CudaNative, path);
  return emu;
}
