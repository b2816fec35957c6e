// Batched generation with a KV cache: prompts grouped by length (sorted, neighbours batched) to cut
// padding, one RNG stream per prompt (Rng(seed).fork(stream id)) so the same seed gives the same text
// whatever the batch size, stop at EOS / a stop sequence / max_new_tokens / the model's positions.
// Sampling runs on the device (ops.sampleTokens, the algorithm of sampler.ts): per decode step the
// host reads B token ids, never the [B, V] logits, and the sampled ids feed the next step directly.
import type { Backend } from '../backend/backend.js';
import * as ops from '../ops/index.js';
import type { Tensor } from '../tensor/tensor.js';
import { Rng } from '../util/rng.js';
import { checkSampling, type SamplingOptions } from './sampler.js';

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
  free(): void;
}

export interface GenerateOptions extends SamplingOptions {
  maxNewTokens: number;
  eosIds: readonly number[];
  /** Token sequences that end an answer (excluded from it). */
  stopSequences?: readonly (readonly number[])[];
  seed: number;
  batchSize: number;
  /** RNG stream of each prompt (default: its index); lets a resumed subset sample as the full list would. */
  streamIds?: readonly number[];
  /** Called after each batch with the indices (into `prompts`) it finished and their generations. */
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

/** Each row's xoshiro128** state as i32 [B, 4] for the device sampler. */
function rngStates(be: Backend, rngs: readonly Rng[]): Tensor<'i32'> {
  const words = new Uint32Array(4 * rngs.length);
  rngs.forEach((r, b) => words.set(r.getState().s, 4 * b));
  return ops.upload(be, { dtype: 'i32', data: new Int32Array(words.buffer) }, [rngs.length, 4]);
}

/** Generates for one batch of prompts (indices into the full list, for their RNG streams). */
async function generateBatch(model: DecoderModel, prompts: readonly (readonly number[])[], index: readonly number[], o: GenerateOptions): Promise<Generation[]> {
  const B = prompts.length;
  const be = model.backend;
  const longest = Math.max(...prompts.map((p) => p.length));
  const budget = Math.min(o.maxNewTokens, model.maxPositions - longest);
  if (budget < 1) return prompts.map(() => ({ tokens: [], finishReason: 'length' }));
  const cache = model.newCache(B, longest + budget);
  const rng = rngStates(be, index.map((i) => new Rng(o.seed).fork(o.streamIds ? o.streamIds[i] : i)));
  const out: Generation[] = prompts.map(() => ({ tokens: [], finishReason: 'length' }));
  const active = new Uint8Array(B).fill(1);
  const sampling = { temperature: o.temperature, topK: o.topK, topP: o.topP };
  let logits: Tensor<'f32'> | undefined;
  let next: Tensor<'i32'> | undefined;
  try {
    logits = cache.prefill(prompts);
    for (let step = 0; step < budget; step++) {
      const activeT = ops.upload(be, { dtype: 'i32', data: Int32Array.from(active) }, [B]);
      next?.free();
      next = ops.sampleTokens(logits, rng, activeT, sampling);
      activeT.free();
      logits.free();
      logits = undefined;
      const ids = await ops.read(next); // B ids: the one host read of a decode step
      let live = 0;
      for (let b = 0; b < B; b++) {
        if (!active[b]) continue;
        const id = ids[b];
        const g = out[b];
        if (o.eosIds.includes(id)) {
          g.finishReason = 'eos';
          active[b] = 0;
          continue;
        }
        g.tokens.push(id);
        const stop = o.stopSequences?.find((s) => endsWith(g.tokens, s));
        if (stop) {
          g.tokens.length -= stop.length;
          g.finishReason = 'stop';
          active[b] = 0;
          continue;
        }
        if (prompts[b].length + g.tokens.length >= longest + budget || g.tokens.length >= o.maxNewTokens) {
          active[b] = 0;
          continue;
        }
        live++;
      }
      if (live === 0) break;
      logits = cache.decode(next, active);
    }
  } finally {
    logits?.free();
    next?.free();
    rng.free();
    cache.free();
  }
  return out;
}

export async function generate(model: DecoderModel, prompts: readonly (readonly number[])[], o: GenerateOptions): Promise<Generation[]> {
  checkSampling(o);
  if (!Number.isSafeInteger(o.maxNewTokens) || o.maxNewTokens < 1) throw new RangeError(`max_new_tokens must be a positive integer, got ${o.maxNewTokens}`);
  if (!Number.isSafeInteger(o.batchSize) || o.batchSize < 1) throw new RangeError(`batch size must be a positive integer, got ${o.batchSize}`);
  if (o.streamIds && o.streamIds.length !== prompts.length) throw new RangeError(`streamIds has ${o.streamIds.length} entries for ${prompts.length} prompts`);
  prompts.forEach((p, i) => {
    if (p.length === 0) throw new RangeError(`prompt ${i} is empty`);
    if (p.length >= model.maxPositions) throw new RangeError(`prompt ${i} has ${p.length} tokens: no room to generate within ${model.maxPositions} positions`);
  });
  const order = prompts.map((_, i) => i).sort((a, b) => prompts[a].length - prompts[b].length || a - b);
  const results: Generation[] = new Array(prompts.length);
  let done = 0;
  let generated = 0;
  for (let i = 0; i < order.length; i += o.batchSize) {
    const idx = order.slice(i, i + o.batchSize);
    const gens = await generateBatch(model, idx.map((j) => prompts[j]), idx, o);
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
