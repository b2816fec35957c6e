// Held-out evaluation: the mean log-prob per token of the real answers (any data), and exact match of
// greedy answers on the synthetic tasks.
import { type ExactMatchScore, scoreExactMatch, type SyntheticTask } from '../data/synthetic.js';
import { answerPrompts } from '../generate/answers.js';
import { GREEDY } from '../generate/sampler.js';
import { LlamaDecoder } from '../model/decoder.js';
import type { LlamaModel } from '../model/llama.js';
import type { HfTokenizer } from '../text/tokenizer.js';
import { formatPrompt, type PromptSource, type PromptTemplate } from '../text/templates.js';
import type { TruncationOptions } from './batch.js';
import { scorePairs } from './score.js';
import { areWordProblems, teacherStats } from './word_eval.js';
import { padIdOf } from './sft.js';

/** Sum of real-answer log-probs over all held-out pairs divided by their token count (answer + EOS). */
export async function heldoutLogp(
  model: LlamaModel,
  tok: HfTokenizer,
  pairs: readonly (PromptSource & { real: string })[],
  opts: TruncationOptions & { template: PromptTemplate; batchSize: number },
): Promise<number> {
  const scores = await scorePairs(
    model,
    tok,
    pairs.map((p) => ({ prompt: p.prompt, messages: p.messages, real: p.real, generated: '' })),
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

/** Greedy answers to held-out prompts (trimmed, as answerPrompts returns them). */
export async function greedyAnswers(
  model: LlamaModel,
  tok: HfTokenizer,
  prompts: readonly string[],
  opts: { template: PromptTemplate; batchSize: number; maxNewTokens: number; stopIds?: readonly number[] },
): Promise<string[]> {
  return answerPrompts(
    new LlamaDecoder(model),
    tok,
    prompts.map((p) => formatPrompt(tok, opts.template, p)),
    { ...GREEDY, maxNewTokens: opts.maxNewTokens, stopIds: opts.stopIds, seed: 0, batchSize: opts.batchSize },
  );
}

/** Greedy answers to held-out synthetic tasks, scored by exact match (final answer for word problems; overall and per family). */
export async function exactMatchEval(
  model: LlamaModel,
  tok: HfTokenizer,
  tasks: readonly SyntheticTask[],
  opts: { template: PromptTemplate; batchSize: number; maxNewTokens: number; stopIds?: readonly number[] },
): Promise<ExactMatchScore & { answers: string[] }> {
  const answers = await greedyAnswers(
    model,
    tok,
    tasks.map((t) => t.prompt),
    opts,
  );
  return { ...scoreExactMatch(tasks, answers), answers };
}

/** How a model is evaluated on held-out data: prompt format, truncation, batch sizes, answer length. */
export interface EvalSettings {
  template: PromptTemplate;
  truncation: TruncationOptions;
  /** Pairs per forward pass of the log-prob evaluation. */
  logpBatchSize: number;
  /** Prompts per batch of greedy answers (exact match). */
  generationBatchSize: number;
  /** Longest greedy answer (exact match). */
  maxNewTokens: number;
  /** Ids that end a greedy answer besides EOS (src/generate/stops.ts). */
  stopIds?: readonly number[];
}

/** Held-out synthetic tasks: exact match (overall and per family), then real-answer log-prob per token (`spinlm demo` and `spinlm sweep`). */
export interface TaskEval {
  exactMatch: number;
  heldoutLogp: number;
  /** Exact match per task family. */
  byTask: Record<string, number>;
  /** Word problems only (word_eval.ts teacherStats): the teacher's mean log-likelihood of the greedy solutions it can write, and the fraction it cannot. */
  teacherLogp?: number | null;
  teacherImpossible?: number;
}

export async function evaluateTasks(
  model: LlamaModel,
  tok: HfTokenizer,
  tasks: readonly SyntheticTask[],
  s: EvalSettings,
): Promise<TaskEval> {
  const em = await exactMatchEval(model, tok, tasks, {
    template: s.template,
    batchSize: s.generationBatchSize,
    maxNewTokens: s.maxNewTokens,
    stopIds: s.stopIds,
  });
  const lp = await heldoutLogp(
    model,
    tok,
    tasks.map((t) => ({ prompt: t.prompt, real: t.answer })),
    { ...s.truncation, template: s.template, batchSize: s.logpBatchSize },
  );
  return {
    exactMatch: em.accuracy,
    heldoutLogp: lp,
    byTask: Object.fromEntries(Object.entries(em.byTask).map(([k, v]) => [k, v.accuracy])),
    ...(areWordProblems(tasks) ? teacherStats(tasks, em.answers) : {}),
  };
}

/** True when every row is a synthetic task (has a "task" field), so exact match applies. */
export const areTasks = (rows: readonly { prompt: string; real: string }[]): boolean =>
  rows.every((p) => typeof (p as { task?: unknown }).task === 'string');

/**
 * Held-out pairs of any data (`spinlm run --eval_data`): `heldout_logp`, the mean real-answer log-prob
 * per token, and for synthetic tasks (rows with a "task" field) `exact_match` of greedy answers (final-answer
 * accuracy for word problems, with `teacher_logp` and `teacher_impossible`: word_eval.ts teacherStats).
 */
export async function evaluateHeldout(
  model: LlamaModel,
  tok: HfTokenizer,
  pairs: readonly { prompt: string; real: string }[],
  s: EvalSettings,
): Promise<{ heldout_logp: number; exact_match?: number; teacher_logp?: number | null; teacher_impossible?: number }> {
  const r: { heldout_logp: number; exact_match?: number; teacher_logp?: number | null; teacher_impossible?: number } = {
    heldout_logp: await heldoutLogp(model, tok, pairs, { ...s.truncation, template: s.template, batchSize: s.logpBatchSize }),
  };
  if (areTasks(pairs)) {
    const tasks = pairs.map((p) => ({ task: (p as { task: string } & typeof p).task, prompt: p.prompt, answer: p.real }));
    const em = await exactMatchEval(model, tok, tasks, {
      template: s.template,
      batchSize: s.generationBatchSize,
      maxNewTokens: s.maxNewTokens,
      stopIds: s.stopIds,
    });
    r.exact_match = em.accuracy;
    if (areWordProblems(tasks)) {
      const t = teacherStats(tasks, em.answers);
      r.teacher_logp = t.teacherLogp;
      r.teacher_impossible = t.teacherImpossible;
    }
  }
  return r;
}
