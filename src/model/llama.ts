// The Llama-family model (llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text): the embedding, the layers
// (layer.ts: explicit forward and backward per layer, in the style of llm.c), the final norm and the LM head,
// loading and saving. With `recompute`, a layer keeps only its input and reruns its forward inside the backward.
//
// Shapes: R rows (sequences) of L positions, T = R * L tokens; H hidden, nH / nKV heads, hd head dim,
// I intermediate, V vocabulary. Activations are f32 [T, *]; weights f32 or bf16 (HF names).
import { makeDirs } from '../util/atomic.js';
import type { Backend, ComputeDtype } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { openCheckpointTensors, writeCheckpointTensors } from './checkpoint_files.js';
import { EMBED_UNIT, HEAD_UNIT, type ParamHook } from './param_units.js';
import { checkpointLayout, type LlamaConfig, loadConfig, writeConfig } from './config.js';
import { ropePositionLimit } from './rope.js';
import { DecoderLayers, freeAll, type LayerSaved } from './layer.js';
import { type ParamDType, Weights } from './weights.js';
import { finiteOrThrow } from './divergence.js';

export type { ParamHook } from './param_units.js';
import * as ops from '../ops/index.js';

/** The token tensors of one forward pass. */
export interface ModelInput {
  rows: number;
  length: number;
  /** i32 [T] token ids. */
  inputIds: Tensor<'i32'>;
  /** i32 [T] position ids. */
  positions: Tensor<'i32'>;
  /** i32 [R, L]: 1 = a key to attend to (0: padding, or an EOS inside the text). */
  attentionMask: Tensor<'i32'>;
  /**
   * i32 [R, L, 3]: the packed / pair layout's attention spans (AttentionOpts.spans, src/spin/pack.ts);
   * absent: each row is one causal sequence.
   */
  spans?: Tensor<'i32'>;
  /** With spans: the most positions one sequence spans (position ids are below it; L may be larger). */
  seqLength?: number;
}

/** What the backward of the layers and the final norm needs. */
interface TrunkState {
  input: ModelInput;
  layers: LayerSaved[];
  xFinal: Tensor<'f32'>; // [T, H] last layer output
  rstdFinal: Tensor<'f32'>; // [T]
}

/** Saved state of a whole forward pass, consumed (and freed) by backward(). */
export interface ForwardState extends TrunkState {
  hFinal: Tensor<'f32'>; // [T, H] after the final norm
}

/** The positions that carry a loss: rows i32 [M] (indices into the T positions) and their targets i32 [M]. */
export interface LossRows {
  rows: Tensor<'i32'>;
  targets: Tensor<'i32'>;
}

/** Saved state of forwardLogprobs, consumed (and freed) by backwardLogprobs(). */
export interface LogprobState extends TrunkState {
  hSel: Tensor<'f32'>; // [M, H] the loss rows after the final norm
  lse: Tensor<'f32'>; // [M]
  loss: LossRows;
}

export interface LoadOptions {
  /** Parameter dtype; default: bf16 if the file is bf16, else f32. */
  dtype?: ParamDType;
}

/** The parts' contents one after the other, in 4 MiB chunks (a fused checkpoint tensor). */
async function* joinChunks(parts: readonly Tensor[]): AsyncGenerator<Float32Array | Uint16Array | Int32Array, void, undefined> {
  for (const t of parts) yield* ops.readChunks(t);
}

export class LlamaModel extends DecoderLayers {
  /** Rerun each layer's forward in the backward instead of keeping its activations. */
  recompute = false;
  /**
   * Forward passes with the row-invariant matmul and head (docs/ops.md "Row-invariant matmul"): with the
   * spans kernels, a sequence's log-prob is then bit for bit independent of what it is packed with and of
   * the batch size. Default: on for the CPU (the packed row-invariant GEMM runs at ~0.9x OpenBLAS at
   * training shapes, bench/RESULTS.md) and WebGPU (its GEMM is row-invariant anyway); off for CUDA, whose
   * row-invariant GEMM is a tiled fallback far below cuBLAS (issue 28): there u = 0 at an iteration's
   * start rests on the reference pass packing as the first epoch does (docs/algorithm.md).
   */
  rowInvariant: boolean;
  /** Set while ZeRO stage 3 trains this model; null otherwise. */
  paramHook: ParamHook | null = null;

  constructor(cfg: LlamaConfig, weights: Weights) {
    super(cfg, weights);
    this.rowInvariant = weights.backend.name !== 'cuda';
  }

  get backend(): Backend {
    return this.weights.backend;
  }

  /** Longest sequence this model runs: max_position_embeddings (longrope: its original length). */
  get maxPositions(): number {
    return ropePositionLimit(this.cfg.maxPositionEmbeddings, this.cfg.ropeScaling);
  }

  static async load(backend: Backend, dir: string, opts: LoadOptions = {}): Promise<LlamaModel> {
    const cfg = await loadConfig(dir);
    const files = await openCheckpointTensors(dir);
    try {
      const first = files.info('model.embed_tokens.weight');
      const dtype = opts.dtype ?? (first.dtype === 'BF16' ? 'bf16' : 'f32');
      return new LlamaModel(cfg, await Weights.load(backend, cfg, files, dtype));
    } finally {
      await files.close();
    }
  }

  /**
   * Writes config.json and the weights (HF names and layout, the parameters' dtype) into dir; phi3's
   * split q/k/v and gate/up are joined again into qkv_proj and gate_up_proj (checkpointLayout).
   */
  async save(dir: string, opts: { maxShardBytes?: number } = {}): Promise<void> {
    // the base alone would drop what LoRA trained: a LoRA model is written as PEFT adapter files or
    // merged (docs/lora.md), never silently as its untouched base
    if (this.weights.lora)
      throw new Error(
        'this model carries LoRA adapters: save them as PEFT adapter files or merge them first (save() writes the base only)',
      );
    await makeDirs(dir);
    await writeConfig(dir, { ...this.cfg, torchDtype: this.weights.dtype === 'bf16' ? 'bfloat16' : 'float32' });
    // each tensor reaches the host in 4 MiB chunks: saving holds no whole-tensor copy (docs/memory.md)
    // every element is checked on its way out: a diverged model (NaN / Inf) is never written (model/divergence.ts)
    const tensors = checkpointLayout(this.cfg).map((s) => {
      const parts = s.parts.map((p) => this.weights.get(p.name));
      return { name: s.name, dtype: parts[0].dtype, shape: s.shape, data: () => finiteOrThrow(s.name, joinChunks(parts)) };
    });
    await writeCheckpointTensors(dir, tensors, { maxShardBytes: opts.maxShardBytes });
  }

  /** Token embeddings of ids i32 [T]: f32 [T, H], times sqrt(hidden) for Gemma (rounded to f32, the compute dtype, as HF's normalizer). */
  embed(ids: Tensor<'i32'>): Tensor<'f32'> {
    const x = ops.embedding(ids, this.p('model.embed_tokens.weight'));
    if (this.cfg.embedScale !== 1) ops.scaleInPlace(x, Math.fround(this.cfg.embedScale));
    return x;
  }

  /** The final RMSNorm of h [T, H]. */
  finalNorm(h: Tensor<'f32'>): { y: Tensor<'f32'>; rstd: Tensor<'f32'> } {
    return this.norm(h, 'model.norm.weight');
  }

  /** Gemma 2's final-logit soft-cap on logits [R, V] in place (the fused head caps inside its kernels). */
  capLogits(logits: Tensor<'f32'>): void {
    if (this.cfg.finalSoftcap) ops.softcapInPlace(logits, this.cfg.finalSoftcap);
  }

  /** The LM head's parameter: lm_head.weight, or the embedding when tied. */
  private get lmName(): string {
    return this.cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
  }

  private lmHead(): Tensor {
    return this.p(this.lmName);
  }

  private checkInput(input: ModelInput): void {
    const { rows } = input;
    if (input.inputIds.numel !== rows * input.length)
      throw new RangeError(`inputIds hold ${input.inputIds.numel} tokens, expected ${rows} x ${input.length}`);
    // packed rows hold several sequences: the longest of them is what the positions must cover
    const length = input.spans ? (input.seqLength ?? input.length) : input.length;
    if (length > this.cfg.maxPositionEmbeddings)
      throw new RangeError(`sequence length ${length} exceeds max_position_embeddings ${this.cfg.maxPositionEmbeddings}`);
    if (length > this.maxPositions)
      throw new RangeError(
        `sequence length ${length} exceeds longrope's original_max_position_embeddings ${this.maxPositions} (spinlm uses short_factor only)`,
      );
  }

  private layerForward(
    i: number,
    x: Tensor<'f32'>,
    input: ModelInput,
    keep: boolean,
    computeDtype: ComputeDtype = 'f32',
  ): { out: Tensor<'f32'>; saved: LayerSaved } {
    const c = this.cfg;
    const { rows: R, length: L } = input;
    return this.layer(
      i,
      x,
      input.positions,
      keep,
      (q, k, v) => {
        const { out, lse } = ops.attention(
          q.reshape([R, L, c.numHeads, c.headDim]),
          k.reshape([R, L, c.numKvHeads, c.headDim]),
          v.reshape([R, L, c.numKvHeads, c.headDim]),
          input.attentionMask,
          this.attentionOptsFor(i, input),
        );
        return { att: out, lse };
      },
      { computeDtype, rowInvariant: this.rowInvariant },
    );
  }

  /**
   * Forward pass -> logits f32 [T, V] (every position through the LM head: generation's tests and the
   * library's users; training and scoring use forwardLogprobs). With `train`, also the state backward()
   * needs (else activations are freed layer by layer and `state` is null). `computeDtype` 'bf16' (not
   * with `train`: training computes in f32) rounds the linear layers' inputs to bf16 (docs/ops.md "bf16 compute").
   */
  forward(
    input: ModelInput,
    opts: { train?: boolean; computeDtype?: ComputeDtype } = {},
  ): { logits: Tensor<'f32'>; state: ForwardState | null } {
    const computeDtype = opts.computeDtype ?? 'f32';
    const t = this.trunk(input, !!opts.train, computeDtype);
    const logits = ops.matmul(t.hFinal, this.lmHead(), { transB: true, computeDtype });
    this.capLogits(logits);
    this.releaseHead('forward');
    if (!opts.train) {
      freeAll(t.hFinal);
      return { logits, state: null };
    }
    return { logits, state: { ...t.state, hFinal: t.hFinal } };
  }

  /**
   * Forward pass to the log-probs of the positions that carry a loss: `loss.rows` i32 [M] indexes the T
   * positions, `loss.targets` i32 [M] their next tokens. Only those M rows reach the LM head, which is
   * fused with the log-prob (ops.headLogprob): no [T, V] logits exist. logp and lse f32 [M]; with
   * `train`, also the state backwardLogprobs() needs.
   */
  forwardLogprobs(
    input: ModelInput,
    loss: LossRows,
    opts: { train?: boolean; computeDtype?: ComputeDtype } = {},
  ): { logp: Tensor<'f32'>; state: LogprobState | null } {
    const computeDtype = opts.computeDtype ?? 'f32';
    const t = this.trunk(input, !!opts.train, computeDtype);
    const hSel = ops.embedding(loss.rows, t.hFinal); // the loss rows of h [T, H]: [M, H]
    t.hFinal.free();
    const { logp, lse } = ops.headLogprob(hSel, this.lmHead(), loss.targets, {
      computeDtype,
      softcap: this.cfg.finalSoftcap ?? 0,
      rowInvariant: this.rowInvariant,
    });
    this.releaseHead('forward');
    if (!opts.train) {
      freeAll(hSel, lse);
      return { logp, state: null };
    }
    return { logp, state: { ...t.state, hSel, lse, loss } };
  }

  /** Embedding, layers and final norm: h [T, H] and what the backward of the layers needs. */
  private trunk(input: ModelInput, train: boolean, computeDtype: ComputeDtype) {
    this.checkInput(input);
    if (train && computeDtype !== 'f32') throw new TypeError(`forward: training computes in f32, got computeDtype ${computeDtype}`);
    const hook = this.paramHook;
    const tied = this.cfg.tieWordEmbeddings;
    hook?.acquire(EMBED_UNIT, 'forward');
    let x = this.embed(input.inputIds);
    if (!tied) hook?.release(EMBED_UNIT, 'forward');
    const layers: LayerSaved[] = [];
    for (let i = 0; i < this.cfg.numLayers; i++) {
      hook?.acquire(i, 'forward');
      const { out, saved } = this.layerForward(i, x, input, train && !this.recompute, computeDtype);
      hook?.release(i, 'forward');
      if (train) layers.push(saved);
      else x.free();
      x = out;
    }
    hook?.acquire(HEAD_UNIT, 'forward');
    const { y: hFinal, rstd: rstdFinal } = this.finalNorm(x);
    if (!train) freeAll(x, rstdFinal);
    return { hFinal, state: { input, layers, xFinal: x, rstdFinal } };
  }

  /** Ends the head's use of its parameter units (the head, and the embedding when tied). */
  private releaseHead(phase: 'forward' | 'backward'): void {
    this.paramHook?.release(HEAD_UNIT, phase);
    if (this.cfg.tieWordEmbeddings) this.paramHook?.release(EMBED_UNIT, phase);
  }

  /** Starts the head's backward: its parameter units (the head, and the embedding when tied); the head's name. */
  private acquireHead(): string {
    if (!this.weights.training) throw new Error('backward needs gradients: call model.weights.enableTraining() first');
    this.paramHook?.acquire(HEAD_UNIT, 'backward');
    if (this.cfg.tieWordEmbeddings) this.paramHook?.acquire(EMBED_UNIT, 'backward');
    return this.lmName;
  }

  /**
   * Backward from dlogits f32 [T, V]: accumulates every parameter's gradient; frees the state, and
   * dlogits as soon as the LM head's two products have read it (T x V x 4 bytes that would otherwise
   * sit through the whole backward: docs/memory.md).
   */
  backward(state: ForwardState, dlogits: Tensor<'f32'>): void {
    if (this.cfg.finalSoftcap)
      throw new Error('backward from logits: a soft-capped head trains through forwardLogprobs / backwardLogprobs');
    const lmName = this.acquireHead();
    const dw = this.weights.gradOf(lmName); // none when frozen (LoRA)
    if (dw) ops.matmul(dlogits, state.hFinal, { transA: true, out: dw, accumulate: true });
    const dh = ops.matmul(dlogits, this.lmHead());
    dlogits.free();
    state.hFinal.free();
    this.backwardTrunk(state, dh);
  }

  /** Backward from dlogp f32 [M] (the loss rows' log-prob gradients): every parameter's gradient; frees the state. */
  backwardLogprobs(state: LogprobState, dlogp: Tensor<'f32'>): void {
    const lmName = this.acquireHead();
    const { hSel, lse, loss } = state;
    const dSel = ops.headLogprobBackward(hSel, this.lmHead(), loss.targets, lse, dlogp, {
      dw: this.weights.gradOf(lmName), // none when frozen (LoRA): no dW GEMM
      softcap: this.cfg.finalSoftcap ?? 0,
    });
    const dh = ops.zeros(this.backend, 'f32', state.xFinal.shape);
    ops.embeddingBackward(loss.rows, dSel, dh); // back to the positions they came from; the others are 0
    freeAll(dSel, hSel, lse);
    this.backwardTrunk(state, dh);
  }

  /** The final norm's and the layers' backward from dh [T, H] (the head's released by the caller's acquire). */
  private backwardTrunk(state: TrunkState, dh: Tensor<'f32'>): void {
    const { input } = state;
    const hook = this.paramHook;
    const tied = this.cfg.tieWordEmbeddings;
    let dx = this.normBackward(state.xFinal, 'model.norm.weight', state.rstdFinal, dh);
    hook?.release(HEAD_UNIT, 'backward');
    freeAll(dh, state.rstdFinal, state.xFinal);
    for (let i = this.cfg.numLayers - 1; i >= 0; i--) {
      let saved = state.layers[i];
      hook?.acquire(i, 'backward');
      if (saved.h1 === undefined) {
        const re = this.layerForward(i, saved.x, input, true);
        re.out.free();
        saved = re.saved;
      }
      const next = this.layerBackward(i, saved, dx, input);
      hook?.release(i, 'backward');
      dx.free();
      freeAll(...Object.values(saved)); // the layer input x included: nothing reads it any more
      dx = next;
    }
    if (!tied) hook?.acquire(EMBED_UNIT, 'backward');
    if (this.cfg.embedScale !== 1) ops.scaleInPlace(dx, Math.fround(this.cfg.embedScale)); // d/d(embedding) of x * scale
    const dtable = this.weights.gradOf('model.embed_tokens.weight'); // none when frozen (LoRA)
    if (dtable) ops.embeddingBackward(input.inputIds, dx, dtable);
    hook?.release(EMBED_UNIT, 'backward');
    dx.free();
    state.layers.length = 0;
  }
}
