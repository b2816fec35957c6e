// What the second study's SPIN arms pushed down (docs/science.md, "Second study"): the opponent's answers
// to the training prompts (OUT/ARM/seed-S/iter-t/generated.json), scored by the teacher. Per arm and
// iteration, mean over the seeds that have it: the fraction with the right final answer, the fraction
// the teacher can write (probability > 0), and the fraction equal to the real answer.
//   node --import tsx scripts/study2-opponents.ts SWEEP_DIR [RAN_FROM]
// The prompts are read from the sweep's own record (sweep.resolved.json: data, prompts); RAN_FROM is
// the directory the sweep ran in, which its relative paths start from (default: this one).
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadSftPairs } from '../src/data/sft.js';
import { answerCorrect, exactMatch } from '../src/data/synthetic.js';
import { problemFromPrompt } from '../src/data/word_problems.js';
import { logProb } from '../src/data/word_teacher.js';

const [out, ranFrom = '.'] = process.argv.slice(2);
if (!out) throw new Error('usage: node --import tsx scripts/study2-opponents.ts SWEEP_DIR [RAN_FROM]');
const cfg = JSON.parse(readFileSync(join(out, 'sweep.resolved.json'), 'utf8'));
const prompts = (await loadSftPairs(resolve(ranFrom, cfg.data))).pairs.slice(0, cfg.prompts);
const problems = prompts.map((p) => {
  const pr = problemFromPrompt(p.prompt);
  if (!pr) throw new Error(`not a word problem: ${p.prompt}`);
  return pr;
});
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
console.log('| arm | iteration | seeds | opponent right | teacher can write | equal to the real answer |');
console.log('| --- | --- | --- | --- | --- | --- |');
for (const arm of cfg.arms as { name: string }[]) {
  for (let t = 0; t < cfg.iterations; t++) {
    const right: number[] = [];
    const writable: number[] = [];
    const equal: number[] = [];
    for (const seed of cfg.seeds as number[]) {
      const f = join(out, arm.name, `seed-${seed}`, `iter-${t}`, 'generated.json');
      if (!existsSync(f)) continue;
      const answers: string[] = JSON.parse(readFileSync(f, 'utf8'));
      if (answers.every((a) => a === '')) continue; // the sft objective has no opponent
      right.push(mean(answers.map((a, i) => (answerCorrect({ task: problems[i].kind, real: prompts[i].real }, a) ? 1 : 0))));
      writable.push(mean(answers.map((a, i) => (logProb(problems[i], a) > -Infinity ? 1 : 0))));
      equal.push(mean(answers.map((a, i) => (exactMatch(prompts[i], a) ? 1 : 0))));
    }
    if (right.length)
      console.log(
        `| ${arm.name} | ${t + 1} | ${right.length} | ${mean(right).toFixed(3)} | ${mean(writable).toFixed(3)} | ${mean(equal).toFixed(3)} |`,
      );
  }
}
