// One decoder layer's forward and backward, for every family (llama, mistral, qwen2, qwen3, phi3, gemma2,
// gemma3_text), in the style of llm.c: every layer returns what its backward needs, and memory is visible.
// LlamaModel (llama.ts) extends this with the embedding, the final norm, the head and checkpoints; the
// decoder (decoder.ts) runs the same `layer` over a KV cache.
//
// Shapes: T tokens, H hidden, nH / nKV heads, hd head dim, I intermediate. Activations are f32 [T, *].
// Gemma's differences from Llama, as Hugging Face's modeling_gemma2.py / modeling_gemma3.py compute them:
// RMSNorm multiplies by (1 + w) (cfg.normUnitOffset); the attention output and the MLP output each pass
// through a norm of their own before their residual add (cfg.sandwichNorms: post_attention_layernorm on
// the attention output, pre_feedforward_layernorm before the MLP, post_feedforward_layernorm on its
// output); the MLP is GeGLU with tanh-GELU; scores are scaled by query_pre_attn_scalar^-0.5 and
// soft-capped (Gemma 2); layers alternate sliding-window and global attention, each with its own RoPE
// base (Gemma 3).
import type { ComputeDtype } from '../backend/backend.js';
import type { AttentionOpts } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { LlamaConfig } from './config.js';
import { attentionScale, layerRope, layerWindow } from './gemma_config.js';
import { type RopeTable, ropeTable } from './rope.js';
import type { Weights } from './weights.js';
import type { LoraModule } from './lora.js';
import { loraBackward, loraForward, type LoraPending } from './lora_linear.js';
import * as ops from '../ops/index.js';

/** How a layer's linear layers run: row-invariant (generation) and in which arithmetic (ops.linears). */
export interface LinearMode {
  rowInvariant?: boolean;
  computeDtype?: ComputeDtype;
}

/** What one layer's backward needs. In recompute mode only `x` is kept. */
export interface LayerSaved {
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
  o?: Tensor<'f32'>; // [T, H] o_proj output (sandwich norms only: the post-attention norm's input)
  rstdO?: Tensor<'f32'>; // [T]
  x2?: Tensor<'f32'>; // [T, H] after the attention residual
  h2?: Tensor<'f32'>; // [T, H] pre-MLP RMSNorm output
  rstd2?: Tensor<'f32'>; // [T]
  gate?: Tensor<'f32'>; // [T, I]
  up?: Tensor<'f32'>; // [T, I]
  act?: Tensor<'f32'>; // [T, I] act(gate) * up
  d?: Tensor<'f32'>; // [T, H] down_proj output (sandwich norms only)
  rstdD?: Tensor<'f32'>; // [T]
}

export function freeAll(...ts: (Tensor | undefined)[]): void {
  for (const t of ts) t?.free();
}

/** Frees saved activations the backward has used for the last time (and forgets them). */
function drop(s: LayerSaved, ...keys: (keyof LayerSaved)[]): void {
  for (const k of keys) {
    s[k]?.free();
    delete s[k];
  }
}

export abstract class DecoderLayers {
  constructor(
    readonly cfg: LlamaConfig,
    readonly weights: Weights,
  ) {}

  protected p(name: string): Tensor {
    return this.weights.get(name);
  }

  private ropeTables = new Map<string, RopeTable>();
  /** Layer i's RoPE (inverse frequencies and attention scale as HF computes them, rope.ts): Gemma 3's local layers have their own base. */
  ropeOf(i: number): RopeTable {
    const { theta, scaling } = layerRope(this.cfg, i);
    const key = `${theta} ${JSON.stringify(scaling)}`;
    let t = this.ropeTables.get(key);
    if (!t) this.ropeTables.set(key, (t = ropeTable(theta, this.cfg.headDim, scaling)));
    return t;
  }

  /**
   * Layer i's attention options: its sliding window (0: full causal; mistral, phi3: every layer; qwen2 /
   * qwen3 with use_sliding_window: layers >= max_window_layers; Gemma: the sliding_attention layers), and
   * for Gemma the scale query_pre_attn_scalar^-0.5 and the score soft-cap (the kernels' defaults otherwise).
   */
  attentionOpts(i: number): AttentionOpts {
    const c = this.cfg;
    const o: AttentionOpts = { window: layerWindow(c, i) };
    if (c.queryPreAttnScalar !== c.headDim) o.scale = attentionScale(c);
    if (c.attnSoftcap) o.softcap = c.attnSoftcap;
    return o;
  }

  /** Layer i's attention options over an input: with its spans when the input is packed (src/spin/pack.ts). */
  attentionOptsFor(i: number, input: { spans?: Tensor<'i32'> }): AttentionOpts {
    const o = this.attentionOpts(i);
    if (input.spans) o.spans = input.spans;
    return o;
  }

  /** RMSNorm of rows with weight `name` ((1 + w) for Gemma). */
  protected norm(x: Tensor<'f32'>, name: string): { y: Tensor<'f32'>; rstd: Tensor<'f32'> } {
    return ops.rmsnorm(x, this.p(name), this.cfg.rmsNormEps, { unitOffset: this.cfg.normUnitOffset });
  }

  /** Backward of norm: dx; accumulates the weight's gradient when training. */
  protected normBackward(x: Tensor<'f32'>, name: string, rstd: Tensor<'f32'>, dy: Tensor<'f32'>): Tensor<'f32'> {
    const g = this.weights.gradOf(name); // none when frozen (LoRA)
    return ops.rmsnormBackward(x, this.p(name), rstd, dy, g, { unitOffset: this.cfg.normUnitOffset });
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
    loraForward(this.weights, x, weights, ys, !!lin.rowInvariant); // + s (x A^T) B^T where an adapter is (lora_linear.ts)
    return ys;
  }

  /** u and du of a fused LoRA module (Phi-3's qkv_proj, gate_up_proj) between its parts' backwards. */
  private readonly loraPending = new Map<LoraModule, LoraPending>();

  /**
   * Backward of linear: returns dx = dy W and accumulates dW += dy^T x (and db += colsum dy); a frozen
   * weight (LoRA) gets no dW GEMM; an adapted one adds the LoRA path to dx and its adapters' gradients.
   */
  private linearBackward(dy: Tensor<'f32'>, x: Tensor<'f32'>, weight: string, bias: string | null, dxOut?: Tensor<'f32'>): Tensor<'f32'> {
    const gw = this.weights.gradOf(weight);
    if (gw) ops.matmul(dy, x, { transA: true, out: gw, accumulate: true });
    const gb = bias ? this.weights.gradOf(bias) : undefined;
    if (gb) ops.biasBackward(dy, gb);
    const dx = dxOut ? ops.matmul(dy, this.p(weight), { out: dxOut, accumulate: true }) : ops.matmul(dy, this.p(weight));
    if (this.weights.lora && this.weights.training) loraBackward(this.weights, this.loraPending, dy, x, weight, dx);
    return dx;
  }

  /** The MLP's gate activation option of the swiglu op (silu, or Gemma's tanh-GELU). */
  private get glu() {
    return { activation: this.cfg.hiddenActivation };
  }

  /** The norm before the MLP: Llama's post_attention_layernorm, Gemma's pre_feedforward_layernorm. */
  private preMlpNorm(pre: string): string {
    return `${pre}.${this.cfg.sandwichNorms ? 'pre_feedforward_layernorm' : 'post_attention_layernorm'}.weight`;
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
    const { y: h1, rstd: rstd1 } = this.norm(x, `${pre}.input_layernorm.weight`);
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
      // qwen3, gemma3: RMSNorm over each head's hd values (rows [T * heads, hd]), before RoPE
      [qRaw, kRaw] = [qProj, kProj];
      ({ y: q, rstd: rstdQ } = this.headNorm(qRaw, `${pre}.self_attn.q_norm.weight`));
      ({ y: k, rstd: rstdK } = this.headNorm(kRaw, `${pre}.self_attn.k_norm.weight`));
    }
    const rope = this.ropeOf(i);
    ops.rope(q.reshape([T, c.numHeads, c.headDim]), positions, rope);
    ops.rope(k.reshape([T, c.numKvHeads, c.headDim]), positions, rope);
    // q, k as [T, heads * hd] whatever shape the q/k norms left them in
    const { att, lse } = attend(q.reshape([T, c.numHeads * c.headDim]), k.reshape([T, c.numKvHeads * c.headDim]), v);
    let o = this.linear(
      att.reshape([T, c.numHeads * c.headDim]),
      `${pre}.self_attn.o_proj.weight`,
      c.oBias ? `${pre}.self_attn.o_proj.bias` : null,
      lin,
    );
    let oRaw: Tensor<'f32'> | undefined, rstdO: Tensor<'f32'> | undefined;
    if (c.sandwichNorms) [oRaw, { y: o, rstd: rstdO }] = [o, this.norm(o, `${pre}.post_attention_layernorm.weight`)];
    const x2 = ops.add(x, o, o);
    const { y: h2, rstd: rstd2 } = this.norm(x2, this.preMlpNorm(pre));
    const [gate, up] = this.linears(h2, [`${pre}.mlp.gate_proj.weight`, `${pre}.mlp.up_proj.weight`], [null, null], lin);
    const act = ops.swiglu(gate, up, this.glu);
    let d = this.linear(act, `${pre}.mlp.down_proj.weight`, null, lin);
    let dRaw: Tensor<'f32'> | undefined, rstdD: Tensor<'f32'> | undefined;
    if (c.sandwichNorms) [dRaw, { y: d, rstd: rstdD }] = [d, this.norm(d, `${pre}.post_feedforward_layernorm.weight`)];
    const out = ops.add(x2, d, d);
    const all = { x, h1, rstd1, qRaw, kRaw, rstdQ, rstdK, q, k, v, att, lse, o: oRaw, rstdO, x2, h2, rstd2, gate, up, act, d: dRaw, rstdD };
    if (keep) return { out, saved: all };
    freeAll(...Object.values(all).filter((t) => t !== x));
    return { out, saved: { x } };
  }

  /**
   * RMSNorm of each head of x (T x heads x hd values) with weight [hd]: y [T * heads, hd] (a new
   * tensor; callers reshape it), rstd [T * heads]. The plain rmsnorm op over rows of hd values.
   */
  private headNorm(x: Tensor<'f32'>, weight: string): { y: Tensor<'f32'>; rstd: Tensor<'f32'> } {
    const hd = this.cfg.headDim;
    return this.norm(x.reshape([x.numel / hd, hd]), weight);
  }

  /** Backward of headNorm: dx [T * heads, hd]; accumulates the weight's gradient when training. */
  private headNormBackward(x: Tensor<'f32'>, weight: string, rstd: Tensor<'f32'>, dy: Tensor<'f32'>): Tensor<'f32'> {
    const hd = this.cfg.headDim;
    return this.normBackward(x.reshape([x.numel / hd, hd]), weight, rstd, dy.reshape([dy.numel / hd, hd]));
  }

  /** Backward of one layer from dout [T, H] (R rows of L positions, `mask` [R, L]): dx [T, H]; accumulates its gradients. */
  protected layerBackward(
    i: number,
    s: LayerSaved,
    dout: Tensor<'f32'>,
    input: { rows: number; length: number; positions: Tensor<'i32'>; attentionMask: Tensor<'i32'>; spans?: Tensor<'i32'> },
  ): Tensor<'f32'> {
    const c = this.cfg;
    const pre = `model.layers.${i}`;
    const { rows: R, length: L } = input;
    const T = R * L;
    // Each saved activation is freed right after its last use (drop): the MLP's [T, I] tensors are
    // gone before the attention's backward runs (1.1B, 2 pairs: ~0.1 GB off the step's peak).
    // MLP: out = x2 + [post_feedforward_layernorm](down(act(gate) * up))
    let dd = dout;
    if (c.sandwichNorms) {
      dd = this.normBackward(s.d!, `${pre}.post_feedforward_layernorm.weight`, s.rstdD!, dout);
      drop(s, 'd', 'rstdD');
    }
    const dact = this.linearBackward(dd, s.act!, `${pre}.mlp.down_proj.weight`, null);
    if (dd !== dout) dd.free();
    drop(s, 'act');
    const { dgate, dup } = ops.swigluBackward(s.gate!, s.up!, dact, this.glu);
    drop(s, 'gate', 'up');
    dact.free();
    const dh2 = this.linearBackward(dgate, s.h2!, `${pre}.mlp.gate_proj.weight`, null);
    dgate.free();
    this.linearBackward(dup, s.h2!, `${pre}.mlp.up_proj.weight`, null, dh2);
    drop(s, 'h2');
    dup.free();
    const dx2n = this.normBackward(s.x2!, this.preMlpNorm(pre), s.rstd2!, dh2);
    drop(s, 'x2', 'rstd2');
    const dx2 = ops.add(dout, dx2n, dx2n);
    dh2.free();
    // attention: x2 = x + [post_attention_layernorm](o_proj(attention(rope(q), rope(k), v)))
    let dO = dx2;
    if (c.sandwichNorms) {
      dO = this.normBackward(s.o!, `${pre}.post_attention_layernorm.weight`, s.rstdO!, dx2);
      drop(s, 'o', 'rstdO');
    }
    const datt = this.linearBackward(
      dO,
      s.att!.reshape([T, c.numHeads * c.headDim]),
      `${pre}.self_attn.o_proj.weight`,
      c.oBias ? `${pre}.self_attn.o_proj.bias` : null,
    );
    if (dO !== dx2) dO.free();
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
      this.attentionOptsFor(i, input),
    );
    drop(s, 'q', 'k', 'v', 'att', 'lse');
    datt.free();
    const rope = { ...this.ropeOf(i), inverse: true };
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
    const dxn = this.normBackward(s.x, `${pre}.input_layernorm.weight`, s.rstd1!, dh1);
    drop(s, 'rstd1');
    const dx = ops.add(dx2, dxn, dxn);
    freeAll(dh1, dx2);
    return dx;
  }
}
