// The stochastic teacher of the word problems (issue 31) and their data sets.
//
// A solution is one derivation of the problem's grammar (src/data/word_problems.ts): an order, then one
// form per segment, joined by single spaces. Its probability is the product of the choices; a string's
// probability is the sum over every derivation that writes it. Each problem has at most a few thousand
// derivations, so support() enumerates them all and merges equal strings: logProb is exact, and a
// string no derivation writes has probability 0 (logProb -Infinity).
import { Rng, type Seed } from '../util/rng.js';
import { roundMessages } from './messages.js';
import type { ChatRow } from './sft.js';
import {
  answerOf,
  drawProblem,
  grammarOf,
  keyOf,
  promptOf,
  WORD_PROBLEM_KINDS,
  type Segment,
  type WordProblem,
  type WordProblemKind,
} from './word_problems.js';

/** Joins the chosen forms: single spaces, empty forms skipped. */
const joinForms = (forms: readonly string[]) => forms.filter((f) => f !== '').join(' ');

const cache = new Map<string, Map<string, number>>();

/** Every distinct solution with its probability (they sum to 1), most likely first. */
export function support(pr: WordProblem): Map<string, number> {
  const key = keyOf(pr);
  const hit = cache.get(key);
  if (hit) return hit;
  const out = new Map<string, number>();
  for (const order of grammarOf(pr)) {
    const walk = (i: number, forms: string[], p: number) => {
      if (i === order.segments.length) {
        const s = joinForms(forms);
        out.set(s, (out.get(s) ?? 0) + p);
        return;
      }
      for (const [text, q] of order.segments[i]) walk(i + 1, [...forms, text], p * q);
    };
    walk(0, [], order.p);
  }
  const sorted = new Map([...out].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)));
  if (cache.size >= 4096) cache.clear();
  cache.set(key, sorted);
  return sorted;
}

function pick<T>(rng: Rng, alternatives: readonly (readonly [T, number])[]): T {
  let u = rng.next();
  for (const [x, p] of alternatives) {
    if (u < p) return x;
    u -= p;
  }
  return alternatives[alternatives.length - 1][0]; // rounding: the probabilities sum to 1 - eps
}

/** One solution drawn from the teacher: an order, then one form per segment. */
export function sample(pr: WordProblem, rng: Rng): string {
  const orders = grammarOf(pr);
  const order = pick(
    rng,
    orders.map((o) => [o, o.p] as const),
  );
  return joinForms(order.segments.map((seg: Segment) => pick(rng, seg)));
}

/** Exact log-probability of `solution` under the teacher; -Infinity if it cannot write it. */
export function logProb(pr: WordProblem, solution: string): number {
  const p = support(pr).get(solution);
  return p === undefined ? -Infinity : Math.log(p);
}

/** The final answer a solution states: its last h:mm or integer (null if it has none). */
export function finalAnswer(solution: string): string | null {
  const all = solution.match(/\d+:\d\d|\d+/g);
  return all ? all[all.length - 1] : null;
}

/** Whitespace collapsed, thousands separators and "$" dropped: what "distinct solutions" counts. */
export const normalizeSolution = (s: string): string =>
  s
    .replace(/\s+/g, ' ')
    .trim()
    .replace(/(\d),(?=\d{3}\b)/g, '$1')
    .replace(/\$/g, '');

/** Task names of the word problems ("task" field of their rows). */
export const isWordProblemTask = (task: string | undefined): boolean => (WORD_PROBLEM_KINDS as readonly string[]).includes(task ?? '');

/** FNV-1a of the key: a problem is held out iff its hash is 0 mod HELDOUT_MOD (1 in 8 of the key space). */
export const HELDOUT_MOD = 8;
export function isHeldout(pr: WordProblem): boolean {
  let h = 0x811c9dc5;
  for (const ch of keyOf(pr)) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193) >>> 0;
  return h % HELDOUT_MOD === 0;
}

export interface WordProblemRow extends ChatRow {
  task: WordProblemKind;
  key: string;
  answer: string; // the checked final answer
}

export interface WordProblemOptions {
  seed: Seed;
  size: number;
  /** 'train' draws only problems outside the held-out part of the key space, 'heldout' only inside it. */
  split: 'train' | 'heldout';
  kinds?: readonly WordProblemKind[];
}

/**
 * `size` distinct problems of the split (kinds in turn, then shuffled), each with one teacher solution
 * as its real answer. Deterministic in the options: problem i comes from stream seed.fork(i) (+ retries),
 * its solution from seed.fork(i).fork('solution').
 */
export function generateWordProblems(opts: WordProblemOptions): WordProblemRow[] {
  const { size, split } = opts;
  if (!Number.isSafeInteger(size) || size < 1) throw new RangeError(`size must be a positive integer, got ${size}`);
  const kinds = opts.kinds ?? WORD_PROBLEM_KINDS;
  for (const k of kinds)
    if (!(WORD_PROBLEM_KINDS as readonly string[]).includes(k))
      throw new RangeError(`unknown word-problem kind '${k}' (known: ${WORD_PROBLEM_KINDS.join(', ')})`);
  const root = new Rng(opts.seed);
  const schedule = root.fork('schedule').shuffle(Array.from({ length: size }, (_, i) => kinds[i % kinds.length]));
  const seen = new Set<string>();
  return schedule.map((kind, i) => {
    const stream = root.fork(i);
    for (let attempt = 0; attempt < 1000; attempt++) {
      const pr = drawProblem(kind, stream);
      const key = keyOf(pr);
      if (seen.has(key) || isHeldout(pr) !== (split === 'heldout')) continue;
      seen.add(key);
      const solution = sample(pr, stream.fork('solution'));
      return { prompt: promptOf(pr), messages: roundMessages(promptOf(pr), solution), task: kind, key, answer: answerOf(pr) };
    }
    throw new RangeError(`could not draw a new ${split} '${kind}' problem: size ${size} is too large`);
  });
}
