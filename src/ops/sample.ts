// Next-token sampling as a device op: the host reads B token ids per decode step instead of [B, V]
// logits. Same algorithm and the same per-row RNG streams as src/generate/sampler.ts.
import type { SampleOpts } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { checkFinite, expectArg, expectRows, expectTensor } from './check.js';

export function checkSampleOpts(o: SampleOpts): void {
  checkFinite(o.temperature, 'temperature');
  if (o.temperature < 0) throw new RangeError(`temperature must be >= 0, got ${o.temperature}`);
  if (!Number.isSafeInteger(o.topK) || o.topK < 0) throw new RangeError(`top_k must be an integer >= 0, got ${o.topK}`);
  if (!(o.topP > 0 && o.topP <= 1)) throw new RangeError(`top_p must be in (0, 1], got ${o.topP}`);
}

/**
 * logits f32 [B, V], rng i32 [B, 4] (each row's xoshiro128** state, advanced in place), active i32 [B]
 * (0 = the row is done: id 0, state untouched) -> i32 [B] token ids, each < limit (default V): the
 * sampler (greedy too) sees only the first `limit` logits of a row, as if the row ended there.
 */
export function sampleTokens(
  logits: Tensor<'f32'>,
  rng: Tensor<'i32'>,
  active: Tensor<'i32'>,
  opts: SampleOpts,
  limit?: number,
): Tensor<'i32'> {
  const be = expectTensor(logits, 'logits');
  const [b, v] = expectRows(be, logits, 'logits');
  if (b > 0 && v < 1) throw new RangeError('sampleTokens: logits need a vocabulary of at least 1');
  expectArg(be, rng, 'rng', ['i32'], [b, 4]);
  expectArg(be, active, 'active', ['i32'], [b]);
  checkSampleOpts(opts);
  const lim = limit ?? v;
  if (b > 0 && (!Number.isSafeInteger(lim) || lim < 1 || lim > v))
    throw new RangeError(`sampleTokens: limit must be an integer in [1, ${v}] (the logits' vocabulary), got ${lim}`);
  return be.sampleTokens(logits, rng, active, opts, lim);
}
