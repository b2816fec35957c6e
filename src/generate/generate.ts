// Batched generation with a KV cache, one RNG stream per prompt (Rng(seed).fork(stream id)), so the
// same seed gives the same text in either schedule below and at any batch size (the decoder rounds a
// prompt's rows the same whatever shares its batch: docs/ops.md "Row-invariant matmul"); stop at EOS / a stop sequence /
// max_new_tokens / the model's positions (each prompt: min(max_new_tokens, positions - its length)).
// Two schedules over prompts sorted by length (neighbours share a prefill, less padding):
// - continuous (default, vLLM-style): batchSize sequence slots decode together; a slot whose sequence
//   ends is refilled with the next prompt at once (its prefill runs in the same step as the others'
//   decode and its logits join the step's [B, V] rows), so short answers never wait for long ones.
// - static: groups of batchSize prompts, each group decoded until its last sequence ends.
// Sampling runs on the device (ops.sampleTokens, the algorithm of sampler.ts): per decode step the
// host reads B token ids, never the [B, V] logits, and the sampled ids feed the next step directly.
// Only the tokenizer's ids are ever sampled: ids >= vocabLimit (a model's vocab_size padded past its
// tokenizer, as Qwen2's 151936 rows for ~151665 ids) are cut off in the sampler itself, and the ids a
// tokenizer skips below that (excludedIds) get a -inf logit first.
import type { Backend } from '../backend/backend.js';
import * as ops from '../ops/index.js';
import type { Tensor } from '../tensor/tensor.js';
import { Rng } from '../util/rng.js';
import { checkSampling, isGreedy, type SamplingOptions } from './sampler.js';

/** A causal LM that can run batched prefill + decode with a KV cache (LlamaDecoder implements it). */
export interface DecoderModel {
  /** The backend its logits live on. */
  readonly backend: Backend;
  readonly vocabSize: number;
  readonly maxPositions: number;
  newCache(batch: number, maxLen: number): DecoderCache;
}
export interface DecoderCache {
  /** Feeds each row's prompt; returns f32 [B, V] logits (on the device) of each row's last prompt position. */
  prefill(prompts: readonly (readonly number[])[]): Tensor<'f32'>;
  /** Appends one token per active row (i32 [B] on the device); returns f32 [B, V] logits of that position. */
  decode(tokens: Tensor<'i32'>, active: Uint8Array): Tensor<'f32'>;
  /**
   * Continuous batching: feeds prompts[r] into slot slots[r] (dropping the slot's old sequence, other
   * slots untouched); returns f32 [R, V] logits of each prompt's last position.
   */
  prefillSlots?(slots: readonly number[], prompts: readonly (readonly number[])[]): Tensor<'f32'>;
  free(): void;
}

export interface GenerateOptions extends SamplingOptions {
  maxNewTokens: number;
  eosIds: readonly number[];
  /** Only ids < vocabLimit are sampled (default and at most the model's vocabSize): the tokenizer's size. */
  vocabLimit?: number;
  /** Ids below vocabLimit that are never sampled either (ids a tokenizer does not define). */
  excludedIds?: readonly number[];
  /** Token sequences that end an answer (excluded from it). */
  stopSequences?: readonly (readonly number[])[];
  seed: number;
  batchSize: number;
  /** RNG stream of each prompt (default: its index); lets a resumed subset sample as the full list would. */
  streamIds?: readonly number[];
  /** 'continuous' (default; needs DecoderCache.prefillSlots, else static) or 'static' groups. */
  schedule?: 'continuous' | 'static';
  /** Called after each batch (continuous: each step that finished prompts) with the indices (into `prompts`) it finished and their generations. */
  onBatch?: (indices: readonly number[], gens: readonly Generation[]) => void | Promise<void>;
  /** Called after each batch: prompts finished so far, tokens generated so far. */
  onProgress?: (promptsDone: number, tokensGenerated: number) => void | Promise<void>;
}

export type FinishReason = 'eos' | 'stop' | 'length';

export interface Generation {
  tokens: number[];
  finishReason: FinishReason;
}

function endsWith(seq: readonly number[], tail: readonly number[]): boolean {
  if (tail.length === 0 || tail.length > seq.length) return false;
  for (let i = 0; i < tail.length; i++) if (seq[seq.length - tail.length + i] !== tail[i]) return false;
  return true;
}

/** New tokens a prompt may get: max_new_tokens, within the model's positions (>= 1: prompts are checked). */
function rowBudget(model: DecoderModel, p: readonly number[], o: GenerateOptions): number {
  return Math.min(o.maxNewTokens, model.maxPositions - p.length);
}

/** Takes a sampled id into a generation; false when the sequence has ended (EOS, stop, its budget). */
function accept(g: Generation, id: number, budget: number, o: GenerateOptions): boolean {
  if (o.eosIds.includes(id)) {
    g.finishReason = 'eos';
    return false;
  }
  g.tokens.push(id);
  const stop = o.stopSequences?.find((s) => endsWith(g.tokens, s));
  if (stop) {
    g.tokens.length -= stop.length;
    g.finishReason = 'stop';
    return false;
  }
  return g.tokens.length < budget;
}

/** What the sampler may draw: ids < limit, less those the bias (0 / -inf per id, f32 [V]) masks; null bias when none. */
interface VocabMask {
  limit: number;
  bias: Tensor<'f32'> | null;
}

/** The sampler's id limit: vocabLimit, at most (and by default) the model's vocabSize. */
const vocabLimitOf = (model: DecoderModel, o: GenerateOptions): number => Math.min(o.vocabLimit ?? model.vocabSize, model.vocabSize);

function vocabMask(model: DecoderModel, o: GenerateOptions): VocabMask {
  const V = model.vocabSize;
  const limit = vocabLimitOf(model, o);
  const excluded = (o.excludedIds ?? []).filter((id) => id < limit);
  if (excluded.length === 0) return { limit, bias: null };
  const bias = new Float32Array(V);
  for (const id of excluded) bias[id] = -Infinity;
  return { limit, bias: ops.upload(model.backend, { dtype: 'f32', data: bias }, [V]) };
}

function checkVocab(model: DecoderModel, o: GenerateOptions): void {
  if (o.vocabLimit !== undefined && (!Number.isSafeInteger(o.vocabLimit) || o.vocabLimit < 1))
    throw new RangeError(`vocabLimit must be a positive integer, got ${o.vocabLimit}`);
  const limit = vocabLimitOf(model, o);
  const excluded = new Set<number>();
  for (const id of o.excludedIds ?? []) {
    if (!Number.isSafeInteger(id) || id < 0) throw new RangeError(`excludedIds: ${id} is not a token id`);
    if (id < limit) excluded.add(id);
  }
  if (excluded.size >= limit) throw new RangeError(`excludedIds leave no id below the vocabulary limit ${limit} to sample`);
}

/** Next ids of each row, never outside the mask (the excluded ids' logits become -inf in place). */
function sampleMasked(
  logits: Tensor<'f32'>,
  rng: Tensor<'i32'>,
  active: Tensor<'i32'>,
  o: SamplingOptions,
  mask: VocabMask,
): Tensor<'i32'> {
  if (mask.bias) ops.addBias(logits, mask.bias);
  return ops.sampleTokens(logits, rng, active, { temperature: o.temperature, topK: o.topK, topP: o.topP }, mask.limit);
}

/** Each row's xoshiro128** state as i32 [B, 4] for the device sampler. */
function rngStates(be: Backend, rngs: readonly Rng[]): Tensor<'i32'> {
  const words = new Uint32Array(4 * rngs.length);
  rngs.forEach((r, b) => words.set(r.getState().s, 4 * b));
  return ops.upload(be, { dtype: 'i32', data: new Int32Array(words.buffer) }, [rngs.length, 4]);
}

/**
 * Generates for one batch of prompts (indices into the full list, for their RNG streams) in a cache of
 * `slots` rows (>= the batch): a short last batch keeps the full row count, its spare rows inactive, so
 * every decode step has the same matrix sizes as in the other batches and in continuous batching
 * (BLAS kernels, and so their rounding, depend on the sizes). Models without prefillSlots get a cache
 * of the batch's own size.
 */
async function generateBatch(
  model: DecoderModel,
  prompts: readonly (readonly number[])[],
  index: readonly number[],
  o: GenerateOptions,
  slots: number,
): Promise<Generation[]> {
  const be = model.backend;
  const budgets = prompts.map((p) => rowBudget(model, p, o));
  const budget = Math.max(...budgets);
  let cache = model.newCache(slots, Math.max(...prompts.map((p, b) => p.length + budgets[b])));
  if (typeof cache.prefillSlots !== 'function' && slots !== prompts.length) {
    cache.free();
    cache = model.newCache(prompts.length, Math.max(...prompts.map((p, b) => p.length + budgets[b])));
  }
  const S = cache.prefillSlots ? slots : prompts.length;
  const B = prompts.length;
  const rng = rngStates(
    be,
    Array.from({ length: S }, (_, b) => new Rng(o.seed).fork(b < B ? (o.streamIds ? o.streamIds[index[b]] : index[b]) : 0)),
  );
  const out: Generation[] = prompts.map(() => ({ tokens: [], finishReason: 'length' }));
  const active = new Uint8Array(S).fill(1, 0, B);
  const mask = vocabMask(model, o);
  let logits: Tensor<'f32'> | undefined;
  let next: Tensor<'i32'> | undefined;
  try {
    if (S === B) logits = cache.prefill(prompts);
    else {
      const pre = cache.prefillSlots!(
        prompts.map((_, b) => b),
        prompts,
      );
      logits = ops.empty(be, 'f32', [S, model.vocabSize]);
      const at = ops.upload(be, { dtype: 'i32', data: Int32Array.from(prompts, (_, b) => b) }, [B]);
      ops.scatterRows(pre, at, logits);
      for (const t of [pre, at]) t.free();
    }
    for (let step = 0; step < budget; step++) {
      const activeT = ops.upload(be, { dtype: 'i32', data: Int32Array.from(active) }, [S]);
      next?.free();
      next = sampleMasked(logits, rng, activeT, o, mask);
      activeT.free();
      logits.free();
      logits = undefined;
      const ids = await ops.read(next); // S ids: the one host read of a decode step
      let live = 0;
      for (let b = 0; b < B; b++) {
        if (!active[b]) continue;
        if (accept(out[b], ids[b], budgets[b], o)) live++;
        else active[b] = 0;
      }
      if (live === 0) break;
      logits = cache.decode(next, active);
    }
  } finally {
    logits?.free();
    next?.free();
    rng.free();
    mask.bias?.free();
    cache.free();
  }
  return out;
}

/**
 * Continuous batching over `order` (indices into prompts): min(batchSize, prompts) slots; each step
 * samples one token for every live slot (one read of B ids), finished slots are refilled from the
 * queue, then one decode for the slots that go on and one prefill for the refilled ones, whose logits
 * are scattered into the decode's rows. Each slot's RNG state is mirrored on the host (the device
 * sampler draws exactly one Rng.next() per active row when not greedy), so a refill uploads the slot
 * states without reading them back. Returns undefined (nothing done) when the cache has no prefillSlots.
 */
async function generateContinuous(
  model: DecoderModel,
  prompts: readonly (readonly number[])[],
  order: readonly number[],
  o: GenerateOptions,
): Promise<Generation[] | undefined> {
  const be = model.backend;
  const S = Math.min(o.batchSize, order.length);
  const budgets = prompts.map((p) => rowBudget(model, p, o));
  const cache = model.newCache(S, Math.max(...prompts.map((p, i) => p.length + budgets[i])));
  if (typeof cache.prefillSlots !== 'function') {
    cache.free();
    return undefined;
  }
  const greedy = isGreedy(o);
  const mask = vocabMask(model, o);
  const results: Generation[] = new Array(prompts.length);
  const slot = new Int32Array(S).fill(-1); // prompt index held by each slot, -1 = empty
  const streams: Rng[] = new Array(S);
  let queued = 0;
  let done = 0;
  let generated = 0;
  let logits: Tensor<'f32'> | undefined;
  let next: Tensor<'i32'> | undefined;
  let rng: Tensor<'i32'> | undefined;
  /** Puts the next prompts into the given free slots; returns their logits scattered into `into` (or a new [S, V]). */
  const refill = (free: number[], into: Tensor<'f32'> | undefined): Tensor<'f32'> => {
    const idx = free.map((s) => {
      const i = order[queued++];
      slot[s] = i;
      results[i] = { tokens: [], finishReason: 'length' };
      streams[s] = new Rng(o.seed).fork(o.streamIds ? o.streamIds[i] : i);
      return i;
    });
    rng?.free();
    rng = rngStates(
      be,
      streams.map((r) => r ?? new Rng(0)),
    );
    const pre = cache.prefillSlots!(
      free,
      idx.map((i) => prompts[i]),
    );
    if (!into && free.length === S && free.every((s, k) => s === k)) return pre;
    const out = into ?? ops.empty(be, 'f32', [S, model.vocabSize]);
    const at = ops.upload(be, { dtype: 'i32', data: Int32Array.from(free) }, [free.length]);
    ops.scatterRows(pre, at, out);
    at.free();
    pre.free();
    return out;
  };
  try {
    logits = refill(
      Array.from({ length: S }, (_, s) => s),
      undefined,
    );
    for (;;) {
      const active = Uint8Array.from(slot, (i) => (i >= 0 ? 1 : 0));
      const activeT = ops.upload(be, { dtype: 'i32', data: Int32Array.from(active) }, [S]);
      next?.free();
      next = sampleMasked(logits, rng!, activeT, o, mask);
      activeT.free();
      logits.free();
      logits = undefined;
      if (!greedy) for (let s = 0; s < S; s++) if (active[s]) streams[s].next();
      const ids = await ops.read(next); // S ids: the one host read of a step
      const finished: number[] = [];
      const free: number[] = [];
      for (let s = 0; s < S; s++) {
        const i = slot[s];
        if (i < 0) continue;
        if (accept(results[i], ids[s], budgets[i], o)) continue;
        finished.push(i);
        generated += results[i].tokens.length;
        active[s] = 0;
        slot[s] = -1;
        if (queued + free.length < order.length) free.push(s);
      }
      const goOn = active.some((a) => a === 1);
      if (goOn) logits = cache.decode(next, active);
      if (free.length > 0) logits = refill(free, logits);
      if (finished.length > 0) {
        done += finished.length;
        await o.onBatch?.(
          finished,
          finished.map((i) => results[i]),
        );
        await o.onProgress?.(done, generated);
      }
      if (!logits) break;
    }
  } finally {
    logits?.free();
    next?.free();
    rng?.free();
    mask.bias?.free();
    cache.free();
  }
  return results;
}

export async function generate(model: DecoderModel, prompts: readonly (readonly number[])[], o: GenerateOptions): Promise<Generation[]> {
  checkSampling(o);
  checkVocab(model, o);
  if (!Number.isSafeInteger(o.maxNewTokens) || o.maxNewTokens < 1)
    throw new RangeError(`max_new_tokens must be a positive integer, got ${o.maxNewTokens}`);
  if (!Number.isSafeInteger(o.batchSize) || o.batchSize < 1)
    throw new RangeError(`batch size must be a positive integer, got ${o.batchSize}`);
  if (o.schedule !== undefined && o.schedule !== 'static' && o.schedule !== 'continuous')
    throw new RangeError(`schedule must be 'continuous' or 'static', got ${String(o.schedule)}`);
  if (o.streamIds && o.streamIds.length !== prompts.length)
    throw new RangeError(`streamIds has ${o.streamIds.length} entries for ${prompts.length} prompts`);
  prompts.forEach((p, i) => {
    if (p.length === 0) throw new RangeError(`prompt ${i} is empty`);
    if (p.length >= model.maxPositions)
      throw new RangeError(`prompt ${i} has ${p.length} tokens: no room to generate within ${model.maxPositions} positions`);
  });
  const order = prompts.map((_, i) => i).sort((a, b) => prompts[a].length - prompts[b].length || a - b);
  if (prompts.length > 0 && (o.schedule ?? 'continuous') === 'continuous') {
    const results = await generateContinuous(model, prompts, order, o);
    if (results) return results;
  }
  const results: Generation[] = new Array(prompts.length);
  let done = 0;
  let generated = 0;
  for (let i = 0; i < order.length; i += o.batchSize) {
    const idx = order.slice(i, i + o.batchSize);
    const gens = await generateBatch(
      model,
      idx.map((j) => prompts[j]),
      idx,
      o,
      Math.min(o.batchSize, prompts.length),
    );
    idx.forEach((j, k) => {
      results[j] = gens[k];
      generated += gens[k].tokens.length;
    });
    done += idx.length;
    await o.onBatch?.(idx, gens);
    await o.onProgress?.(done, generated);
  }
  return results;
}
