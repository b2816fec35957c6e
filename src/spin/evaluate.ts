// Held-out evaluation: the mean log-prob per token of the real answers (any data), and exact match of
// greedy answers on the synthetic tasks.
import { type ExactMatchScore, scoreExactMatch, type SyntheticTask } from '../data/synthetic.js';
import { answerPrompts } from '../generate/answers.js';
import { GREEDY } from '../generate/sampler.js';
import { LlamaDecoder } from '../model/decoder.js';
import type { LlamaModel } from '../model/llama.js';
import type { HfTokenizer } from '../text/tokenizer.js';
import { formatPrompt, type PromptTemplate } from '../text/templates.js';
import type { TruncationOptions } from './batch.js';
import { scorePairs } from './score.js';
import { padIdOf } from './sft.js';

/** Sum of real-answer log-probs over all held-out pairs divided by their token count (answer + EOS). */
export async function heldoutLogp(
  model: LlamaModel,
  tok: HfTokenizer,
  pairs: readonly { prompt: string; real: string }[],
  opts: TruncationOptions & { template: PromptTemplate; batchSize: number },
): Promise<number> {
  const scores = await scorePairs(
    model,
    tok,
    pairs.map((p) => ({ prompt: p.prompt, real: p.real, generated: '' })),
    { ...opts, padId: padIdOf(tok) },
  );
  let lp = 0;
  let n = 0;
  for (const s of scores) {
    lp += s.logps_real;
    n += s.tokens_real;
  }
  return n > 0 ? lp / n : 0;
}

/** Greedy answers to held-out synthetic tasks, scored by exact match (overall and per family). */
export async function exactMatchEval(
  model: LlamaModel,
  tok: HfTokenizer,
  tasks: readonly SyntheticTask[],
  opts: { template: PromptTemplate; batchSize: number; maxNewTokens: number },
): Promise<ExactMatchScore> {
  const prompts = tasks.map((t) => formatPrompt(tok, opts.template, t.prompt));
  const answers = await answerPrompts(new LlamaDecoder(model), tok, prompts, {
    ...GREEDY,
    maxNewTokens: opts.maxNewTokens,
    seed: 0,
    batchSize: opts.batchSize,
  });
  return scoreExactMatch(tasks, answers);
}
