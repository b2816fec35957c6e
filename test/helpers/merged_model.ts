// The check the LoRA file tests share: a model directory written by spinlm equals a base plus PEFT
// adapters merged in-process (src/model/lora_merge.ts), tensor for tensor, bit for bit.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { CpuBackend } from '../../src/backend/cpu/cpu_backend.js';
import { LlamaModel } from '../../src/model/llama.js';
import { mergeAdapterIntoWeights } from '../../src/model/lora_merge.js';
import { readPeftAdapter } from '../../src/model/peft.js';
import { openSafetensors } from '../../src/model/safetensors.js';
import * as ops from '../../src/ops/index.js';

/** `modelDir/model.safetensors` holds `base` + the adapters of `adapterDirs` merged as one sum; returns its tensors' dtypes. */
export async function assertMergedOf(modelDir: string, base: string, adapterDirs: readonly string[]): Promise<Set<string>> {
  const ref = await LlamaModel.load(new CpuBackend(), base);
  const f = await openSafetensors(join(modelDir, 'model.safetensors'));
  const dtypes = new Set<string>();
  try {
    const adapters = [];
    for (const d of adapterDirs) adapters.push(await readPeftAdapter(d, ref.cfg));
    await mergeAdapterIntoWeights(ref.weights, ref.cfg, ...adapters);
    for (const name of f.names()) {
      dtypes.add(f.info(name).dtype);
      assert.deepEqual((await f.readTensor(name)).data, await ops.read(ref.weights.get(name)), `${modelDir}: ${name}`);
    }
  } finally {
    await f.close();
    ref.weights.free();
  }
  return dtypes;
}
