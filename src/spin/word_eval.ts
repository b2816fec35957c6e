// Measures of the word problems (issue 31; docs/science.md, "Second study"): the teacher's exact
// log-likelihood of a model's solutions (and the fraction it cannot write at all), and final-answer
// accuracy of the majority vote over several sampled solutions.
import { answerCorrect } from '../data/synthetic.js';
import { problemFromPrompt } from '../data/word_problems.js';
import { finalAnswer, isWordProblemTask, logProb } from '../data/word_teacher.js';
import { answerPrompts } from '../generate/answers.js';
import { LlamaDecoder } from '../model/decoder.js';
import type { LlamaModel } from '../model/llama.js';
import type { HfTokenizer } from '../text/tokenizer.js';
import { formatPrompt, type PromptTemplate } from '../text/templates.js';

/** True when every task is a word problem (task wp_*): the teacher's measures apply. */
export const areWordProblems = (tasks: readonly { task?: string }[]): boolean =>
  tasks.length > 0 && tasks.every((t) => isWordProblemTask(t.task));

export interface TeacherStats {
  /** Mean teacher log-probability (nats per solution) of the solutions it can write; null if it can write none. */
  teacherLogp: number | null;
  /** Fraction of the solutions the teacher cannot write (probability 0). */
  teacherImpossible: number;
}

/** The teacher's log-likelihood of solutions[i] to prompts[i] (answers as answerPrompts returns them: trimmed). */
export function teacherStats(tasks: readonly { prompt: string }[], solutions: readonly string[]): TeacherStats {
  if (tasks.length !== solutions.length || tasks.length === 0)
    throw new RangeError(`teacherStats: ${tasks.length} tasks, ${solutions.length} solutions`);
  let sum = 0;
  let n = 0;
  tasks.forEach((t, i) => {
    const pr = problemFromPrompt(t.prompt);
    if (!pr) throw new RangeError(`teacherStats: not a word problem's prompt: ${JSON.stringify(t.prompt)}`);
    const lp = logProb(pr, solutions[i]);
    if (lp > -Infinity) {
      sum += lp;
      n++;
    }
  });
  return { teacherLogp: n > 0 ? sum / n : null, teacherImpossible: 1 - n / tasks.length };
}

/** The most frequent final answer among the solutions (ties: the one seen first); null if none states one. */
export function majorityAnswer(solutions: readonly string[]): string | null {
  const counts = new Map<string, number>();
  let best: string | null = null;
  for (const s of solutions) {
    const a = finalAnswer(s);
    if (a === null) continue;
    const c = (counts.get(a) ?? 0) + 1;
    counts.set(a, c);
    if (best === null || c > counts.get(best)!) best = a;
  }
  return best;
}

/**
 * Final-answer accuracy of the majority vote over `samples` solutions per problem, sampled at
 * `temperature` (draw s of prompt i is stream s x N + i of `seed`).
 */
export async function majorityAccuracy(
  model: LlamaModel,
  tok: HfTokenizer,
  tasks: readonly { task?: string; prompt: string; answer: string }[],
  o: {
    template: PromptTemplate;
    batchSize: number;
    maxNewTokens: number;
    stopIds?: readonly number[];
    samples: number;
    temperature: number;
    seed: number;
  },
): Promise<number> {
  const prompts = tasks.map((t) => formatPrompt(tok, o.template, t.prompt));
  const all = await answerPrompts(new LlamaDecoder(model), tok, Array.from({ length: o.samples }, () => prompts).flat(), {
    temperature: o.temperature,
    topK: 0,
    topP: 1,
    maxNewTokens: o.maxNewTokens,
    stopIds: o.stopIds,
    seed: o.seed,
    batchSize: o.batchSize,
  });
  let correct = 0;
  tasks.forEach((t, i) => {
    const vote = majorityAnswer(Array.from({ length: o.samples }, (_, s) => all[s * tasks.length + i]));
    if (vote !== null && answerCorrect(t, `${vote}`)) correct++;
  });
  return correct / tasks.length;
}
