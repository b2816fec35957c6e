// Batched inference with a KV cache for generation: prefill the prompts (their rows together, each
// prompt's attention alone), then decode one token per sequence per step. A prompt's numbers never
// depend on its batch: the linear layers use the row-invariant matmul (each output row depends on
// its input row only), every other op works row by row, and attention sees one prompt (or prompts of
// one length, computed sequence by sequence). Implements src/generate's DecoderModel
// structurally (the model layer does not import generate). Logits stay on the device (f32 [B, V]);
// the caller samples them there and reads only the token ids.
//
// Cache layout per layer: K and V [B * nKV * Lmax + nKV, hd]; row (b * nKV + h) * Lmax + t holds
// kv head h at position t of sequence b, so decode attention streams each head's positions in order;
// the last nKV rows absorb writes of finished sequences. Appending a step is one scatterRows per tensor.
// The cache is f32 or bf16 (`kvCacheDtype`; 'auto' = the parameters' dtype, as vLLM's default): bf16
// halves decode attention's reads, the math stays f32; a prompt's own tokens attend to each other in
// f32 during its prefill and to the rounded cache from its first decode step on (docs/numerics.md).
import type { ComputeDtype } from '../backend/backend.js';
import { type Tensor, VIEW_ALIGNMENT } from '../tensor/tensor.js';
import { checkTokenIds } from './input.js';
import type { LlamaModel } from './llama.js';
import * as ops from '../ops/index.js';

/** The KV cache's element type: 'auto' = the parameters' dtype. */
export type KvCacheDtype = 'auto' | 'f32' | 'bf16';

export class LlamaDecoder {
  /** The dtype every cache of this decoder holds K and V in. */
  readonly cacheDtype: 'f32' | 'bf16';

  /**
   * `computeDtype` 'bf16' rounds the linear layers' inputs to bf16 (exact bf16 products, f32 sums:
   * docs/ops.md "bf16 compute"); it needs bf16 parameters.
   */
  constructor(
    readonly model: LlamaModel,
    kvCacheDtype: KvCacheDtype = 'auto',
    readonly computeDtype: ComputeDtype = 'f32',
  ) {
    this.cacheDtype = kvCacheDtype === 'auto' ? model.weights.dtype : kvCacheDtype;
    if (computeDtype === 'bf16' && model.weights.dtype !== 'bf16')
      throw new TypeError(`computeDtype 'bf16' needs bf16 parameters; this model's are ${model.weights.dtype}`);
  }

  get backend() {
    return this.model.backend;
  }

  get vocabSize(): number {
    return this.model.cfg.vocabSize;
  }

  get maxPositions(): number {
    return this.model.maxPositions; // longrope: original_max_position_embeddings
  }

  newCache(batch: number, maxLen: number): LlamaKvCache {
    if (!Number.isSafeInteger(batch) || batch < 1) throw new RangeError(`cache batch must be a positive integer, got ${batch}`);
    if (!Number.isSafeInteger(maxLen) || maxLen < 1 || maxLen > this.maxPositions) {
      throw new RangeError(`cache length ${maxLen} must be in [1, max_position_embeddings = ${this.maxPositions}]`);
    }
    return new LlamaKvCache(this.model, batch, maxLen, this.cacheDtype, this.computeDtype);
  }
}

export class LlamaKvCache {
  /** Tokens held per sequence. */
  readonly lengths: Int32Array;
  /** One block per layer holding its K and V (views): half as many allocations, and blocks big enough
   * for the CPU allocator to recycle between runs (3 MiB blocks came fresh from the kernel each time,
   * their page faults billed to the first writes: docs/performance.md). */
  private readonly blocks: Tensor[] = [];
  private readonly k: Tensor[] = [];
  private readonly v: Tensor[] = [];

  constructor(
    readonly model: LlamaModel,
    readonly batch: number,
    readonly maxLen: number,
    readonly dtype: 'f32' | 'bf16' = 'f32',
    /** the linear layers' arithmetic (LlamaDecoder's computeDtype) */
    readonly computeDtype: ComputeDtype = 'f32',
  ) {
    const c = model.cfg;
    const be = model.backend;
    const rows = (batch * maxLen + 1) * c.numKvHeads;
    // V starts at a view-aligned element offset after K
    const align = VIEW_ALIGNMENT / (dtype === 'bf16' ? 2 : 4);
    const vAt = Math.ceil((rows * c.headDim) / align) * align;
    for (let i = 0; i < c.numLayers; i++) {
      const block = ops.empty(be, dtype, [vAt + rows * c.headDim]);
      this.blocks.push(block);
      this.k.push(block.view(0, [rows, c.headDim]));
      this.v.push(block.view(vAt, [rows, c.headDim]));
    }
    this.lengths = new Int32Array(batch);
  }

  private p(name: string): Tensor {
    return this.model.weights.get(name);
  }

  /**
   * Runs the layers over x [T, H] whose rows are (sequence, position) pairs, writing K/V of token r
   * and kv head h to cache row `cacheRows[r * nKV + h]`; `attend(i, q, k, v)` is the step's attention (full causal for the
   * prefill, over the cache for decode). Returns the final hidden states [T, H] (before the final norm).
   */
  private layers(
    x: Tensor<'f32'>,
    positions: Tensor<'i32'>,
    cacheRows: Tensor<'i32'>,
    attend: (i: number, q: Tensor<'f32'>, k: Tensor<'f32'>, v: Tensor<'f32'>) => Tensor<'f32'>,
  ): Tensor<'f32'> {
    const c = this.model.cfg;
    for (let i = 0; i < c.numLayers; i++) {
      const { out } = this.model.layer(
        i,
        x,
        positions,
        false,
        (q, k, v) => {
          // one cache row per (token, kv head)
          ops.scatterRows(k.reshape([cacheRows.numel, c.headDim]), cacheRows, this.k[i]);
          ops.scatterRows(v.reshape([cacheRows.numel, c.headDim]), cacheRows, this.v[i]);
          return { att: attend(i, q, k, v) };
        },
        { rowInvariant: true, computeDtype: this.computeDtype },
      );
      x.free();
      x = out;
    }
    return x;
  }

  /** Final norm + LM head on rows of h [R, H] -> f32 [R, V]. */
  private logits(h: Tensor<'f32'>): Tensor<'f32'> {
    const c = this.model.cfg;
    const { y, rstd } = this.model.finalNorm(h);
    const head = this.p(c.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight');
    const logits = ops.matmul(y, head, { transB: true, rowInvariant: true, computeDtype: this.computeDtype });
    for (const t of [y, rstd]) t.free();
    this.model.capLogits(logits);
    return logits;
  }

  /** Feeds each row's prompt; returns f32 [B, V] logits at each row's last prompt position. */
  prefill(prompts: readonly (readonly number[])[]): Tensor<'f32'> {
    if (prompts.length !== this.batch) throw new RangeError(`prefill got ${prompts.length} prompts for a cache of ${this.batch}`);
    return this.prefillSlots(
      prompts.map((_, b) => b),
      prompts,
    );
  }

  /**
   * Feeds prompts[r] into slot slots[r] (the slot's earlier sequence is dropped; other slots are
   * untouched), for continuous batching: returns f32 [R, V] logits at each prompt's last position.
   * All prompts' tokens go through the layers as one [sum of lengths, H] batch; attention runs per
   * run of consecutive prompts of one length ([G, L] sequences, no padding). Each prompt's numbers
   * are those it would get alone (row-invariant matmul, row-wise ops, attention per sequence).
   */
  prefillSlots(slots: readonly number[], prompts: readonly (readonly number[])[]): Tensor<'f32'> {
    const be = this.model.backend;
    const c = this.model.cfg;
    const R = prompts.length;
    if (slots.length !== R || R === 0) throw new RangeError(`prefillSlots got ${slots.length} slots for ${R} prompts (at least one)`);
    const seen = new Set<number>();
    for (const s of slots) {
      if (!Number.isSafeInteger(s) || s < 0 || s >= this.batch || seen.has(s))
        throw new RangeError(`prefillSlots: slot ${s} is not a distinct slot in [0, ${this.batch})`);
      seen.add(s);
    }
    for (const p of prompts) {
      if (p.length === 0) throw new RangeError('prefill: every prompt needs at least one token');
      if (p.length > this.maxLen) throw new RangeError(`a prompt of ${p.length} tokens does not fit a cache of ${this.maxLen}`);
      checkTokenIds(Int32Array.from(p), c.vocabSize, 'prompt');
    }
    // rows: prompt r's tokens at [start[r], start[r] + length)
    const start: number[] = [];
    let T = 0;
    for (const p of prompts) {
      start.push(T);
      T += p.length;
    }
    const nkv = c.numKvHeads;
    const ids = new Int32Array(T),
      pos = new Int32Array(T),
      rows = new Int32Array(T * nkv);
    prompts.forEach((p, r) => {
      const slot = slots[r];
      for (let t = 0; t < p.length; t++) {
        ids[start[r] + t] = p[t];
        pos[start[r] + t] = t;
        for (let h = 0; h < nkv; h++) rows[(start[r] + t) * nkv + h] = (slot * nkv + h) * this.maxLen + t;
      }
      this.lengths[slot] = p.length;
    });
    // runs of consecutive prompts of one length: each is one attention call over [G, L] sequences
    const runs: { first: number; count: number; length: number }[] = [];
    prompts.forEach((p, r) => {
      const last = runs[runs.length - 1];
      if (last && last.length === p.length) last.count++;
      else runs.push({ first: r, count: 1, length: p.length });
    });
    const up = (data: Int32Array, shape: number[]) => ops.upload(be, { dtype: 'i32', data }, shape);
    const tIds = up(ids, [T]),
      tPos = up(pos, [T]),
      tRows = up(rows, [T * nkv]);
    const runRows = runs.map((g) =>
      runs.length === 1
        ? null
        : up(
            Int32Array.from({ length: g.count * g.length }, (_, i) => start[g.first] + i),
            [g.count * g.length],
          ),
    );
    const masks = runs.map((g) => up(new Int32Array(g.count * g.length).fill(1), [g.count, g.length]));
    const x = this.model.embed(tIds);
    const h = this.layers(x, tPos, tRows, (i, q, k, v) => {
      const qd = c.numHeads * c.headDim,
        kd = nkv * c.headDim;
      const att = runs.length === 1 ? null : ops.empty(be, 'f32', [T, qd]);
      let single: Tensor<'f32'> | null = null;
      runs.forEach((g, j) => {
        const sel = runRows[j];
        // a run's rows of q, k, v (a row gather), or the whole tensors when there is one run
        const [qr, kr, vr] = sel
          ? [ops.embedding(sel, q), ops.embedding(sel, k.reshape([T, kd])), ops.embedding(sel, v.reshape([T, kd]))]
          : [q, k, v];
        const { out, lse } = ops.attention(
          qr.reshape([g.count, g.length, c.numHeads, c.headDim]),
          kr.reshape([g.count, g.length, nkv, c.headDim]),
          vr.reshape([g.count, g.length, nkv, c.headDim]),
          masks[j],
          this.model.attentionOpts(i),
        );
        lse.free();
        if (sel) {
          ops.scatterRows(out.reshape([g.count * g.length, qd]), sel, att!);
          for (const t of [qr, kr, vr, out]) t.free();
        } else single = out;
      });
      return (att ?? single)!;
    });
    // keep each prompt's last position (a row gather is an embedding lookup)
    const tLast = up(
      Int32Array.from(prompts, (p, r) => start[r] + p.length - 1),
      [R],
    );
    const hLast = ops.embedding(tLast, h);
    for (const t of [tIds, tPos, tRows, tLast, h, ...masks]) t.free();
    for (const t of runRows) t?.free();
    const out = this.logits(hLast);
    hLast.free();
    return out;
  }

  /**
   * Appends one token per row (tokens i32 [B] on the device, e.g. sampleTokens' output); rows with
   * active[b] = 0 are computed but not advanced. Returns f32 [B, V]. Each sequence's keys are exactly
   * its positions [0, length) (prefill writes [0, prompt length) and decode appends at the length), so the
   * attention needs the lengths only, no key mask.
   */
  decode(tokens: Tensor<'i32'>, active: Uint8Array): Tensor<'f32'> {
    const be = this.model.backend;
    const c = this.model.cfg;
    const B = this.batch;
    if (tokens.numel !== B || active.length !== B) throw new RangeError(`decode needs ${B} tokens and flags`);
    const nkv = c.numKvHeads;
    const rows = new Int32Array(B * nkv),
      pos = new Int32Array(B),
      lens = new Int32Array(B);
    for (let b = 0; b < B; b++) {
      const live = active[b] && this.lengths[b] < this.maxLen;
      if (active[b] && !live) throw new RangeError(`sequence ${b} is full (${this.maxLen} tokens)`);
      // finished sequences write to the dump rows at the end
      for (let h = 0; h < nkv; h++) rows[b * nkv + h] = live ? (b * nkv + h) * this.maxLen + this.lengths[b] : B * nkv * this.maxLen + h;
      pos[b] = Math.min(this.lengths[b], this.maxLen - 1);
      lens[b] = live ? this.lengths[b] + 1 : Math.max(1, this.lengths[b]);
    }
    const tPos = ops.upload(be, { dtype: 'i32', data: pos }, [B]);
    const tRows = ops.upload(be, { dtype: 'i32', data: rows }, [B * nkv]);
    const tLens = ops.upload(be, { dtype: 'i32', data: lens }, [B]);
    const x = this.model.embed(tokens);
    const h = this.layers(x, tPos, tRows, (i, q) => {
      const cache = (t: Tensor) => t.view(0, [B, c.numKvHeads, this.maxLen, c.headDim]);
      return ops.attentionDecode(
        q.reshape([B, c.numHeads, c.headDim]),
        cache(this.k[i]),
        cache(this.v[i]),
        tLens,
        undefined,
        this.model.attentionOpts(i),
      );
    });
    for (const t of [tPos, tRows, tLens]) t.free();
    const out = this.logits(h);
    h.free();
    for (let b = 0; b < B; b++) if (active[b]) this.lengths[b]++;
    return out;
  }

  free(): void {
    for (const t of this.blocks) t.free();
    this.blocks.length = 0;
    this.k.length = 0;
    this.v.length = 0;
  }
}
