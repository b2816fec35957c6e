// The CPU backend: tensors in native 64-byte-aligned memory, kernels in native/cpu (C++, all cores,
// OpenBLAS for GEMMs). Only math: arguments arrive checked by the op layer (src/ops). The N-API layer
// still checks every handle and byte range, so no call from JS can touch memory outside a buffer.
import { availableParallelism } from 'node:os';
import { allocHost, type DType, dtypeSize, type HostArrayOf, type HostData } from '../../tensor/dtype.js';
import { Tensor } from '../../tensor/tensor.js';
import type { Backend, BackendInfo } from '../backend.js';
import { loadAddon, type NativeAddon, POISON_BITS } from '../native/addon.js';
import { NativeKernels } from '../native_kernels.js';

export class CpuBackend extends NativeKernels implements Backend {
  readonly name = 'cpu';
  readonly native: NativeAddon;
  protected readonly nativeBf16Compute = 'linear';
  /** Fill every new buffer with NaN (tests: a kernel that skips an element is caught). */
  readonly poison: boolean;

  constructor(opts: { poison?: boolean } = {}) {
    super();
    this.native = loadAddon();
    this.poison = opts.poison ?? false;
  }

  /** Kernel threads (SPINLM_NUM_THREADS at start-up, else all cores). */
  get threads(): number {
    return this.native.numThreads();
  }
  set threads(n: number) {
    this.native.setNumThreads(n);
  }

  /** OpenBLAS's kernel set ("SkylakeX", "Haswell", ...): picked from the CPU at load, or OPENBLAS_CORETYPE. */
  blasCore(): string {
    return this.native.blasCore();
  }

  info(): BackendInfo {
    return {
      name: this.name,
      device: `CPU, ${this.threads} kernel thread(s) of ${availableParallelism()} core(s)`,
      details: ['GEMM: OpenBLAS', `recycled host memory held: ${(this.native.cachedBytes() / 2 ** 20).toFixed(0)} MiB`],
    };
  }

  empty<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
    const bytes = new Tensor(this, dtype, shape, null).byteLength;
    const out = new Tensor(this, dtype, shape, this.native.alloc(bytes));
    if (this.poison) this.fillBits(out, POISON_BITS[dtype]);
    return out;
  }

  protected output<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
    return this.empty(dtype, shape);
  }

  write<D extends DType>(t: Tensor<D>, host: HostData<D>): void {
    this.native.write(t, host.data);
  }

  async read<D extends DType>(t: Tensor<D>): Promise<HostArrayOf<D>> {
    const out = allocHost(t.dtype, t.numel);
    this.native.read(t, out);
    return out;
  }

  async takeErrors(): Promise<number> {
    return this.native.takeErrors();
  }

  free(t: Tensor): void {
    this.native.free(t.handle);
  }

  releaseCached(): void {
    this.native.releaseCached();
  }

  fillBits(t: Tensor, bits: number): void {
    this.native.fill(t, t.numel, dtypeSize(t.dtype) as 2 | 4, bits >>> 0);
  }

  cast(t: Tensor, out: Tensor): void {
    this.native.cast(t, t.dtype, out, out.dtype, t.numel);
  }
}

let defaultCpu: CpuBackend | undefined;
/** The process-wide CPU backend. */
export function cpuBackend(): CpuBackend {
  defaultCpu ??= new CpuBackend();
  return defaultCpu;
}
