// A model's LoRA adapter in and out of PEFT files (docs/lora.md, "Files"): `--adapter DIR` attaches a
// PEFT adapter to a loaded base unmerged (the linear layers add s (x A^T) B^T: src/model/lora_linear.ts),
// so scoring, generation and training see base + adapter; saveAdapter writes the model's adapter in
// PEFT's layout; detachAdapter takes it off (to merge it: src/model/lora_merge.ts).
import type { Tensor } from '../tensor/tensor.js';
import type { LlamaModel } from './llama.js';
import { adapterTensors, type LoraConfig } from './lora.js';
import { mergeAdapterIntoWeights } from './lora_merge.js';
import { type HostAdapter, readPeftAdapter, writePeftAdapter } from './peft.js';
import * as ops from '../ops/index.js';

/** Adds `adapter` to the model's weights (as Weights.addLora does for a fresh one, then its tensors). */
export function attachAdapter(model: LlamaModel, adapter: HostAdapter): void {
  model.weights.addLora(model.cfg, adapter.lora, 0);
  try {
    for (const s of adapterTensors(model.cfg, adapter.lora)) {
      const t = adapter.tensors.get(s.name);
      if (!t) throw new Error(`adapter has no tensor ${s.name}`);
      ops.write(model.weights.get(s.name) as Tensor<'f32'>, { dtype: 'f32', data: t.data });
    }
  } catch (e) {
    detach(model);
    throw e;
  }
}

/** Reads the PEFT adapter in `dir` (readPeftAdapter's checks against the model's config) and attaches it. */
export async function loadAdapter(model: LlamaModel, dir: string): Promise<{ lora: LoraConfig; baseModel: string | null }> {
  const adapter = await readPeftAdapter(dir, model.cfg);
  attachAdapter(model, adapter);
  return { lora: adapter.lora, baseModel: adapter.baseModel };
}

/** Writes the model's adapter (f32, PEFT's names) and adapter_config.json into dir. */
export async function saveAdapter(model: LlamaModel, dir: string, baseModel: string): Promise<void> {
  const lora = model.weights.lora;
  if (!lora) throw new Error('saveAdapter: the model carries no adapter');
  const tensors = adapterTensors(model.cfg, lora.config).map((s) => ({
    name: s.name,
    shape: s.shape,
    data: async () => (await ops.read(model.weights.get(s.name))) as Float32Array,
  }));
  await writePeftAdapter(dir, model.cfg, lora.config, tensors, { baseModel });
}

/** Frees the adapter's tensors (parameters, gradients, masters) and takes LoRA off the weights. */
function detach(model: LlamaModel): void {
  const w = model.weights;
  if (!w.lora) return;
  for (const s of adapterTensors(model.cfg, w.lora.config)) {
    for (const m of [w.params, w.grads, w.masters]) {
      m.get(s.name)?.free();
      m.delete(s.name);
    }
  }
  w.lora = null;
}

/** Takes the model's adapter off (its tensors to the host first) and returns it. */
export async function detachAdapter(model: LlamaModel): Promise<HostAdapter> {
  const lora = model.weights.lora;
  if (!lora) throw new Error('detachAdapter: the model carries no adapter');
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const s of adapterTensors(model.cfg, lora.config))
    tensors.set(s.name, { shape: [...s.shape], data: (await ops.read(model.weights.get(s.name))) as Float32Array });
  detach(model);
  return { lora: lora.config, tensors };
}

/** Merges the model's own adapter into its base weights (W + s B A, float64, one rounding) and takes the adapter off. */
export async function mergeOwnAdapter(model: LlamaModel): Promise<HostAdapter> {
  const adapter = await detachAdapter(model);
  await mergeAdapterIntoWeights(model.weights, model.cfg, adapter);
  return adapter;
}
