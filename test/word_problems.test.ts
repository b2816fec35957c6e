// src/data/word_problems.ts + word_teacher.ts (issue 31): the teacher's support is a distribution
// (sums to 1 within 1e-12), sample() draws from it (frequencies vs probabilities), logProb is exact on
// what it writes and -Infinity on what it cannot, final answers match a direct formula written here
// from the prompt text alone, >= 5 distinct normalized solutions per problem on average, train and
// held-out problem keys are disjoint, rows are deterministic per seed; the scorer checks final answers.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { scoreExactMatch } from '../src/data/synthetic.js';
import { keyOf, problemFromPrompt, WORD_PROBLEM_KINDS, type WordProblem } from '../src/data/word_problems.js';
import {
  finalAnswer,
  generateWordProblems,
  isHeldout,
  logProb,
  normalizeSolution,
  sample,
  support,
  type WordProblemRow,
} from '../src/data/word_teacher.js';
import { withTempDir } from './helpers/data_files.js';
import { withSeed } from './helpers/random.js';

/** The final answer from the prompt text alone (independent of the generator's code). */
function solve(prompt: string): string {
  let m = /(\d+) \w+ at \$(\d+) each and (\d+) \w+ at \$(\d+) each/.exec(prompt);
  if (m) return String(+m[1] * +m[2] + +m[3] * +m[4]);
  m = /(\d+) (m|kg|h) (\d+) \w+.*? (?:cuts off|uses|has done) (\d+) /.exec(prompt);
  if (m) return String(+m[1] * { m: 100, kg: 1000, h: 60 }[m[2] as 'm'] + +m[3] - +m[4]);
  m = /leaves at (\d+):(\d\d)\. The ride takes (\d+) h (\d+) min/.exec(prompt);
  assert.ok(m, `unknown prompt ${prompt}`);
  const t = (+m[1] + +m[3]) * 60 + +m[2] + +m[4];
  return `${Math.floor(t / 60)}:${String(t % 60).padStart(2, '0')}`;
}

const problemOf = (r: { prompt: string }): WordProblem => {
  const pr = problemFromPrompt(r.prompt);
  assert.ok(pr, `prompt does not parse: ${r.prompt}`);
  return pr;
};

const TRAIN = generateWordProblems({ seed: 11, size: 1000, split: 'train' });

describe('word problems: the teacher', () => {
  test('support sums to 1 (1e-12); every string has the direct final answer; lengths <= 80 / 120 chars', () => {
    for (const r of TRAIN.slice(0, 300)) {
      const pr = problemOf(r);
      assert.equal(keyOf(pr), r.key);
      const s = support(pr);
      let total = 0;
      for (const p of s.values()) total += p;
      assert.ok(Math.abs(total - 1) <= 1e-12, `${r.key}: support sums to ${total}`);
      const want = solve(r.prompt);
      assert.equal(r.answer, want);
      assert.ok(r.prompt.length <= 80, r.prompt);
      for (const sol of s.keys()) {
        assert.equal(finalAnswer(sol), want, `${r.prompt} -> ${sol}`);
        assert.ok(sol.length <= 120, sol);
      }
    }
  });

  test('>= 5 distinct normalized solutions per problem on average over 1,000 problems (and >= 5 in each kind)', () => {
    const byKind = new Map<string, number[]>();
    for (const r of TRAIN) {
      const d = new Set([...support(problemOf(r)).keys()].map(normalizeSolution)).size;
      byKind.set(r.task, [...(byKind.get(r.task) ?? []), d]);
    }
    const all = [...byKind.values()].flat();
    assert.equal(all.length, 1000);
    assert.ok(all.reduce((a, b) => a + b) / all.length >= 5);
    for (const [kind, ds] of byKind) assert.ok(ds.reduce((a, b) => a + b) / ds.length >= 5, kind);
  });

  test('logProb of every sampled solution is finite and equals log of its support probability', () =>
    withSeed((rng) => {
      for (const r of TRAIN.slice(0, 200)) {
        const pr = problemOf(r);
        for (let i = 0; i < 10; i++) {
          const sol = sample(pr, rng);
          const lp = logProb(pr, sol);
          assert.ok(Number.isFinite(lp), `${r.key}: ${sol} has logProb ${lp}`);
          assert.equal(lp, Math.log(support(pr).get(sol)!));
        }
        assert.ok(Number.isFinite(logProb(pr, r.messages[1].content)));
      }
    }));

  test('sample() draws from support(): frequencies within 5 standard errors of the probabilities', () =>
    withSeed((rng) => {
      for (const kind of WORD_PROBLEM_KINDS) {
        const pr = problemOf(TRAIN.find((r) => r.task === kind)!);
        const n = 20000;
        const counts = new Map<string, number>();
        for (let i = 0; i < n; i++) {
          const s = sample(pr, rng);
          counts.set(s, (counts.get(s) ?? 0) + 1);
        }
        for (const [sol, p] of [...support(pr)].slice(0, 10)) {
          const f = (counts.get(sol) ?? 0) / n;
          const se = Math.sqrt((p * (1 - p)) / n);
          assert.ok(Math.abs(f - p) <= 5 * se, `${kind} ${sol}: frequency ${f} vs p ${p}`);
        }
      }
    }));

  test('strings the teacher cannot write have logProb -Infinity', () => {
    const r = TRAIN[0];
    const pr = problemOf(r);
    const real = r.messages[1].content;
    const other = TRAIN.find((x) => x.messages[1].content !== real)!.messages[1].content;
    for (const bad of [
      '',
      `${real} `,
      real.replace(' ', '  '),
      real.replace(/\d(?=\D*$)/, (d) => String((+d + 1) % 10)),
      `${real}.`,
      other,
    ])
      assert.equal(logProb(pr, bad), -Infinity, JSON.stringify(bad));
  });
});

describe('word problems: data sets', () => {
  test('deterministic per seed; another seed gives other rows', () => {
    const a = generateWordProblems({ seed: 5, size: 60, split: 'heldout' });
    assert.deepEqual(generateWordProblems({ seed: 5, size: 60, split: 'heldout' }), a);
    assert.notDeepEqual(generateWordProblems({ seed: 6, size: 60, split: 'heldout' }), a);
    assert.deepEqual([...new Set(a.map((r) => r.task))].sort(), [...WORD_PROBLEM_KINDS].sort());
  });

  test('held-out problem keys (and prompts) never occur in a training set of any seed', () => {
    const held = generateWordProblems({ seed: 2, size: 1500, split: 'heldout' });
    const train = [...TRAIN, ...generateWordProblems({ seed: 2, size: 3000, split: 'train' })];
    const heldKeys = new Set(held.map((r) => r.key));
    assert.equal(heldKeys.size, held.length, 'held-out keys are unique');
    for (const r of train) {
      assert.ok(!heldKeys.has(r.key), r.key);
      assert.ok(!isHeldout(problemOf(r)));
    }
    const heldPrompts = new Set(held.map((r) => r.prompt));
    assert.ok(train.every((r) => !heldPrompts.has(r.prompt)));
    assert.ok(held.every((r) => isHeldout(problemOf(r))));
  });

  test('scoring: a word problem is right when its final answer is, however it is written', () => {
    const r = TRAIN[1];
    const pairs = [r, r, r, r].map((x) => ({ task: x.task, real: x.messages[1].content }));
    const pr = problemOf(r);
    const alt = [...support(pr).keys()].find((s) => s !== r.messages[1].content)!;
    const score = scoreExactMatch(pairs, [alt, `blah ${r.answer}`, `${r.messages[1].content}0`, 'no number']);
    assert.equal(score.correct, 2);
    // the one-line families still need the whole answer
    assert.equal(scoreExactMatch([{ task: 'date', real: '1 May 2000' }], ['So 2000']).correct, 0);
  });

  test('spinlm synthetic --task wordproblems writes the rows of generateWordProblems (task, key, answer)', () =>
    withTempDir(async (dir) => {
      const out = join(dir, 'wp.jsonl');
      const bin = new URL('../bin/spinlm.js', import.meta.url).pathname;
      const args = ['synthetic', '--task', 'wordproblems', '--split', 'heldout', '--size', '30', '--seed', '3', '--out', out];
      const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const rows = readFileSync(out, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as WordProblemRow);
      assert.deepEqual(rows, generateWordProblems({ seed: 3, size: 30, split: 'heldout' }));
    }));
});
