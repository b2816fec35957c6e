// A model's parameters on a backend: the tensors the model computes with (f32 or bf16, HF names),
// and for training their f32 master copies (bf16 parameters only) and f32 gradients.
import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { checkpointLayout, type LlamaConfig } from './config.js';
import type { CheckpointTensors } from './checkpoint_files.js';
import { SafetensorsError } from './safetensors.js';
import { initAdapterTensors, isAdapterName, type LoraConfig, LoraState } from './lora.js';
import type { Seed } from '../util/rng.js';
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
    if (this.frozen(name)) throw new Error(`${name} is frozen (LoRA trains the adapters only): it has no gradient`);
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

  /** LoRA (src/model/lora.ts): the adapters train, every other parameter is frozen. null: every parameter trains. */
  lora: LoraState | null = null;

  /** A frozen parameter: with LoRA, every base tensor (no gradient, no master, no optimizer state, never written). */
  frozen(name: string): boolean {
    return this.lora !== null && !isAdapterName(name);
  }

  /** The names that train: every parameter, or with LoRA the adapter tensors only (params order). */
  trainableNames(): string[] {
    return [...this.params.keys()].filter((n) => !this.frozen(n));
  }

  /** The gradient to accumulate into while training, undefined when not training or frozen. */
  gradOf(name: string): Tensor<'f32'> | undefined {
    return this.training && !this.frozen(name) ? this.grad(name) : undefined;
  }

  /**
   * Adds LoRA adapters (f32, initialised as PEFT does: lora.ts initAdapterTensors) to these weights
   * and freezes the base. Before enableTraining.
   */
  addLora(cfg: LlamaConfig, config: LoraConfig, seed: Seed): LoraState {
    if (this.lora) throw new Error('the model already has LoRA adapters');
    if (this.training) throw new Error('addLora: call it before enableTraining()');
    const state = new LoraState(cfg, config);
    for (const [name, t] of initAdapterTensors(this.backend, cfg, config, seed)) this.params.set(name, t);
    this.lora = state;
    return state;
  }

  get training(): boolean {
    return this.sharded || this.gradsOnDemand || this.grads.size > 0;
  }

  /**
   * Allocates zeroed gradients and, for bf16 parameters, f32 masters (exact copies of the bf16
   * values). With `grads: false` only the masters: the gradients are allocated per unit while it
   * trains (fused updates), never all at once. With LoRA only the adapters (f32: no masters) get
   * gradients; the frozen base gets neither.
   */
  enableTraining(opts: { grads?: boolean } = {}): void {
    if (this.training) return;
    const grads = opts.grads ?? true;
    for (const [name, p] of this.params) {
      if (this.frozen(name)) continue;
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

  /**
   * Reads every tensor the config needs from a checkpoint, checking names and shapes. A fused
   * checkpoint tensor (phi3's qkv_proj, gate_up_proj: checkpointLayout) is split into its parts as it
   * streams in.
   */
  static async load(backend: Backend, cfg: LlamaConfig, files: CheckpointTensors, dtype: ParamDType): Promise<Weights> {
    const specs = checkpointLayout(cfg);
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
        // streamed in chunks straight into the device tensors: no host copy of the whole model
        const sinks = s.parts.map((part) => {
          const t = ops.empty(backend, dtype, part.shape);
          w.params.set(part.name, t);
          return new ChunkSink(t);
        });
        const ends = sinks.map((_, i) => sinks.slice(0, i + 1).reduce((a, k) => a + k.t.numel, 0));
        await files.readTensorChunks(s.name, dtype, LOAD_CHUNK_ELEMENTS, (data, offset) => {
          const bad = firstNonFinite(data);
          if (bad >= 0) {
            throw new SafetensorsError(
              files.dir,
              s.name,
              `element ${offset + bad} is ${nonFiniteValue(data, bad)}: the weights hold NaN or Inf (a diverged or damaged checkpoint), so every result would be NaN`,
            );
          }
          // the part(s) this chunk covers: [offset, offset + length) of the stacked parts
          for (let i = 0, start = 0; i < sinks.length; start = ends[i], i++) {
            const lo = Math.max(offset, start),
              hi = Math.min(offset + data.length, ends[i]);
            if (lo < hi) sinks[i].push(lo === offset && hi === offset + data.length ? data : data.subarray(lo - offset, hi - offset));
          }
        });
        for (const k of sinks) k.finish();
      }
    } catch (e) {
      w.free();
      throw e;
    }
    return w;
  }
}

type HostChunk = Float32Array | Uint16Array;

/**
 * Writes consecutive pieces of a tensor's contents to the device in order. Pieces that start on a
 * chunk boundary and fill the chunk (or end the tensor) go straight to a view; others (a fused
 * tensor's split points fall anywhere) gather in one chunk-sized host buffer first, so every view
 * starts at a multiple of LOAD_CHUNK_ELEMENTS (256-byte aligned).
 */
class ChunkSink {
  private filled = 0;
  private stage: HostChunk | null = null;
  private staged = 0;

  constructor(readonly t: Tensor) {}

  push(data: HostChunk): void {
    let at = 0;
    while (at < data.length) {
      const n = Math.min(LOAD_CHUNK_ELEMENTS, this.t.numel - this.filled);
      const take = Math.min(n - this.staged, data.length - at);
      if (this.staged === 0 && take === n) {
        this.write(at === 0 && take === data.length ? data : data.subarray(at, at + take));
      } else {
        this.stage ??= data instanceof Uint16Array ? new Uint16Array(LOAD_CHUNK_ELEMENTS) : new Float32Array(LOAD_CHUNK_ELEMENTS);
        this.stage.set(data.subarray(at, at + take), this.staged);
        this.staged += take;
        if (this.staged === n) {
          this.staged = 0;
          this.write(this.stage.subarray(0, n));
        }
      }
      at += take;
    }
  }

  finish(): void {
    if (this.filled !== this.t.numel || this.staged !== 0)
      throw new Error(`internal: ${this.filled} of ${this.t.numel} elements written (${this.staged} staged)`);
  }

  private write(data: HostChunk): void {
    const part = data.length === this.t.numel ? this.t : this.t.view(this.filled, [data.length]);
    if (data instanceof Uint16Array) ops.write(part as Tensor<'bf16'>, { dtype: 'bf16', data });
    else ops.write(part as Tensor<'f32'>, { dtype: 'f32', data });
    this.filled += data.length;
  }
}
