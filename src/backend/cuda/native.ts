// The CUDA kernels as N-API functions (native/cuda/addon_cuda.cc): the `cuda` object of spinlm.node
// when that build compiled them (cmake-js where nvcc exists), or spinlm_cuda_emu.node, the same
// kernels run on the CPU by the emulator (tests: SPINLM_TEST_BACKENDS=cuda-emu).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { loadAddon, type NativeAddon, type NativeView, packageRoot } from '../cpu/addon.js';

/** The device facts native/cuda reports. */
export interface CudaDeviceInfo {
  name: string;
  computeCapability: string;
  multiprocessors: number;
  totalBytes: number;
  freeBytes: number;
  driverVersion: number;
  runtimeVersion: number;
  cachedBytes: number;
  /** How matmul runs: cuBLAS (version, library path, input type) or the tiled kernel. */
  gemm: string;
  /** High-water marks: bytes of live tensors, and those plus the allocator's cache. */
  peakAllocatedBytes: number;
  peakReservedBytes: number;
  emulated: boolean;
}

type KernelNames =
  | 'fill'
  | 'cast'
  | 'logprobGather'
  | 'logprobGatherBackward'
  | 'sequenceLogprob'
  | 'sequenceLogprobBackward'
  | 'spinLoss'
  | 'accumulate'
  | 'sampleTokens'
  | 'rmspropStep'
  | 'adamwStep'
  | 'sumSquares'
  | 'clipCoefficient'
  | 'scaleInPlace'
  | 'matmul'
  | 'matmulRowsMany'
  | 'embedding'
  | 'embeddingBackward'
  | 'rmsnorm'
  | 'rmsnormBackward'
  | 'rope'
  | 'attention'
  | 'attentionBackward'
  | 'attentionDecode'
  | 'scatterRows'
  | 'swiglu'
  | 'swigluBackward'
  | 'add'
  | 'addBias'
  | 'biasBackward'
  | 'write'
  | 'free';

/** Same kernel functions and arguments as the CPU addon; memory and completion differ. */
export type CudaNative = Pick<NativeAddon, KernelNames> & {
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
const CUDA_ABI_VERSION = 3;

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
