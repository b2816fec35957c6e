// Synthetic instruction tasks with exactly checkable answers: the embedded default's data.
//
// Each family writes short ASCII prompts (<= 48 chars) and answers (<= 24 chars) for a byte-level
// model; the answer is a deterministic function of the prompt. The families are meant to span
// difficulty (docs/demo.md, "What a prototype showed": on digit sums alone a converged tiny model reached ~99% and left
// nothing to measure): copy/lookup families (date, swap_case, reverse_words) should be learned
// almost fully, while carries (add, sub, mul), counting, base conversion and long sorts should stay
// hard for a small model. `families` picks a subset when a demo needs a different mix.
import { Rng, type Seed } from '../util/rng.js';
import { roundMessages } from './messages.js';
import type { ChatRow } from './sft.js';
import { finalAnswer, isWordProblemTask } from './word_teacher.js';

export const MAX_PROMPT_CHARS = 48;
export const MAX_ANSWER_CHARS = 24;

export interface SyntheticTask {
  task: string; // family name
  prompt: string;
  answer: string;
}

interface Family {
  name: string;
  description: string;
  make(rng: Rng): { prompt: string; answer: string };
}

// Common short English words (3-5 lowercase letters) for the word-list families.
const WORDS = (
  'cat dog sun moon star tree rock bird fish frog lake hill road door book lamp desk cup milk ' +
  'bread apple pear plum lemon grape rice corn salt sugar honey cake pie soup tea ' +
  'red blue green black white pink gray gold brown ' +
  'run walk jump swim sing read write sleep dream think laugh smile ' +
  'king queen hero ghost robot tiger zebra horse sheep goat mouse snake eagle whale shark ' +
  'cloud rain snow wind storm river ocean sand stone ice fire smoke ' +
  'bell drum flute piano harp song poem story map coin ring key box bag hat shoe sock coat ' +
  'city town farm park shop bank ship boat train plane car bike bus van'
)
  .split(' ')
  .filter((w, i, all) => all.indexOf(w) === i);

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];

function digits(rng: Rng, n: number): number {
  return n === 1 ? rng.int(0, 9) : rng.int(10 ** (n - 1), 10 ** n - 1);
}

function letters(rng: Rng, n: number, alphabet = 'abcdefghijklmnopqrstuvwxyz'): string {
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[rng.int(0, alphabet.length - 1)];
  return s;
}

function words(rng: Rng, n: number): string[] {
  return Array.from({ length: n }, () => WORDS[rng.int(0, WORDS.length - 1)]);
}

function numbers(rng: Rng, n: number, hi: number): number[] {
  return Array.from({ length: n }, () => rng.int(0, hi));
}

function daysInMonth(year: number, month: number): number {
  return new Date(Date.UTC(year, month, 0)).getUTCDate(); // month 1..12: day 0 of the next month
}

const FAMILIES: readonly Family[] = [
  {
    name: 'add',
    description: 'sum of a 2-6 digit integer and one no longer than it (carries; harder with more digits)',
    make(rng) {
      const da = rng.int(2, 6);
      const a = digits(rng, da);
      const b = digits(rng, rng.int(1, da));
      return { prompt: `Add: ${a}+${b}`, answer: String(a + b) };
    },
  },
  {
    name: 'sub',
    description: 'difference of two integers of 2-5 digits, negative when the second is larger',
    make(rng) {
      const a = digits(rng, rng.int(2, 5));
      const b = digits(rng, rng.int(2, 5));
      return { prompt: `Subtract: ${a}-${b}`, answer: String(a - b) };
    },
  },
  {
    name: 'mul',
    description: 'product of a 2-3 digit and a 1-2 digit integer',
    make(rng) {
      const a = digits(rng, rng.int(2, 3));
      const b = digits(rng, rng.int(1, 2));
      return { prompt: `Multiply: ${a}*${b}`, answer: String(a * b) };
    },
  },
  {
    name: 'sort_nums',
    description: 'sort 4-8 integers in 0-99 into ascending numeric order, space separated',
    make(rng) {
      const xs = numbers(rng, rng.int(4, 8), 99);
      return {
        prompt: `Sort ascending: ${xs.join(' ')}`,
        answer: xs
          .slice()
          .sort((p, q) => p - q)
          .join(' '),
      };
    },
  },
  {
    name: 'sort_letters',
    description: 'sort 5-12 lowercase letters alphabetically',
    make(rng) {
      const s = letters(rng, rng.int(5, 12));
      return { prompt: `Sort letters: ${s}`, answer: s.split('').sort().join('') };
    },
  },
  {
    name: 'reverse',
    description: 'reverse a string of 4-14 random lowercase letters',
    make(rng) {
      const s = letters(rng, rng.int(4, 14));
      return { prompt: `Reverse: ${s}`, answer: s.split('').reverse().join('') };
    },
  },
  {
    name: 'reverse_words',
    description: 'reverse the order of 2-4 words',
    make(rng) {
      const ws = words(rng, rng.int(2, 4));
      return { prompt: `Reverse words: ${ws.join(' ')}`, answer: ws.slice().reverse().join(' ') };
    },
  },
  {
    name: 'count_letter',
    description: 'count one letter in 8-24 letters drawn from a-d',
    make(rng) {
      const s = letters(rng, rng.int(8, 24), 'abcd');
      const c = 'abcd'[rng.int(0, 3)];
      return { prompt: `Count ${c} in: ${s}`, answer: String(s.split(c).length - 1) };
    },
  },
  {
    name: 'last_letters',
    description: 'concatenate the last letters of 2-5 words',
    make(rng) {
      const ws = words(rng, rng.int(2, 5));
      return { prompt: `Join last letters: ${ws.join(' ')}`, answer: ws.map((w) => w[w.length - 1]).join('') };
    },
  },
  {
    name: 'max',
    description: 'largest of 3-8 integers in 0-999',
    make(rng) {
      const xs = numbers(rng, rng.int(3, 8), 999);
      return { prompt: `Max of: ${xs.join(' ')}`, answer: String(Math.max(...xs)) };
    },
  },
  {
    name: 'dedup',
    description: 'drop repeated digits from a list of 5-10, keeping first occurrences in order',
    make(rng) {
      const xs = numbers(rng, rng.int(5, 10), 9);
      return { prompt: `Unique, first-seen order: ${xs.join(' ')}`, answer: [...new Set(xs)].join(' ') };
    },
  },
  {
    name: 'date',
    description: 'rewrite an ISO date YYYY-MM-DD as "D Month YYYY"',
    make(rng) {
      const y = rng.int(1900, 2099);
      const m = rng.int(1, 12);
      const d = rng.int(1, daysInMonth(y, m));
      const iso = `${y}-${String(m).padStart(2, '0')}-${String(d).padStart(2, '0')}`;
      return { prompt: `Write ${iso} as D Month YYYY`, answer: `${d} ${MONTHS[m - 1]} ${y}` };
    },
  },
  {
    name: 'minutes',
    description: 'convert 0-1439 minutes to h:mm',
    make(rng) {
      const t = rng.int(0, 1439);
      return { prompt: `Minutes ${t} as h:mm`, answer: `${Math.floor(t / 60)}:${String(t % 60).padStart(2, '0')}` };
    },
  },
  {
    name: 'swap_case',
    description: 'swap the case of every letter in 4-16 mixed-case letters',
    make(rng) {
      const s = letters(rng, rng.int(4, 16), 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ');
      const swapped = s.replace(/[a-zA-Z]/g, (ch) => (ch === ch.toLowerCase() ? ch.toUpperCase() : ch.toLowerCase()));
      return { prompt: `Swap case: ${s}`, answer: swapped };
    },
  },
  {
    name: 'binary',
    description: 'write an integer in 1-1023 in binary, no leading zeros',
    make(rng) {
      const x = rng.int(1, 1023);
      return { prompt: `Binary of ${x}`, answer: x.toString(2) };
    },
  },
];

/** Every family with a one-line description. */
export const SYNTHETIC_FAMILIES: readonly { name: string; description: string }[] = FAMILIES.map(({ name, description }) => ({
  name,
  description,
}));

export interface SyntheticOptions {
  seed: Seed;
  size: number;
  /** Subset of family names (default: all); families get equal shares, +-1. */
  families?: readonly string[];
  /** No two tasks share a prompt (default true), so a train/test split of one set is disjoint. */
  unique?: boolean;
}

const MAX_ATTEMPTS = 200;

/**
 * `size` tasks, deterministic in (seed, size, families, unique), in shuffled order. Task i draws its
 * family from a balanced schedule and its content from its own stream seed.fork(i) (+ retries).
 */
export function generateSyntheticTasks(opts: SyntheticOptions): SyntheticTask[] {
  const { size, unique = true } = opts;
  if (!Number.isSafeInteger(size) || size < 1) throw new RangeError(`synthetic size must be a positive integer, got ${size}`);
  const names = opts.families ?? FAMILIES.map((f) => f.name);
  if (names.length === 0) throw new RangeError('families must name at least one family');
  const chosen = names.map((n) => {
    const f = FAMILIES.find((x) => x.name === n);
    if (!f) throw new RangeError(`unknown synthetic family '${n}' (known: ${FAMILIES.map((x) => x.name).join(', ')})`);
    return f;
  });
  const root = new Rng(opts.seed);
  // Balanced schedule: family k for positions with i % F == k, then the order is shuffled.
  const schedule = root.fork('schedule').shuffle(Array.from({ length: size }, (_, i) => chosen[i % chosen.length]));
  const seen = new Set<string>();
  const tasks: SyntheticTask[] = [];
  for (let i = 0; i < size; i++) {
    const family = schedule[i];
    const stream = root.fork(i);
    let t: { prompt: string; answer: string } | null = null;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const c = family.make(attempt === 0 ? stream : stream.fork(attempt));
      if (!unique || !seen.has(c.prompt)) {
        t = c;
        break;
      }
    }
    if (t === null)
      throw new RangeError(
        `could not draw a new '${family.name}' prompt after ${MAX_ATTEMPTS} tries: size ${size} is too large for unique prompts`,
      );
    if (t.prompt.length > MAX_PROMPT_CHARS || t.answer.length > MAX_ANSWER_CHARS) {
      throw new Error(`synthetic family '${family.name}' made an over-long task: ${JSON.stringify(t)}`);
    }
    seen.add(t.prompt);
    tasks.push({ task: family.name, ...t });
  }
  return tasks;
}

/** Tasks as UltraChat-layout rows: {prompt, messages: [user, assistant], task}. */
export function syntheticChatRows(tasks: readonly SyntheticTask[]): ChatRow[] {
  return tasks.map((t) => ({ prompt: t.prompt, messages: roundMessages(t.prompt, t.answer), task: t.task }));
}

/**
 * Exact match after trimming leading and trailing whitespace (String.prototype.trim: spaces, tabs,
 * newlines) from both sides; everything else, case and inner spaces included, must be identical.
 */
export function exactMatch(task: { answer: string } | { real: string }, answer: string): boolean {
  const ref = 'answer' in task ? task.answer : task.real;
  return answer.trim() === ref.trim();
}

export interface MatchCount {
  n: number;
  correct: number;
  accuracy: number; // correct / n
}

export interface ExactMatchScore extends MatchCount {
  byTask: Record<string, MatchCount>; // per family; pairs without a task label count under "unlabeled"
}

/**
 * Whether an answer is right: for the word problems (task wp_*), its final answer (word_teacher.ts
 * finalAnswer: the last integer or h:mm) equals the reference's, since any of the teacher's many
 * solutions is right; for every other family, exactMatch.
 */
export function answerCorrect(task: ({ answer: string } | { real: string }) & { task?: string }, answer: string): boolean {
  if (!isWordProblemTask(task.task)) return exactMatch(task, answer);
  const ref = finalAnswer('answer' in task ? task.answer : task.real);
  return ref !== null && finalAnswer(answer) === ref;
}

/** Scores answers[i] against pairs[i].real (or .answer) with answerCorrect, overall and per task family. */
export function scoreExactMatch(
  pairs: readonly ({ real: string; task?: string } | { answer: string; task?: string })[],
  answers: readonly string[],
): ExactMatchScore {
  if (pairs.length !== answers.length) throw new RangeError(`scoreExactMatch: ${pairs.length} pairs but ${answers.length} answers`);
  if (pairs.length === 0) throw new RangeError('scoreExactMatch: nothing to score');
  const byTask: Record<string, MatchCount> = {};
  let correct = 0;
  pairs.forEach((p, i) => {
    if (typeof answers[i] !== 'string') throw new TypeError(`scoreExactMatch: answers[${i}] must be a string, got ${typeof answers[i]}`);
    const ok = answerCorrect(p, answers[i]);
    const key = p.task ?? 'unlabeled';
    const m = (byTask[key] ??= { n: 0, correct: 0, accuracy: 0 });
    m.n++;
    if (ok) {
      m.correct++;
      correct++;
    }
  });
  for (const m of Object.values(byTask)) m.accuracy = m.correct / m.n;
  const sorted = Object.fromEntries(
    Object.keys(byTask)
      .sort()
      .map((k) => [k, byTask[k]]),
  );
  return { n: pairs.length, correct, accuracy: correct / pairs.length, byTask: sorted };
}
