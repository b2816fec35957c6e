// The backends every op and model test runs on: SPINLM_TEST_BACKENDS=cpu,webgpu,cuda (comma list),
// default every backend available on this machine. A backend named there that cannot run is an
// error, never a silent skip. Tests compare each backend with the float64 reference and with the CPU
// backend (`cpuReference`), and use only the op layer (no CPU-only shortcuts).
import type { Backend } from '../../src/backend/backend.js';
import { CpuBackend } from '../../src/backend/cpu/cpu_backend.js';
import { CudaBackend } from '../../src/backend/cuda/cuda_backend.js';
import { backendStatus, DEVICES, type DeviceName } from '../../src/backend/registry.js';
import { WebGpuBackend } from '../../src/backend/webgpu/webgpu_backend.js';

/** Test-only backend names: the CUDA kernels run on the CPU by the emulator (native/cuda/emu). */
const TEST_ONLY = ['cuda-emu'] as const;
type TestBackendName = DeviceName | (typeof TEST_ONLY)[number];

let cached: Backend[] | undefined;

/** A backend for tests: the CPU one poisons fresh buffers with NaN, so a skipped element fails a test. */
async function make(name: TestBackendName): Promise<Backend> {
  if (name === 'cpu') return new CpuBackend({ poison: true });
  if (name === 'cuda-emu') return new CudaBackend({ emulated: true, poison: true });
  const s = (await backendStatus()).find((x) => x.name === name)!;
  if (name === 'cuda' && s.available) return new CudaBackend({ poison: true });
  if (name === 'webgpu' && s.available) return WebGpuBackend.create({ poison: true });
  throw new Error(`SPINLM_TEST_BACKENDS names '${name}', which cannot run here: ${s.reason}`);
}

export async function testBackends(): Promise<Backend[]> {
  if (cached) return cached;
  const env = process.env.SPINLM_TEST_BACKENDS?.trim();
  let names: TestBackendName[];
  if (env) {
    names = env.split(',').map((s) => s.trim()) as TestBackendName[];
    const known: readonly string[] = [...DEVICES, ...TEST_ONLY];
    for (const n of names)
      if (!known.includes(n)) throw new Error(`SPINLM_TEST_BACKENDS: unknown backend '${n}' (known: ${known.join(', ')})`);
  } else {
    names = (await backendStatus()).filter((s) => s.available).map((s) => s.name);
  }
  cached = await Promise.all(names.map(make));
  return cached;
}

/**
 * The CUDA emulator (native/cuda/emu) runs each kernel thread as a fiber on the CPU, ~100x slower than
 * the CPU backend: the slowest model tests shrink their shapes and repeats on it (widths, lengths,
 * trials), keeping every kernel path they reach (docs/cuda.md "CI time on the emulator"). The cpu and
 * webgpu runs keep the full sizes.
 */
export const emulated = (be: Backend): boolean => be.name === 'cuda-emu';

let reference: CpuBackend | undefined;
/** The CPU backend other backends are compared with. */
export function cpuReference(): CpuBackend {
  reference ??= new CpuBackend({ poison: true });
  return reference;
}
