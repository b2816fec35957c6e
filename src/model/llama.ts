// The Llama-family decoder (llama, mistral, qwen2, qwen3, phi3) with explicit forward and backward per layer, in
// the style of llm.c: every layer returns what its backward needs, and memory is visible. With
// `recompute`, a layer keeps only its input and reruns its forward inside the backward.
//
// Shapes: R rows (sequences) of L positions, T = R * L tokens; H hidden, nH / nKV heads, hd head dim,
// I intermediate, V vocabulary. Activations are f32 [T, *]; weights f32 or bf16 (HF names).
import { makeDirs } from '../util/atomic.js';
import type { Backend, ComputeDtype } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { openCheckpointTensors, writeCheckpointTensors } from './checkpoint_files.js';
import { EMBED_UNIT, HEAD_UNIT, type ParamHook } from './param_units.js';
import { checkpointLayout, type LlamaConfig, loadConfig, writeConfig } from './config.js';
import { type RopeTable, ropePositionLimit, ropeTable } from './rope.js';
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
}

/** What one layer's backward needs. In recompute mode only `x` is kept. */
/** How a layer's linear layers run: row-invariant (generation) and in which arithmetic (ops.linears). */
export interface LinearMode {
  rowInvariant?: boolean;
  computeDtype?: ComputeDtype;
}

interface LayerSaved {
  x: Tensor<'f32'>; // [T, H] layer input
  h1?: Tensor<'f32'>; // [T, H] input RMSNorm output
  rstd1?: Tensor<'f32'>; // [T]
  qRaw?: Tensor<'f32'>; // [T, nH * hd] q_proj output before q_norm (qkNorm only)
  kRaw?: Tensor<'f32'>; // [T, nKV * hd] k_proj output before k_norm (qkNorm only)
  rstdQ?: Tensor<'f32'>; // [T * nH] q_norm's rstd per head (qkNorm only)
  rstdK?: Tensor<'f32'>; // [T * nKV]
  q?: Tensor<'f32'>; // [T, nH * hd] after RoPE
  k?: Tensor<'f32'>; // [T, nKV * hd] after RoPE
  v?: Tensor<'f32'>; // [T, nKV * hd]
  att?: Tensor<'f32'>; // [R, L, nH, hd] attention output (before o_proj)
  lse?: Tensor<'f32'>; // [R, nH, L]
  x2?: Tensor<'f32'>; // [T, H] after the attention residual
  h2?: Tensor<'f32'>; // [T, H] post-attention RMSNorm output
  rstd2?: Tensor<'f32'>; // [T]
  gate?: Tensor<'f32'>; // [T, I]
  up?: Tensor<'f32'>; // [T, I]
  act?: Tensor<'f32'>; // [T, I] silu(gate) * up
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

function freeAll(...ts: (Tensor | undefined)[]): void {
  for (const t of ts) t?.free();
}

/** Frees saved activations the backward has used for the last time (and forgets them). */
function drop(s: LayerSaved, ...keys: (keyof LayerSaved)[]): void {
  for (const k of keys) {
    s[k]?.free();
    delete s[k];
  }
}

export class LlamaModel {
  /** Rerun each layer's forward in the backward instead of keeping its activations. */
  recompute = false;
  /** Set while ZeRO stage 3 trains this model; null otherwise. */
  paramHook: ParamHook | null = null;

  constructor(
    readonly cfg: LlamaConfig,
    readonly weights: Weights,
  ) {}

  get backend(): Backend {
    return this.weights.backend;
  }

  private ropeCache: RopeTable | null = null;
  /** RoPE's inverse frequencies and attention scale for this config, as HF computes them (rope.ts). */
  get rope(): RopeTable {
    this.ropeCache ??= ropeTable(this.cfg.ropeTheta, this.cfg.headDim, this.cfg.ropeScaling);
    return this.ropeCache;
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

  private p(name: string): Tensor {
    return this.weights.get(name);
  }

  private lmHead(): Tensor {
    return this.p(this.cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight');
  }

  private checkInput(input: ModelInput): void {
    const { rows, length } = input;
    if (input.inputIds.numel !== rows * length)
      throw new RangeError(`inputIds hold ${input.inputIds.numel} tokens, expected ${rows} x ${length}`);
    if (length > this.cfg.maxPositionEmbeddings)
      throw new RangeError(`sequence length ${length} exceeds max_position_embeddings ${this.cfg.maxPositionEmbeddings}`);
    if (length > this.maxPositions)
      throw new RangeError(
        `sequence length ${length} exceeds longrope's original_max_position_embeddings ${this.maxPositions} (spinlm uses short_factor only)`,
      );
  }

  /**
   * The sliding attention window of layer i (AttentionOpts.window), 0 for full causal attention: the
   * config's slidingWindow on layers from firstSlidingLayer on (mistral, phi3: all; qwen2 / qwen3 with
   * use_sliding_window: layers >= max_window_layers, as HF's layer_types), none elsewhere.
   */
  attentionWindow(i: number): number {
    const w = this.cfg.slidingWindow;
    return w !== null && i >= this.cfg.firstSlidingLayer ? w : 0;
  }

  /** Linear layer y = x W^T (+ b): x [T, in], W [out, in] -> [T, out]. */
  private linear(x: Tensor<'f32'>, weight: string, bias: string | null, lin: LinearMode = {}): Tensor<'f32'> {
    return this.linears(x, [weight], [bias], lin)[0];
  }

  /** Linear layers on one input as one op (fused q/k/v, gate/up): [x W_i^T (+ b_i)]. */
  private linears(x: Tensor<'f32'>, weights: readonly string[], biases: readonly (string | null)[], lin: LinearMode): Tensor<'f32'>[] {
    const ys = ops.linears(
      x,
      weights.map((w) => this.p(w)),
      lin,
    );
    ys.forEach((y, i) => {
      const b = biases[i];
      if (b) ops.addBias(y, this.p(b));
    });
    return ys;
  }

  /** Backward of linear: returns dx = dy W and accumulates dW += dy^T x (and db += colsum dy). */
  private linearBackward(dy: Tensor<'f32'>, x: Tensor<'f32'>, weight: string, bias: string | null, dxOut?: Tensor<'f32'>): Tensor<'f32'> {
    if (this.weights.training) {
      ops.matmul(dy, x, { transA: true, out: this.weights.grad(weight), accumulate: true });
      if (bias) ops.biasBackward(dy, this.weights.grad(bias));
    }
    return dxOut ? ops.matmul(dy, this.p(weight), { out: dxOut, accumulate: true }) : ops.matmul(dy, this.p(weight));
  }

  /**
   * One decoder layer on x [T, H] at `positions` [T]. `attend` gets q [T, nH * hd] and k, v
   * [T, nKV * hd] after RoPE and returns the attention output (T x nH x hd values, any shape) and,
   * for the backward, its lse; it is the only part that differs between training (full causal
   * attention) and generation (a KV cache). With `keep`, returns what the backward needs. With
   * `lin.rowInvariant`, the linear layers use the row-invariant matmul: each output row depends on its
   * input row only (generation: docs/ops.md "Row-invariant matmul"); `lin.computeDtype` 'bf16' rounds
   * their inputs to bf16 (inference only: docs/ops.md "bf16 compute").
   */
  layer(
    i: number,
    x: Tensor<'f32'>,
    positions: Tensor<'i32'>,
    keep: boolean,
    attend: (q: Tensor<'f32'>, k: Tensor<'f32'>, v: Tensor<'f32'>) => { att: Tensor<'f32'>; lse?: Tensor<'f32'> },
    lin: LinearMode = {},
  ): { out: Tensor<'f32'>; saved: LayerSaved } {
    const c = this.cfg;
    const pre = `model.layers.${i}`;
    const T = x.shape[0];
    const { y: h1, rstd: rstd1 } = ops.rmsnorm(x, this.p(`${pre}.input_layernorm.weight`), c.rmsNormEps);
    const bias = (n: string) => (c.qkvBias ? `${pre}.self_attn.${n}.bias` : null);
    const [qProj, kProj, v] = this.linears(
      h1,
      ['q_proj', 'k_proj', 'v_proj'].map((n) => `${pre}.self_attn.${n}.weight`),
      ['q_proj', 'k_proj', 'v_proj'].map(bias),
      lin,
    );
    let [q, k] = [qProj, kProj];
    let qRaw: Tensor<'f32'> | undefined, kRaw: Tensor<'f32'> | undefined;
    let rstdQ: Tensor<'f32'> | undefined, rstdK: Tensor<'f32'> | undefined;
    if (c.qkNorm) {
      // qwen3: RMSNorm over each head's hd values (rows [T * heads, hd]), before RoPE
      [qRaw, kRaw] = [qProj, kProj];
      ({ y: q, rstd: rstdQ } = this.headNorm(qRaw, `${pre}.self_attn.q_norm.weight`));
      ({ y: k, rstd: rstdK } = this.headNorm(kRaw, `${pre}.self_attn.k_norm.weight`));
    }
    const rope = this.rope;
    ops.rope(q.reshape([T, c.numHeads, c.headDim]), positions, rope);
    ops.rope(k.reshape([T, c.numKvHeads, c.headDim]), positions, rope);
    // q, k as [T, heads * hd] whatever shape the q/k norms left them in
    const { att, lse } = attend(q.reshape([T, c.numHeads * c.headDim]), k.reshape([T, c.numKvHeads * c.headDim]), v);
    const o = this.linear(
      att.reshape([T, c.numHeads * c.headDim]),
      `${pre}.self_attn.o_proj.weight`,
      c.oBias ? `${pre}.self_attn.o_proj.bias` : null,
      lin,
    );
    const x2 = ops.add(x, o, o);
    const { y: h2, rstd: rstd2 } = ops.rmsnorm(x2, this.p(`${pre}.post_attention_layernorm.weight`), c.rmsNormEps);
    const [gate, up] = this.linears(h2, [`${pre}.mlp.gate_proj.weight`, `${pre}.mlp.up_proj.weight`], [null, null], lin);
    const act = ops.swiglu(gate, up);
    const d = this.linear(act, `${pre}.mlp.down_proj.weight`, null, lin);
    const out = ops.add(x2, d, d);
    if (keep) return { out, saved: { x, h1, rstd1, qRaw, kRaw, rstdQ, rstdK, q, k, v, att, lse, x2, h2, rstd2, gate, up, act } };
    freeAll(h1, rstd1, qRaw, kRaw, rstdQ, rstdK, q, k, v, att, lse, x2, h2, rstd2, gate, up, act);
    return { out, saved: { x } };
  }

  /**
   * RMSNorm of each head of x (T x heads x hd values) with weight [hd]: y [T * heads, hd] (a new
   * tensor; callers reshape it), rstd [T * heads]. The plain rmsnorm op over rows of hd values.
   */
  private headNorm(x: Tensor<'f32'>, weight: string): { y: Tensor<'f32'>; rstd: Tensor<'f32'> } {
    const hd = this.cfg.headDim;
    return ops.rmsnorm(x.reshape([x.numel / hd, hd]), this.p(weight), this.cfg.rmsNormEps);
  }

  /** Backward of headNorm: dx [T * heads, hd]; accumulates the weight's gradient when training. */
  private headNormBackward(x: Tensor<'f32'>, weight: string, rstd: Tensor<'f32'>, dy: Tensor<'f32'>): Tensor<'f32'> {
    const hd = this.cfg.headDim;
    const g = this.weights.training ? this.weights.grad(weight) : undefined;
    return ops.rmsnormBackward(x.reshape([x.numel / hd, hd]), this.p(weight), rstd, dy.reshape([dy.numel / hd, hd]), g);
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
          { window: this.attentionWindow(i) },
        );
        return { att: out, lse };
      },
      { computeDtype },
    );
  }

  private layerBackward(i: number, s: LayerSaved, dout: Tensor<'f32'>, input: ModelInput): Tensor<'f32'> {
    const c = this.cfg;
    const pre = `model.layers.${i}`;
    const { rows: R, length: L } = input;
    const T = R * L;
    const g = (n: string) => this.weights.grad(n);
    // Each saved activation is freed right after its last use (drop): the MLP's [T, I] tensors are
    // gone before the attention's backward runs (1.1B, 2 pairs: ~0.1 GB off the step's peak).
    // MLP: out = x2 + down(silu(gate) * up)
    const dact = this.linearBackward(dout, s.act!, `${pre}.mlp.down_proj.weight`, null);
    drop(s, 'act');
    const { dgate, dup } = ops.swigluBackward(s.gate!, s.up!, dact);
    drop(s, 'gate', 'up');
    dact.free();
    const dh2 = this.linearBackward(dgate, s.h2!, `${pre}.mlp.gate_proj.weight`, null);
    dgate.free();
    this.linearBackward(dup, s.h2!, `${pre}.mlp.up_proj.weight`, null, dh2);
    drop(s, 'h2');
    dup.free();
    const postW = `${pre}.post_attention_layernorm.weight`;
    const dx2n = ops.rmsnormBackward(s.x2!, this.p(postW), s.rstd2!, dh2, this.weights.training ? g(postW) : undefined);
    drop(s, 'x2', 'rstd2');
    const dx2 = ops.add(dout, dx2n, dx2n);
    dh2.free();
    // attention: x2 = x + o_proj(attention(rope(q), rope(k), v))
    const datt = this.linearBackward(
      dx2,
      s.att!.reshape([T, c.numHeads * c.headDim]),
      `${pre}.self_attn.o_proj.weight`,
      c.oBias ? `${pre}.self_attn.o_proj.bias` : null,
    );
    const shapeQ = [R, L, c.numHeads, c.headDim],
      shapeKv = [R, L, c.numKvHeads, c.headDim];
    const { dq, dk, dv } = ops.attentionBackward(
      s.q!.reshape(shapeQ),
      s.k!.reshape(shapeKv),
      s.v!.reshape(shapeKv),
      input.attentionMask,
      s.att!,
      s.lse!,
      datt.reshape(shapeQ),
      { window: this.attentionWindow(i) },
    );
    drop(s, 'q', 'k', 'v', 'att', 'lse');
    datt.free();
    const rope = { ...this.rope, inverse: true };
    ops.rope(dq.reshape([T, c.numHeads, c.headDim]), input.positions, rope);
    ops.rope(dk.reshape([T, c.numKvHeads, c.headDim]), input.positions, rope);
    const bias = (n: string) => (c.qkvBias ? `${pre}.self_attn.${n}.bias` : null);
    let [dqRaw, dkRaw] = [dq, dk];
    if (c.qkNorm) {
      // back through q_norm / k_norm: gradients of the projections' outputs
      dqRaw = this.headNormBackward(s.qRaw!, `${pre}.self_attn.q_norm.weight`, s.rstdQ!, dq);
      dkRaw = this.headNormBackward(s.kRaw!, `${pre}.self_attn.k_norm.weight`, s.rstdK!, dk);
      drop(s, 'qRaw', 'kRaw', 'rstdQ', 'rstdK');
      freeAll(dq, dk);
    }
    const dq2 = dqRaw.reshape([T, c.numHeads * c.headDim]),
      dk2 = dkRaw.reshape([T, c.numKvHeads * c.headDim]),
      dv2 = dv.reshape([T, c.numKvHeads * c.headDim]);
    const dh1 = this.linearBackward(dq2, s.h1!, `${pre}.self_attn.q_proj.weight`, bias('q_proj'));
    this.linearBackward(dk2, s.h1!, `${pre}.self_attn.k_proj.weight`, bias('k_proj'), dh1);
    this.linearBackward(dv2, s.h1!, `${pre}.self_attn.v_proj.weight`, bias('v_proj'), dh1);
    drop(s, 'h1');
    freeAll(dqRaw, dkRaw, dv);
    const inW = `${pre}.input_layernorm.weight`;
    const dxn = ops.rmsnormBackward(s.x, this.p(inW), s.rstd1!, dh1, this.weights.training ? g(inW) : undefined);
    drop(s, 'rstd1');
    const dx = ops.add(dx2, dxn, dxn);
    freeAll(dh1, dx2);
    return dx;
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
    const { logp, lse } = ops.headLogprob(hSel, this.lmHead(), loss.targets, { computeDtype });
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
    let x = ops.embedding(input.inputIds, this.p('model.embed_tokens.weight'));
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
    const { y: hFinal, rstd: rstdFinal } = ops.rmsnorm(x, this.p('model.norm.weight'), this.cfg.rmsNormEps);
    if (!train) freeAll(x, rstdFinal);
    return { hFinal, state: { input, layers, xFinal: x, rstdFinal } };
  }

  /** Ends the head's use of its parameter units (the head, and the embedding when tied). */
  private releaseHead(phase: 'forward' | 'backward'): void {
    this.paramHook?.release(HEAD_UNIT, phase);
    if (this.cfg.tieWordEmbeddings) this.paramHook?.release(EMBED_UNIT, phase);
  }

  private acquireHead(): { hook: ParamHook | null; lmName: string } {
    const hook = this.paramHook;
    const tied = this.cfg.tieWordEmbeddings;
    hook?.acquire(HEAD_UNIT, 'backward');
    if (tied) hook?.acquire(EMBED_UNIT, 'backward');
    if (!this.weights.training) throw new Error('backward needs gradients: call model.weights.enableTraining() first');
    return { hook, lmName: tied ? 'model.embed_tokens.weight' : 'lm_head.weight' };
  }

  /**
   * Backward from dlogits f32 [T, V]: accumulates every parameter's gradient; frees the state, and
   * dlogits as soon as the LM head's two products have read it (T x V x 4 bytes that would otherwise
   * sit through the whole backward: docs/memory.md).
   */
  backward(state: ForwardState, dlogits: Tensor<'f32'>): void {
    const { lmName } = this.acquireHead();
    ops.matmul(dlogits, state.hFinal, { transA: true, out: this.weights.grad(lmName), accumulate: true });
    const dh = ops.matmul(dlogits, this.lmHead());
    dlogits.free();
    state.hFinal.free();
    this.backwardTrunk(state, dh);
  }

  /** Backward from dlogp f32 [M] (the loss rows' log-prob gradients): every parameter's gradient; frees the state. */
  backwardLogprobs(state: LogprobState, dlogp: Tensor<'f32'>): void {
    const { lmName } = this.acquireHead();
    const { hSel, lse, loss } = state;
    const dSel = ops.headLogprobBackward(hSel, this.lmHead(), loss.targets, lse, dlogp, { dw: this.weights.grad(lmName) });
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
    let dx = ops.rmsnormBackward(state.xFinal, this.p('model.norm.weight'), state.rstdFinal, dh, this.weights.grad('model.norm.weight'));
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
    ops.embeddingBackward(input.inputIds, dx, this.weights.grad('model.embed_tokens.weight'));
    hook?.release(EMBED_UNIT, 'backward');
    dx.free();
    state.layers.length = 0;
  }
}
