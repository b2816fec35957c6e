// A model's parameters on a backend: the tensors the model computes with (f32 or bf16, HF names),
// and for training their f32 master copies (bf16 parameters only) and f32 gradients.
import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { expectedTensors, type LlamaConfig } from './config.js';
import type { CheckpointTensors } from './checkpoint_files.js';
import { SafetensorsError } from './safetensors.js';
import * as ops from '../ops/index.js';

export type ParamDType = 'f32' | 'bf16';

/** Elements per chunk when loading (4 MiB of f32, 2 MiB of bf16; view offsets stay 256-byte aligned). */
export const LOAD_CHUNK_ELEMENTS = 1 << 20;

/** Index of the first NaN or ±Inf in f32 data or bf16 bit patterns (exponent bits all ones), -1 if none. */
export function firstNonFinite(data: ArrayLike<number> & { BYTES_PER_ELEMENT: number }): number {
  if (data instanceof Uint16Array) {
    for (let i = 0; i < data.length; i++) if ((data[i] & 0x7f80) === 0x7f80) return i;
  } else if (data instanceof Float32Array || data instanceof Float64Array) {
    for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return i;
  }
  return -1;
}

function nonFiniteValue(data: ArrayLike<number>, i: number): string {
  if (data instanceof Uint16Array) return (data[i] & 0x7f) !== 0 ? 'NaN' : data[i] & 0x8000 ? '-Inf' : 'Inf';
  return String(data[i]).replace('Infinity', 'Inf');
}

export class Weights {
  /** HF name -> tensor the model computes with. */
  readonly params = new Map<string, Tensor>();
  /** HF name -> f32 master copy (bf16 parameters, once training is enabled). */
  readonly masters = new Map<string, Tensor<'f32'>>();
  /** HF name -> f32 gradient (once training is enabled). */
  readonly grads = new Map<string, Tensor<'f32'>>();

  constructor(
    readonly backend: Backend,
    readonly dtype: ParamDType,
  ) {}

  get(name: string): Tensor {
    const t = this.params.get(name);
    if (!t) throw new Error(`model has no parameter ${name}`);
    return t;
  }

  grad(name: string): Tensor<'f32'> {
    let g = this.grads.get(name);
    if (!g && this.gradsOnDemand) {
      // fused updates: a gradient exists from its first use in the backward to its update
      const p = this.masters.get(name) ?? this.params.get(name);
      if (!p) throw new Error(`model has no parameter ${name}`);
      g = ops.zeros(this.backend, 'f32', p.shape);
      this.grads.set(name, g);
    }
    if (!g) throw new Error(`no gradient for ${name}: call enableTraining() first`);
    return g;
  }

  /**
   * Set by ZeRO stage 3 (src/dist/zero.ts), whose parameters and gradients exist only while a layer
   * runs: training even when no gradient is allocated at this moment.
   */
  sharded = false;
  /**
   * Fused updates (src/optim/fused_update.ts): a unit's gradients exist only from its backward to its
   * update, so training holds none between steps.
   */
  gradsOnDemand = false;

  get training(): boolean {
    return this.sharded || this.gradsOnDemand || this.grads.size > 0;
  }

  /**
   * Allocates zeroed gradients and, for bf16 parameters, f32 masters (exact copies of the bf16
   * values). With `grads: false` only the masters: the gradients are allocated per unit while it
   * trains (fused updates), never all at once.
   */
  enableTraining(opts: { grads?: boolean } = {}): void {
    if (this.training) return;
    const grads = opts.grads ?? true;
    for (const [name, p] of this.params) {
      if (grads) {
        const g = ops.empty(this.backend, 'f32', p.shape);
        ops.fill(g, 0);
        this.grads.set(name, g);
      }
      if (p.dtype === 'bf16') this.masters.set(name, ops.cast(p, 'f32'));
    }
    if (!grads) this.gradsOnDemand = true;
  }

  zeroGrad(): void {
    for (const g of this.grads.values()) ops.fill(g, 0);
  }

  /** Parameter count (tied tensors once). */
  count(): number {
    let n = 0;
    for (const p of this.params.values()) n += p.numel;
    return n;
  }

  free(): void {
    for (const m of [this.params, this.masters, this.grads]) {
      for (const t of m.values()) if (!t.base) t.free(); // views into a sharded engine's buffers: the engine frees those
      m.clear();
    }
  }

  /** Reads every tensor the config needs from a checkpoint, checking names and shapes. */
  static async load(backend: Backend, cfg: LlamaConfig, files: CheckpointTensors, dtype: ParamDType): Promise<Weights> {
    const specs = expectedTensors(cfg);
    const wanted = new Set(specs.map((s) => s.name));
    const missing = specs.filter((s) => !files.has(s.name)).map((s) => s.name);
    if (missing.length) {
      throw new SafetensorsError(
        files.dir,
        missing[0],
        `is missing from the checkpoint (${missing.length} missing: ${missing.slice(0, 4).join(', ')}${missing.length > 4 ? ', ...' : ''}); config.json and the weights disagree`,
      );
    }
    // rotary inv_freq buffers are derived, not weights; anything else unexpected means a different architecture
    const extra = files
      .names()
      .filter((n) => !wanted.has(n) && !n.endsWith('rotary_emb.inv_freq') && !(cfg.tieWordEmbeddings && n === 'lm_head.weight'));
    if (extra.length)
      throw new SafetensorsError(
        files.dir,
        extra[0],
        `is not a tensor of a ${cfg.modelType} model with this config.json (${extra.length} unexpected)`,
      );
    const w = new Weights(backend, dtype);
    try {
      for (const s of specs) {
        const info = files.info(s.name);
        if (info.shape.length !== s.shape.length || info.shape.some((d, i) => d !== s.shape[i])) {
          throw new SafetensorsError(
            files.dir,
            s.name,
            `has shape [${info.shape.join(', ')}], config.json implies [${s.shape.join(', ')}]`,
          );
        }
        // streamed in chunks straight into the device tensor: no host copy of the whole model
        const t = ops.empty(backend, dtype, s.shape);
        w.params.set(s.name, t);
        await files.readTensorChunks(s.name, dtype, LOAD_CHUNK_ELEMENTS, (data, offset) => {
          const bad = firstNonFinite(data);
          if (bad >= 0) {
            throw new SafetensorsError(
              files.dir,
              s.name,
              `element ${offset + bad} is ${nonFiniteValue(data, bad)}: the weights hold NaN or Inf (a diverged or damaged checkpoint), so every result would be NaN`,
            );
          }
          const part = data.length === t.numel ? t : t.view(offset, [data.length]);
          if (dtype === 'bf16') ops.write(part as Tensor<'bf16'>, { dtype, data: data as Uint16Array });
          else ops.write(part as Tensor<'f32'>, { dtype, data: data as Float32Array });
        });
      }
    } catch (e) {
      w.free();
      throw e;
    }
    return w;
  }
}
