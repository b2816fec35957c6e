// A freshly initialized Llama-family model, as transformers initializes one: linear and embedding
// weights ~ N(0, initializer_range), biases 0, RMSNorm weights 1. Used to train a model from scratch
// (`spinlm sft` for the demo's weak model) and by tests.
import type { Backend } from '../backend/backend.js';
import { f32ArrayToBf16 } from '../tensor/bf16.js';
import { Rng } from '../util/rng.js';
import { expectedTensors, type LlamaConfig } from './config.js';
import { LlamaModel } from './llama.js';
import { type ParamDType, Weights } from './weights.js';
import * as ops from '../ops/index.js';

export interface InitOptions {
  seed: number;
  dtype?: ParamDType;
  /** Standard deviation of weights (HF initializer_range; default 0.02). */
  std?: number;
  /** Also randomize norm weights (around 1) and biases — for tests that must exercise every path. */
  randomizeAll?: boolean;
}

export function initLlama(backend: Backend, cfg: LlamaConfig, opts: InitOptions): LlamaModel {
  const rng = new Rng(opts.seed);
  const dtype = opts.dtype ?? 'f32';
  const std = opts.std ?? 0.02;
  const w = new Weights(backend, dtype);
  for (const spec of expectedTensors(cfg)) {
    const r = rng.fork(spec.name);
    const n = spec.shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    const isNorm = spec.name.endsWith('norm.weight');
    const isBias = spec.name.endsWith('.bias');
    for (let i = 0; i < n; i++) {
      // Gemma's norms scale by (1 + w): HF initializes w to 0 (Gemma3PreTrainedModel._init_weights)
      if (isNorm) data[i] = (cfg.normUnitOffset ? 0 : 1) + (opts.randomizeAll ? 0.1 * r.normal() : 0);
      else if (isBias) data[i] = opts.randomizeAll ? 0.1 * r.normal() : 0;
      else data[i] = std * r.normal();
    }
    w.params.set(
      spec.name,
      dtype === 'bf16'
        ? ops.upload(backend, { dtype: 'bf16', data: f32ArrayToBf16(data) }, spec.shape)
        : ops.upload(backend, { dtype: 'f32', data }, spec.shape),
    );
  }
  return new LlamaModel(cfg, w);
}
