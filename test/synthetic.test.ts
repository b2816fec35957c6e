// src/data/synthetic.ts: determinism, coverage of families, answers re-derived here from the prompt
// text alone (independent code), the exact-match scorer, and the UltraChat layout round trip.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { loadSftPairs, writeChatRows, type SftPair } from '../src/data/sft.js';
import {
  exactMatch,
  generateSyntheticTasks,
  MAX_ANSWER_CHARS,
  MAX_PROMPT_CHARS,
  scoreExactMatch,
  SYNTHETIC_FAMILIES,
  syntheticChatRows,
  type SyntheticTask,
} from '../src/data/synthetic.js';
import { withTempDir } from './helpers/data_files.js';
import { withSeed } from './helpers/random.js';

const MONTH_NAMES = 'January February March April May June July August September October November December'.split(' ');

function isLeap(y: number): boolean {
  return y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0);
}

function ints(s: string): number[] {
  return s.split(' ').map((x) => {
    assert.match(x, /^\d+$/);
    return parseInt(x, 10);
  });
}

/** The answer to a prompt, recomputed from its text with code independent of the generator. */
function solve(family: string, prompt: string): string {
  const m = (re: RegExp) => {
    const r = re.exec(prompt);
    assert.ok(r, `${family} prompt ${JSON.stringify(prompt)} does not match ${re}`);
    return r;
  };
  switch (family) {
    case 'add': {
      const r = m(/^Add: (\d+)\+(\d+)$/);
      return (BigInt(r[1]) + BigInt(r[2])).toString();
    }
    case 'sub': {
      const r = m(/^Subtract: (\d+)-(\d+)$/);
      return (BigInt(r[1]) - BigInt(r[2])).toString();
    }
    case 'mul': {
      const r = m(/^Multiply: (\d+)\*(\d+)$/);
      return (BigInt(r[1]) * BigInt(r[2])).toString();
    }
    case 'sort_nums': {
      const xs = ints(m(/^Sort ascending: ([\d ]+)$/)[1]);
      for (let i = 1; i < xs.length; i++) for (let j = i; j > 0 && xs[j - 1] > xs[j]; j--) [xs[j - 1], xs[j]] = [xs[j], xs[j - 1]];
      return xs.join(' ');
    }
    case 'sort_letters': {
      const s = m(/^Sort letters: ([a-z]+)$/)[1];
      const counts = new Array(26).fill(0);
      for (const ch of s) counts[ch.charCodeAt(0) - 97]++;
      return counts.map((c, i) => String.fromCharCode(97 + i).repeat(c)).join('');
    }
    case 'reverse': {
      const s = m(/^Reverse: ([a-z]+)$/)[1];
      let out = '';
      for (let i = s.length - 1; i >= 0; i--) out += s[i];
      return out;
    }
    case 'reverse_words': {
      const ws = m(/^Reverse words: ([a-z ]+)$/)[1].split(' ');
      const out: string[] = [];
      for (let i = ws.length - 1; i >= 0; i--) out.push(ws[i]);
      return out.join(' ');
    }
    case 'count_letter': {
      const r = m(/^Count ([a-z]) in: ([a-z]+)$/);
      let c = 0;
      for (const ch of r[2]) if (ch === r[1]) c++;
      return String(c);
    }
    case 'last_letters':
      return m(/^Join last letters: ([a-z ]+)$/)[1]
        .split(' ')
        .map((w) => w.charAt(w.length - 1))
        .join('');
    case 'max': {
      const xs = ints(m(/^Max of: ([\d ]+)$/)[1]);
      let best = -1;
      for (const x of xs) if (x > best) best = x;
      return String(best);
    }
    case 'dedup': {
      const xs = ints(m(/^Unique, first-seen order: ([\d ]+)$/)[1]);
      const out: number[] = [];
      for (const x of xs) if (!out.includes(x)) out.push(x);
      return out.join(' ');
    }
    case 'date': {
      const r = m(/^Write (\d{4})-(\d{2})-(\d{2}) as D Month YYYY$/);
      const [y, mo, d] = [Number(r[1]), Number(r[2]), Number(r[3])];
      const len = [31, isLeap(y) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
      assert.ok(mo >= 1 && mo <= 12 && d >= 1 && d <= len[mo - 1], `invalid date in ${prompt}`);
      return `${d} ${MONTH_NAMES[mo - 1]} ${y}`;
    }
    case 'minutes': {
      const t = Number(m(/^Minutes (\d+) as h:mm$/)[1]);
      assert.ok(t < 1440);
      const mm = t % 60;
      return `${(t - mm) / 60}:${mm < 10 ? '0' : ''}${mm}`;
    }
    case 'swap_case':
      return [...m(/^Swap case: ([a-zA-Z]+)$/)[1]]
        .map((ch) => {
          const c = ch.charCodeAt(0);
          return String.fromCharCode(c >= 97 ? c - 32 : c + 32);
        })
        .join('');
    case 'binary': {
      let x = Number(m(/^Binary of (\d+)$/)[1]);
      assert.ok(x >= 1);
      let bits = '';
      while (x > 0) {
        bits = (x % 2) + bits;
        x = Math.floor(x / 2);
      }
      return bits;
    }
    default:
      throw new Error(`test has no solver for family '${family}': add one`);
  }
}

const NAMES = SYNTHETIC_FAMILIES.map((f) => f.name);

describe('synthetic tasks', () => {
  test('families: unique names, one-line descriptions, at least 8 of them', () => {
    assert.ok(NAMES.length >= 8);
    assert.equal(new Set(NAMES).size, NAMES.length);
    for (const f of SYNTHETIC_FAMILIES) assert.ok(f.description.length > 10 && !f.description.includes('\n'), f.name);
  });

  test('deterministic by seed; a different seed gives different tasks', () =>
    withSeed((rng) => {
      const seed = rng.int(0, 1e9);
      const size = rng.int(50, 300);
      const a = generateSyntheticTasks({ seed, size });
      assert.deepEqual(generateSyntheticTasks({ seed, size }), a);
      assert.notDeepEqual(generateSyntheticTasks({ seed: seed + 1, size }), a);
      assert.equal(a.length, size);
    }));

  test('every family appears, in equal shares (+-1)', () =>
    withSeed((rng) => {
      const size = NAMES.length * rng.int(3, 30) + rng.int(0, NAMES.length - 1);
      const tasks = generateSyntheticTasks({ seed: rng.int(0, 1e9), size });
      const counts = new Map<string, number>();
      for (const t of tasks) counts.set(t.task, (counts.get(t.task) ?? 0) + 1);
      assert.deepEqual([...counts.keys()].sort(), NAMES.slice().sort());
      const lo = Math.floor(size / NAMES.length);
      for (const [name, c] of counts) assert.ok(c === lo || c === lo + 1, `${name}: ${c} of ${size}`);
    }));

  test('answers equal an independent recomputation from the prompt; lengths and charset bounded', () =>
    withSeed((rng) => {
      const tasks = generateSyntheticTasks({ seed: rng.int(0, 1e9), size: 3000 });
      for (const t of tasks) {
        assert.equal(t.answer, solve(t.task, t.prompt), `${t.task}: ${JSON.stringify(t.prompt)}`);
        assert.ok(t.prompt.length <= MAX_PROMPT_CHARS && t.answer.length <= MAX_ANSWER_CHARS, JSON.stringify(t));
        assert.match(t.prompt + t.answer, /^[\x20-\x7e]+$/, 'printable ASCII only');
        assert.equal(t.answer, t.answer.trim());
        assert.ok(t.answer.length > 0);
      }
    }));

  test('prompts are unique by default; without uniqueness a prompt still has one answer', () =>
    withSeed((rng) => {
      const seed = rng.int(0, 1e9);
      const uniq = generateSyntheticTasks({ seed, size: 4000 });
      assert.equal(new Set(uniq.map((t) => t.prompt)).size, uniq.length);
      const loose = generateSyntheticTasks({ seed, size: 4000, unique: false, families: ['minutes', 'binary', 'reverse_words'] });
      const answerOf = new Map<string, string>();
      let repeats = 0;
      for (const t of loose) {
        const prev = answerOf.get(t.prompt);
        if (prev !== undefined) {
          repeats++;
          assert.equal(prev, t.answer);
        }
        answerOf.set(t.prompt, t.answer);
      }
      assert.ok(repeats > 0, 'expected some repeated prompts without uniqueness');
    }));

  test('family subsets; unknown names and impossible unique sizes are errors', () => {
    const tasks = generateSyntheticTasks({ seed: 5, size: 40, families: ['add', 'date'] });
    assert.deepEqual([...new Set(tasks.map((t) => t.task))].sort(), ['add', 'date']);
    assert.throws(() => generateSyntheticTasks({ seed: 1, size: 10, families: ['nope'] }), /unknown synthetic family 'nope'/);
    assert.throws(() => generateSyntheticTasks({ seed: 1, size: 10, families: [] }), /at least one/);
    assert.throws(() => generateSyntheticTasks({ seed: 1, size: 0 }), /positive integer/);
    assert.throws(() => generateSyntheticTasks({ seed: 1, size: 1024, families: ['binary'] }), /too large for unique prompts/);
  });
});

describe('exact match scoring', () => {
  const t: SyntheticTask = { task: 'add', prompt: 'Add: 1+2', answer: '3 4' };

  test('only leading/trailing whitespace is ignored; case and inner spaces count', () => {
    assert.ok(exactMatch(t, '3 4'));
    assert.ok(exactMatch(t, '  3 4\n'));
    assert.ok(exactMatch(t, '\t3 4 \r\n'));
    assert.ok(!exactMatch(t, '34'));
    assert.ok(!exactMatch(t, '3  4'));
    assert.ok(!exactMatch(t, '3 4.'));
    assert.ok(!exactMatch(t, ''));
    assert.ok(!exactMatch({ real: 'Abc' }, 'abc'));
    assert.ok(exactMatch({ real: 'Abc' }, ' Abc'));
  });

  test('scoreExactMatch: overall and per-family counts match a direct tally', () =>
    withSeed((rng) => {
      const tasks = generateSyntheticTasks({ seed: rng.int(0, 1e9), size: rng.int(100, 400) });
      const pads = ['', ' ', '\n', '  \t'];
      const tally = new Map<string, [number, number]>();
      const answers = tasks.map((task) => {
        const right = rng.next() < 0.6;
        const e = tally.get(task.task) ?? [0, 0];
        tally.set(task.task, [e[0] + 1, e[1] + (right ? 1 : 0)]);
        const pad = () => pads[rng.int(0, pads.length - 1)];
        return right ? pad() + task.answer + pad() : pad() + task.answer + 'x';
      });
      const score = scoreExactMatch(tasks, answers);
      const totalRight = [...tally.values()].reduce((a, [, c]) => a + c, 0);
      assert.equal(score.n, tasks.length);
      assert.equal(score.correct, totalRight);
      assert.equal(score.accuracy, totalRight / tasks.length);
      assert.deepEqual(Object.keys(score.byTask), [...tally.keys()].sort());
      for (const [name, [n, c]] of tally) assert.deepEqual(score.byTask[name], { n, correct: c, accuracy: c / n });
    }));

  test('pairs without a task label count as "unlabeled"; bad calls throw', () => {
    const pairs: SftPair[] = [
      { prompt: 'p', real: 'a' },
      { prompt: 'q', real: 'b', task: 'x' },
    ];
    const s = scoreExactMatch(pairs, ['a', 'c']);
    assert.deepEqual(s.byTask, { unlabeled: { n: 1, correct: 1, accuracy: 1 }, x: { n: 1, correct: 0, accuracy: 0 } });
    assert.throws(() => scoreExactMatch([t], []), /1 pairs but 0 answers/);
    assert.throws(() => scoreExactMatch([], []), /nothing to score/);
    assert.throws(() => scoreExactMatch([t], [3 as never]), /answers\[0\] must be a string/);
  });
});

describe('UltraChat layout', () => {
  test('rows are valid messages and round-trip through JSONL and Parquet with task labels', () =>
    withSeed(async (rng) =>
      withTempDir(async (dir) => {
        const tasks = generateSyntheticTasks({ seed: rng.int(0, 1e9), size: rng.int(40, 120) });
        const rows = syntheticChatRows(tasks);
        rows.forEach((r, i) => {
          assert.deepEqual(r.messages, [
            { role: 'user', content: tasks[i].prompt },
            { role: 'assistant', content: tasks[i].answer },
          ]);
          assert.equal(r.prompt, tasks[i].prompt);
          assert.equal(r.task, tasks[i].task);
        });
        const expected = tasks.map((x) => ({ prompt: x.prompt, real: x.answer, task: x.task }));
        for (const name of ['syn.jsonl', 'syn.parquet']) {
          const file = join(dir, name);
          await writeChatRows(file, rows, { rowGroupSize: 32 });
          const { pairs, skipped } = await loadSftPairs(file);
          assert.equal(skipped, 0);
          assert.deepEqual(pairs, expected);
          assert.equal(
            scoreExactMatch(
              pairs,
              tasks.map((x) => x.answer),
            ).accuracy,
            1,
          );
        }
      }),
    ));
});
