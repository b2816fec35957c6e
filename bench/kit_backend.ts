// The backend a GPU-kit script runs on: `cuda` on a GPU box, `cuda-emu` (the CUDA kernels run on the
// CPU by the emulator, poisoned outputs) for the kit's dry run here, `cpu` for comparison.
import type { Backend } from '../src/backend/backend.js';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import { createBackend } from '../src/backend/registry.js';

export { PYTHON } from './harness.js';

export async function kitBackend(name: string): Promise<Backend> {
  if (name === 'cuda-emu') return new CudaBackend({ emulated: true, poison: true });
  if (name === 'cuda' || name === 'cpu') return (await createBackend(name)).backend;
  throw new Error(`kit backend must be cuda, cuda-emu or cpu, not ${name}`);
}

/**
 * Median wall milliseconds of one call of `fn` (enqueued work, then a stream synchronization through
 * takeErrors), after one warm-up. `reps` calls per sample amortize the synchronization of short kernels.
 */
export async function timeMs(be: Backend, fn: () => unknown, iters: number, reps = 1): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i <= iters; ++i) {
    const t0 = performance.now();
    for (let r = 0; r < reps; ++r) await fn();
    await be.takeErrors(); // synchronizes the stream
    if (i > 0) times.push((performance.now() - t0) / reps);
  }
  return times.sort((a, b) => a - b)[Math.floor(times.length / 2)];
}
