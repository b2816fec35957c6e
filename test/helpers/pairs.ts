// Random tokenized SPIN pairs for the tiny test model (ids 3..39, eos 2): a shared prompt of 2-5
// tokens, real and generated answers of 1-4 tokens each, both ending with eos.
import type { TokenizedPair } from '../../src/spin/batch.js';
import type { Rng } from '../../src/util/rng.js';

export const TINY_EOS = 2;

export function randomPairs(rng: Rng, n: number): TokenizedPair[] {
  const toks = (k: number) => Array.from({ length: k }, () => rng.int(3, 40));
  return Array.from({ length: n }, () => {
    const prompt = toks(rng.int(2, 6));
    return {
      real: { prompt, answer: [...toks(rng.int(1, 5)), TINY_EOS] },
      generated: { prompt, answer: [...toks(rng.int(1, 5)), TINY_EOS] },
    };
  });
}
