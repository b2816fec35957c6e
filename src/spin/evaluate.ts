// Held-out evaluation: the mean log-prob per token of the real answers (any data), and exact match of
// greedy answers on the synthetic tasks.
import type { LlamaModel } from '../model/llama.js';
import type { HfTokenizer } from '../text/tokenizer.js';
import type { PromptTemplate } from '../text/templates.js';
import type { TruncationOptions } from './batch.js';
import { scorePairs } from './score.js';
import { padIdOf } from './sft.js';

/** Sum of real-answer log-probs over all held-out pairs divided by their token count (answer + EOS). */
export async function heldoutLogp(model: LlamaModel, tok: HfTokenizer, pairs: readonly { prompt: string; real: string }[], opts: TruncationOptions & { template: PromptTemplate; batchSize: number }): Promise<number> {
  const scores = await scorePairs(model, tok, pairs.map((p) => ({ prompt: p.prompt, real: p.real, generated: '' })), { ...opts, padId: padIdOf(tok) });
  let lp = 0;
  let n = 0;
  for (const s of scores) {
    lp += s.logps_real;
    n += s.tokens_real;
  }
  return n > 0 ? lp / n : 0;
}
