// The CUDA backend: tensors in device memory (a caching allocator in native/cuda/memory.cc), kernels
// in native/cuda (.cu files; GEMMs through cuBLAS, opened at run time), one stream. The same class
// drives the real GPU ('cuda') and the CPU emulator of the same kernels ('cuda-emu', tests). Only math: arguments arrive
// checked by the op layer (src/ops); the N-API layer still checks handles and byte ranges. read() and
// takeErrors() resolve from a completion thread, so they never block the event loop.
import { allocHost, type DType, dtypeSize, type HostArrayOf, type HostData } from '../../tensor/dtype.js';
import { Tensor } from '../../tensor/tensor.js';
import type { Backend, BackendInfo } from '../backend.js';
import { POISON_BITS } from '../native/addon.js';
import { NativeKernels } from '../native_kernels.js';
import { cudaEmulatorNative, cudaNative, type CudaNative } from './native.js';

export class CudaBackend extends NativeKernels implements Backend {
  readonly name: 'cuda' | 'cuda-emu';
  readonly native: CudaNative;
  protected readonly nativeBf16Compute = 'all'; // every bf16-compute GEMM form: gemm.cu (cuBLASLt on a GPU), gemm_rows_tc.cu (row-invariant)
  protected override readonly nativeBf16AttentionBackward = true; // native/cuda/flash_bwd.cu (tensor cores)
  /** attention's computeDtype 'bf16': the tensor-core flash kernel (native/cuda/flash_fwd.cu) */
  protected override readonly nativeBf16Attention = true;
  /** Fill every new buffer with NaN (tests: a kernel that skips an element is caught). */
  readonly poison: boolean;

  /** `emulated`: the kernels run on the CPU through the emulator (no GPU needed). */
  constructor(opts: { emulated?: boolean; poison?: boolean } = {}) {
    super();
    const native = opts.emulated ? cudaEmulatorNative() : cudaNative();
    if (!native) throw new Error('this build of spinlm has no CUDA kernels');
    const why = native.unavailable();
    if (why) throw new Error(why);
    this.native = native;
    this.name = opts.emulated ? 'cuda-emu' : 'cuda';
    this.poison = opts.poison ?? false;
  }

  info(): BackendInfo {
    const cudaVersion = (v: number) => `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
    const d = this.native.info();
    return {
      name: this.name,
      device: `${d.name} (compute capability ${d.computeCapability}, ${d.multiprocessors} SMs)`,
      memoryBytes: d.totalBytes,
      details: [
        `memory: ${(d.totalBytes / 2 ** 30).toFixed(1)} GiB, ${(d.freeBytes / 2 ** 30).toFixed(1)} GiB free`,
        `CUDA driver ${cudaVersion(d.driverVersion)}, runtime ${cudaVersion(d.runtimeVersion)} (built with ${cudaVersion(d.builtWithRuntime)}: needs a CUDA ${cudaVersion(d.driverNeeded)} driver, Linux driver ${d.minDriver} or newer)`,
        `GEMM: ${d.gemm}`,
        `bf16-compute GEMM: ${d.gemmBf16}`,
        `cached device memory: ${(d.cachedBytes / 2 ** 20).toFixed(0)} MiB`,
      ],
    };
  }

  protected output<D extends DType>(dtype: D, shape: readonly number[], op: string): Tensor<D> {
    return this.alloc(dtype, shape, op);
  }

  private alloc<D extends DType>(dtype: D, shape: readonly number[], op: string): Tensor<D> {
    const bytes = new Tensor(this, dtype, shape, null).byteLength;
    const out = new Tensor(this, dtype, shape, this.native.alloc(bytes, op));
    if (this.poison) this.fillBits(out, POISON_BITS[dtype]);
    return out;
  }

  empty<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
    return this.alloc(dtype, shape, 'empty');
  }

  write<D extends DType>(t: Tensor<D>, host: HostData<D>): void {
    this.native.write(t, host.data);
  }

  async read<D extends DType>(t: Tensor<D>): Promise<HostArrayOf<D>> {
    return this.native.read(t, allocHost(t.dtype, t.numel));
  }

  takeErrors(): Promise<number> {
    return this.native.takeErrors();
  }

  free(t: Tensor): void {
    this.native.free(t.handle);
  }

  fillBits(t: Tensor, bits: number): void {
    this.native.fill(t, t.numel, dtypeSize(t.dtype) as 2 | 4, bits >>> 0);
  }

  cast(t: Tensor, out: Tensor): void {
    this.native.cast(t, t.dtype, out, out.dtype, t.numel);
  }
}

let defaultCuda: CudaBackend | undefined;
/** The process-wide CUDA backend (throws when the GPU cannot run: see cudaStatus()). */
export function cudaBackend(): CudaBackend {
  defaultCuda ??= new CudaBackend();
  return defaultCuda;
}

/** Whether the real CUDA backend can run here, and why not. */
export function cudaStatus(): { available: true; info: BackendInfo } | { available: false; reason: string } {
  let native: CudaNative | null;
  try {
    native = cudaNative();
  } catch (err) {
    return { available: false, reason: (err as Error).message.split('\n')[0] };
  }
  if (!native) {
    return {
      available: false,
      reason: 'not compiled in: this build of spinlm has no CUDA kernels (build it with `npx cmake-js rebuild` where nvcc is installed)',
    };
  }
  const why = native.unavailable();
  if (why) return { available: false, reason: why };
  return { available: true, info: cudaBackend().info() };
}
