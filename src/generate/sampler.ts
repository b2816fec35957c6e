// Next-token choice from one row of logits, as Hugging Face's warpers apply them: temperature, then
// top-k, then top-p (nucleus), then a draw from the sequence's own RNG stream. Greedy (argmax, ties to
// the lowest id) when temperature is 0 or top_k is 1. float64 throughout.
import type { Rng } from '../util/rng.js';

export interface SamplingOptions {
  /** 0 = greedy. */
  temperature: number;
  /** 0 = off. */
  topK: number;
  /** 1 = off. */
  topP: number;
}

export const GREEDY: SamplingOptions = { temperature: 0, topK: 0, topP: 1 };

export function checkSampling(o: SamplingOptions): void {
  if (!(o.temperature >= 0) || !Number.isFinite(o.temperature))
    throw new RangeError(`temperature must be a finite number >= 0, got ${o.temperature}`);
  if (!Number.isSafeInteger(o.topK) || o.topK < 0) throw new RangeError(`top_k must be an integer >= 0, got ${o.topK}`);
  if (!(o.topP > 0 && o.topP <= 1)) throw new RangeError(`top_p must be in (0, 1], got ${o.topP}`);
}

export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

export function isGreedy(o: SamplingOptions): boolean {
  return o.temperature === 0 || o.topK === 1;
}

/** The candidate ids and their probabilities after temperature, top-k and top-p (for tests and sampling). */
export function candidates(row: ArrayLike<number>, o: SamplingOptions): { ids: number[]; probs: number[] } {
  const v = row.length;
  // temperature, then the k largest (all when top-k is off), sorted by logit descending, ties by id
  let ids = Array.from({ length: v }, (_, i) => i).filter((i) => row[i] > -Infinity);
  if (ids.length === 0) ids = [argmax(row)];
  ids.sort((a, b) => row[b] - row[a] || a - b);
  if (o.topK > 0 && o.topK < ids.length) ids = ids.slice(0, o.topK);
  const m = row[ids[0]] / o.temperature;
  let probs = ids.map((i) => Math.exp(row[i] / o.temperature - m));
  let z = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / z);
  if (o.topP < 1) {
    // keep tokens whose cumulative probability before them is < top_p (always at least one)
    let cum = 0;
    let keep = 0;
    while (keep < probs.length && (keep === 0 || cum < o.topP)) cum += probs[keep++];
    ids = ids.slice(0, keep);
    probs = probs.slice(0, keep);
    z = probs.reduce((a, b) => a + b, 0);
    probs = probs.map((p) => p / z);
  }
  return { ids, probs };
}

export function sampleToken(row: ArrayLike<number>, o: SamplingOptions, rng: Rng): number {
  if (isGreedy(o)) return argmax(row);
  const { ids, probs } = candidates(row, o);
  const u = rng.next();
  let cum = 0;
  for (let i = 0; i < ids.length; i++) {
    cum += probs[i];
    if (u < cum) return ids[i];
  }
  return ids[ids.length - 1];
}
