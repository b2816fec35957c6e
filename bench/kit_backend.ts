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
