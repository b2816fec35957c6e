// src/spin/word_eval.ts and the word-problem measures of `spinlm eval` and the sweep table (issue 31):
// the teacher's log-likelihood of solutions (mean over those it can write, fraction it cannot), the
// majority vote over final answers, and the two sweep columns that appear only for word problems.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { writeChatRows } from '../src/data/sft.js';
import { problemFromPrompt } from '../src/data/word_problems.js';
import { generateWordProblems, support } from '../src/data/word_teacher.js';
import { summarizeSweep, sweepTable, sweepTeacherChart, type SweepEval } from '../src/spin/sweep.js';
import { majorityAnswer, teacherStats } from '../src/spin/word_eval.js';
import { withTempDir } from './helpers/data_files.js';
import { writeTinyModelDir } from './helpers/tiny_model.js';

const ROWS = generateWordProblems({ seed: 4, size: 40, split: 'heldout' });

describe('word-problem measures', () => {
  test('teacherStats: mean log-prob over the solutions the teacher can write; the rest counted apart', () => {
    const sols = ROWS.map((r, i) => (i % 4 === 3 ? `${r.messages[1].content} extra` : r.messages[1].content));
    const s = teacherStats(ROWS, sols);
    assert.equal(s.teacherImpossible, 10 / 40);
    const logs = ROWS.filter((_, i) => i % 4 !== 3).map((r) => Math.log(support(problemFromPrompt(r.prompt)!).get(r.messages[1].content)!));
    assert.ok(Math.abs(s.teacherLogp! - logs.reduce((a, b) => a + b) / logs.length) < 1e-12);
    assert.deepEqual(teacherStats(ROWS.slice(0, 2), ['x', 'y']), { teacherLogp: null, teacherImpossible: 1 });
  });

  test('majorityAnswer: the most frequent final answer, ties to the first seen, answerless solutions do not vote', () => {
    assert.equal(majorityAnswer(['1+2=3. Answer: 3', 'Answer: 4', '#### 3', 'none']), '3');
    assert.equal(majorityAnswer(['So 7.', 'So 9.', 'x']), '7');
    assert.equal(majorityAnswer(['It arrives at 12:05.', 'Answer: 12', 'at 12:05']), '12:05');
    assert.equal(majorityAnswer(['no', '']), null);
  });

  test('sweep table: teacher columns only when θ0 has word-problem measures', () => {
    const base: SweepEval = { exactMatch: 0.5, heldoutLogp: -1, byTask: {} };
    const input = (extra: Partial<SweepEval>) => ({
      title: 't',
      arms: [{ name: 'sft', description: '' }],
      seeds: [1, 2],
      baseline: 'sft',
      heldoutTasks: 10,
      theta0: { ...base, ...extra },
      records: [1, 2].map((seed) => ({
        arm: 'sft',
        seed,
        iteration: 1,
        eval: { ...base, ...extra, teacherLogp: extra.teacherLogp === undefined ? undefined : -seed },
      })),
    });
    const plain = sweepTable(summarizeSweep(input({})));
    assert.ok(!plain.includes('teacher'));
    const wp = sweepTable(summarizeSweep(input({ teacherLogp: -3, teacherImpossible: 0.25 })));
    const lines = wp.split('\n');
    assert.match(lines[0], /\| teacher log-lik\. \| teacher cannot write \|$/);
    assert.match(lines[2], /\| -3\.00 \| 0\.250 \|$/);
    assert.match(lines[3], /\| -1\.50 \| 0\.250 \|$/); // mean of -1 and -2 over the seeds
    // the teacher's plot: only for word problems, θ0's value at iteration 0, then the arm's mean
    assert.equal(sweepTeacherChart(summarizeSweep(input({}))), null);
    const svg = sweepTeacherChart(summarizeSweep(input({ teacherLogp: -3, teacherImpossible: 0.25 })))!;
    assert.ok(svg.startsWith('<svg') && svg.includes('teacher cannot write'));
    assert.equal((svg.match(/<polyline/g) ?? []).length, 1);
  });

  test('spinlm eval on word problems reports final-answer accuracy, teacher log-lik., majority vote', () =>
    withTempDir(async (dir) => {
      const model = await writeTinyModelDir(join(dir, 'm'), { hidden: 32, layers: 1, intermediate: 48 });
      const data = join(dir, 'wp.jsonl');
      await writeChatRows(data, ROWS.slice(0, 6));
      const out = join(dir, 'eval.json');
      const bin = new URL('../bin/spinlm.js', import.meta.url).pathname;
      const args = [
        'eval',
        '--model',
        model,
        '--data',
        data,
        '--device',
        'cpu',
        '--max_new_tokens',
        '8',
        '--majority_samples',
        '3',
        '--out',
        out,
      ];
      const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const e = JSON.parse(readFileSync(out, 'utf8')) as Record<string, unknown>;
      // a random tiny model writes nothing the teacher can write, and no right final answers
      assert.equal(e.teacher_impossible, 1);
      assert.equal(e.teacher_logp, null);
      assert.equal(e.greedy_equals_real, 0);
      assert.equal(typeof e.exact_match, 'number');
      assert.equal(typeof e.majority_at_3, 'number');
    }));
});
