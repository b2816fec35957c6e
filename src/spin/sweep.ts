// The summary of a sweep (`spinlm sweep`, docs/science.md): arms x seeds of self-play from one θ0,
// each evaluated after every iteration on the same held-out tasks. Per arm and iteration: the mean over
// seeds of held-out exact match, and the mean PAIRED difference to the baseline arm (same seed, same
// iteration, same tasks) with its standard error sd(d) / sqrt(n) over the seeds; per task family for
// the last iteration. Written as sweep.md, sweep.json and sweep.svg (exact match per iteration, one
// line per arm, error bars = SE over seeds). Everything here is computed from the evaluation records,
// so a table can always be rebuilt from the files of the runs.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exactMatch } from '../data/synthetic.js';
import { writeFileAtomic } from '../util/atomic.js';
import { readRunEvals, readRunFailure, runDirOf } from './experiment.js';
import { readMetrics } from './metrics.js';
import { forestChart, lineChart } from './report.js';
import { iterationDir } from './self_play.js';

/** What a run records after each iteration (its eval.json) and θ0's (theta0/eval.json). */
export interface SweepEval {
  exactMatch: number;
  heldoutLogp: number;
  /** Exact match per task family. */
  byTask: Record<string, number>;
  /** Fraction of the opponent's answers to the iteration's prompts equal to the real answer (null: no opponent, the sft objective). */
  generatedEqualsReal?: number | null;
  /** Mean over the iteration's optimizer steps of rewards/real and rewards/generated (null: the sft objective). */
  rewardsReal?: number | null;
  rewardsGenerated?: number | null;
  /** Word problems: the teacher's mean log-likelihood of the greedy held-out solutions it can write, and the fraction it cannot (evaluate.ts TaskEval). */
  teacherLogp?: number | null;
  teacherImpossible?: number;
}

export interface SweepRecord {
  arm: string;
  seed: number;
  /** 1-based: the model after self-play iteration `iteration - 1` (0 is θ0). */
  iteration: number;
  eval: SweepEval;
}

/** A mean over seeds with its standard error (sd with n - 1 over sqrt(n); null for fewer than 2 values). */
export interface MeanSe {
  mean: number;
  se: number | null;
  n: number;
  /** The values, by seed. */
  values: Record<string, number>;
}

export function meanSe(values: Record<string, number>): MeanSe {
  const xs = Object.values(values);
  const n = xs.length;
  if (n === 0) throw new RangeError('meanSe: no values');
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  if (n < 2) return { mean, se: null, n, values };
  const variance = xs.reduce((a, x) => a + (x - mean) ** 2, 0) / (n - 1);
  return { mean, se: Math.sqrt(variance / n), n, values };
}

/** Per-seed differences a - b over the seeds both have, and their mean and standard error. */
export function pairedDifference(a: Record<string, number>, b: Record<string, number>): MeanSe | null {
  const d: Record<string, number> = {};
  for (const s of Object.keys(a)) if (s in b) d[s] = a[s] - b[s];
  return Object.keys(d).length > 0 ? meanSe(d) : null;
}

export interface SweepRow {
  arm: string;
  iteration: number;
  exactMatch: MeanSe;
  /** Exact match minus the baseline's, paired by seed (null for the baseline itself). */
  diff: MeanSe | null;
  /** null: no seed has a finite one (a model that evaluates to NaN). */
  heldoutLogp: MeanSe | null;
  generatedEqualsReal: MeanSe | null;
  rewardsReal: MeanSe | null;
  rewardsGenerated: MeanSe | null;
  /** Word problems only (null otherwise). */
  teacherLogp?: MeanSe | null;
  teacherImpossible?: MeanSe | null;
}

export interface SweepTaskRow {
  arm: string;
  family: string;
  theta0: number;
  exactMatch: MeanSe;
  diff: MeanSe | null;
}

export interface SweepSummary {
  title: string;
  seeds: number[];
  baseline: string;
  arms: { name: string; description: string }[];
  heldoutTasks: number;
  theta0: SweepEval;
  rows: SweepRow[];
  /** The iteration of the per-family breakdown: the last one every arm has for some seed. */
  lastIteration: number;
  byTask: SweepTaskRow[];
  /** Runs that diverged (training stopped on NaN / Inf): no rows after their last evaluation. */
  failed: SweepFailure[];
}

/** A (arm, seed) run that diverged in iteration `iteration` (0-based, as iter-t). */
export interface SweepFailure {
  arm: string;
  seed: number;
  iteration: number;
  message: string;
}

const bySeed = (records: readonly SweepRecord[], pick: (e: SweepEval) => number | null | undefined): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const r of records) {
    const v = pick(r.eval);
    if (typeof v === 'number' && Number.isFinite(v)) out[String(r.seed)] = v;
  }
  return out;
};

const orNull = (values: Record<string, number>) => (Object.keys(values).length > 0 ? meanSe(values) : null);

/** The table of a sweep from its records: arms in the given order, iterations 1.. in order. */
export function summarizeSweep(input: {
  title: string;
  arms: readonly { name: string; description: string }[];
  seeds: readonly number[];
  baseline: string;
  heldoutTasks: number;
  theta0: SweepEval;
  records: readonly SweepRecord[];
  failed?: readonly SweepFailure[];
}): SweepSummary {
  const { records, baseline } = input;
  if (!input.arms.some((a) => a.name === baseline)) throw new RangeError(`baseline '${baseline}' is not one of the arms`);
  const of = (arm: string, iteration: number) => records.filter((r) => r.arm === arm && r.iteration === iteration);
  /** Paired difference of an arm's per-seed values to the baseline's at the same iteration (null for the baseline). */
  const vsBaseline = (arm: string, iteration: number, values: Record<string, number>, pick: (e: SweepEval) => number | null | undefined) =>
    arm === baseline ? null : pairedDifference(values, bySeed(of(baseline, iteration), pick));
  const iterations = [...new Set(records.map((r) => r.iteration))].sort((a, b) => a - b);
  const rows: SweepRow[] = [];
  for (const arm of input.arms) {
    for (const it of iterations) {
      const mine = of(arm.name, it);
      if (mine.length === 0) continue;
      const em = bySeed(mine, (e) => e.exactMatch);
      rows.push({
        arm: arm.name,
        iteration: it,
        exactMatch: meanSe(em),
        diff: vsBaseline(arm.name, it, em, (e) => e.exactMatch),
        heldoutLogp: orNull(bySeed(mine, (e) => e.heldoutLogp)),
        generatedEqualsReal: orNull(bySeed(mine, (e) => e.generatedEqualsReal)),
        rewardsReal: orNull(bySeed(mine, (e) => e.rewardsReal)),
        rewardsGenerated: orNull(bySeed(mine, (e) => e.rewardsGenerated)),
        teacherLogp: orNull(bySeed(mine, (e) => e.teacherLogp)),
        teacherImpossible: orNull(bySeed(mine, (e) => e.teacherImpossible)),
      });
    }
  }
  const complete = iterations.filter((it) => input.arms.every((a) => of(a.name, it).length > 0));
  const lastIteration = complete.length > 0 ? complete[complete.length - 1] : 0;
  const byTask: SweepTaskRow[] = [];
  if (lastIteration > 0) {
    const families = [...new Set([...Object.keys(input.theta0.byTask), ...records.flatMap((r) => Object.keys(r.eval.byTask))])].sort();
    for (const arm of input.arms) {
      for (const family of families) {
        const em = bySeed(of(arm.name, lastIteration), (e) => e.byTask[family]);
        if (Object.keys(em).length === 0) continue;
        byTask.push({
          arm: arm.name,
          family,
          theta0: input.theta0.byTask[family] ?? NaN,
          exactMatch: meanSe(em),
          diff: vsBaseline(arm.name, lastIteration, em, (e) => e.byTask[family]),
        });
      }
    }
  }
  return {
    title: input.title,
    seeds: [...input.seeds],
    baseline,
    arms: input.arms.map((a) => ({ name: a.name, description: a.description })),
    heldoutTasks: input.heldoutTasks,
    theta0: input.theta0,
    rows,
    lastIteration,
    byTask,
    failed: [...(input.failed ?? [])],
  };
}

const f = (x: number | null | undefined, d = 4) => (typeof x === 'number' && Number.isFinite(x) ? x.toFixed(d) : '-');
const signed = (x: number | null | undefined, d = 4) =>
  typeof x === 'number' && Number.isFinite(x) ? `${x >= 0 ? '+' : ''}${x.toFixed(d)}` : '-';

/** The main table: per arm and iteration (θ0 first). */
export function sweepTable(s: SweepSummary): string {
  const head = [
    'arm',
    'iteration',
    'seeds',
    'exact match',
    'SE',
    `Δ vs ${s.baseline}`,
    'paired SE',
    'log-prob/token',
    'generated = real',
    'rewards/real',
    'rewards/generated',
  ];
  // word problems: two more columns, the teacher's log-likelihood of the greedy solutions and the fraction it cannot write
  const teacher = s.theta0.teacherImpossible !== undefined;
  if (teacher) head.push('teacher log-lik.', 'teacher cannot write');
  const t0 = teacher ? ` ${f(s.theta0.teacherLogp, 2)} | ${f(s.theta0.teacherImpossible, 3)} |` : '';
  const lines = [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`];
  lines.push(`| θ0 | 0 | - | ${f(s.theta0.exactMatch)} | - | - | - | ${f(s.theta0.heldoutLogp)} | - | - | - |${t0}`);
  for (const r of s.rows) {
    lines.push(
      `| ${[
        r.arm,
        r.iteration,
        r.exactMatch.n,
        f(r.exactMatch.mean),
        f(r.exactMatch.se),
        r.diff ? signed(r.diff.mean) : '(baseline)',
        r.diff ? f(r.diff.se) : '-',
        f(r.heldoutLogp?.mean),
        f(r.generatedEqualsReal?.mean, 3),
        f(r.rewardsReal?.mean),
        f(r.rewardsGenerated?.mean),
        ...(teacher ? [f(r.teacherLogp?.mean, 2), f(r.teacherImpossible?.mean, 3)] : []),
      ].join(' | ')} |`,
    );
  }
  // a diverged run: its arm's rows above have one seed fewer from this iteration on
  for (const x of s.failed ?? [])
    lines.push(
      `| ${x.arm} | ${x.iteration + 1} | failed: seed ${x.seed} diverged | - | - | - | - | - | - | - | - |${teacher ? ' - | - |' : ''}`,
    );
  return lines.join('\n');
}

/** Per task family at the last iteration: θ0, then each arm's mean and its paired difference ± SE. */
export function sweepTaskTable(s: SweepSummary): string {
  const families = [...new Set(s.byTask.map((r) => r.family))];
  const head = ['family', 'θ0', ...s.arms.map((a) => (a.name === s.baseline ? `${a.name} (baseline)` : `${a.name} (Δ ± paired SE)`))];
  const lines = [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`];
  for (const family of families) {
    const cells = s.arms.map((a) => {
      const r = s.byTask.find((x) => x.arm === a.name && x.family === family);
      if (!r) return '-';
      return r.diff ? `${f(r.exactMatch.mean, 3)} (${signed(r.diff.mean, 3)} ± ${f(r.diff.se, 3)})` : f(r.exactMatch.mean, 3);
    });
    lines.push(`| ${family} | ${f(s.theta0.byTask[family], 3)} | ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

/** Exact match per iteration, one line per arm from θ0 (iteration 0), error bars = SE over seeds. */
export function sweepChart(s: SweepSummary): string {
  return iterationChart(
    s,
    `Held-out exact match (mean of ${s.seeds.length} seeds; bars: SE over seeds)`,
    s.theta0.exactMatch,
    (r) => r.exactMatch,
  );
}

/**
 * Word problems: the fraction of greedy held-out solutions the teacher cannot write, per iteration (as
 * sweepChart); null for a sweep without the teacher's columns.
 */
export function sweepTeacherChart(s: SweepSummary): string | null {
  if (s.theta0.teacherImpossible === undefined) return null;
  return iterationChart(
    s,
    `Greedy held-out solutions the teacher cannot write (mean of ${s.seeds.length} seeds; bars: SE over seeds)`,
    s.theta0.teacherImpossible,
    (r) => r.teacherImpossible,
  );
}

/** One measure per iteration, a line per arm from θ0's value at iteration 0, error bars = SE over seeds. */
function iterationChart(s: SweepSummary, title: string, theta0: number, pick: (r: SweepRow) => MeanSe | null | undefined): string {
  const k = s.arms.length;
  const series = s.arms.map((a, i) => {
    const rows = s.rows.filter((r) => r.arm === a.name && pick(r));
    // arms side by side around each iteration, so that their error bars do not cover each other
    const dx = k > 1 ? (i - (k - 1) / 2) * Math.min(0.04, 0.3 / k) : 0;
    return {
      name: a.name,
      points: [[0, theta0] as [number, number], ...rows.map((r) => [r.iteration + dx, pick(r)!.mean] as [number, number])],
      errors: [0, ...rows.map((r) => pick(r)!.se ?? 0)],
    };
  });
  return lineChart(title, 'iteration', series, {
    width: 640,
    height: Math.max(340, 90 + 16 * k), // room for the legend
  });
}

/**
 * Δ exact match vs the baseline after the last iteration every arm finished, one row per arm (best
 * first), with ± 2 paired SE: an arm whose bar clears 0 differs from the baseline by more than two
 * paired standard errors.
 */
export function sweepDeltaChart(s: SweepSummary): string {
  const rows = s.rows
    .filter((r) => r.iteration === s.lastIteration && r.diff)
    .map((r) => ({ name: r.arm, value: r.diff!.mean, halfWidth: 2 * (r.diff!.se ?? Number.NaN) }))
    .sort((a, b) => b.value - a.value);
  return forestChart(
    `Δ held-out exact match vs ${s.baseline} after iteration ${s.lastIteration} (${s.seeds.length} seeds; bars: ± 2 paired SE)`,
    `exact match minus ${s.baseline}'s, same seed and tasks`,
    rows,
  );
}

export function sweepMarkdown(s: SweepSummary): string {
  const n = s.seeds.length;
  return [
    `# ${s.title}`,
    '',
    `Seeds: ${s.seeds.join(', ')}. Held-out: ${s.heldoutTasks} tasks, the same for every run. Baseline: ${s.baseline}.`,
    '',
    'Arms:',
    ...s.arms.map((a) => `- ${a.name}: ${a.description || '(no description)'}`),
    '',
    '## Held-out exact match per arm and iteration',
    '',
    sweepTable(s),
    '',
    `- exact match: mean over the seeds; SE: their standard error (sd / sqrt(n), sd with n - 1).`,
    `- Δ vs ${s.baseline}: the mean over seeds of (arm - ${s.baseline}) at the same seed and iteration, on the same held-out tasks;`,
    `  paired SE = sd(Δ_seed) / sqrt(n), the standard error of the per-seed differences (sd with n - 1). With n = ${n}`,
    `  seeds, a 95% interval is about Δ ± ${n >= 2 ? tQuantile975(n - 1).toFixed(2) : '?'} paired SE (Student's t with n - 1 degrees of freedom).`,
    '- log-prob/token: mean held-out log-prob per token of the real answers (answer + EOS).',
    "- iteration k: the model after k self-play iterations. Its row's generated = real, rewards/real and rewards/generated",
    '  describe the training that made it, against the opponent of the row above (θ0 for iteration 1):',
    "- generated = real: fraction of the opponent's answers to the training prompts that equal the real answer",
    '  (after trimming whitespace); such pairs carry no gradient in the SPIN loss. "-": the arm has no opponent (sft).',
    '- rewards/real, rewards/generated: beta (S(θ, y) - S(ref, y)) of the real and the generated answers, averaged over',
    "  the iteration's optimizer steps as the trainer logs them.",
    ...(s.theta0.teacherImpossible !== undefined
      ? [
          '- word problems: exact match is final-answer accuracy (any solution with the right final answer counts);',
          "  teacher log-lik.: the teacher's exact log-probability (nats per solution) of the greedy held-out solutions it can",
          '  write, mean over those; teacher cannot write: the fraction of greedy solutions with teacher probability 0.',
        ]
      : []),
    ...((s.failed ?? []).length > 0
      ? ['', '## Failed runs', '', ...s.failed.map((x) => `- ${x.arm} seed ${x.seed}, iteration ${x.iteration + 1}: ${x.message}`)]
      : []),
    '',
    `## Per task family after iteration ${s.lastIteration}`,
    '',
    s.lastIteration > 0 ? sweepTaskTable(s) : '(no iteration that every arm finished)',
    '',
  ].join('\n');
}

/** Two-sided 95% quantile of Student's t with `df` degrees of freedom (table, then the normal limit). */
export function tQuantile975(df: number): number {
  const table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.16, 2.145, 2.131];
  if (df >= 1 && df <= table.length) return table[df - 1];
  if (df <= 30) return 2.042 + ((30 - df) / 15) * (2.131 - 2.042);
  return 1.96;
}

/** Writes sweep.md, sweep.json and sweep.svg into `dir`, each atomically. */
export async function writeSweepOutputs(dir: string, s: SweepSummary): Promise<void> {
  await writeFileAtomic(join(dir, 'sweep.json'), `${JSON.stringify(s, null, 2)}\n`);
  await writeFileAtomic(join(dir, 'sweep.svg'), `${sweepChart(s)}\n`);
  await writeFileAtomic(join(dir, 'sweep-delta.svg'), `${sweepDeltaChart(s)}\n`);
  const teacher = sweepTeacherChart(s);
  if (teacher) await writeFileAtomic(join(dir, 'sweep-teacher.svg'), `${teacher}\n`);
  await writeFileAtomic(
    join(dir, 'sweep.md'),
    `${sweepMarkdown(s)}\nPlots: sweep.svg (exact match per iteration, error bars = SE over seeds), sweep-delta.svg (Δ vs ${s.baseline} after the last iteration, ± 2 paired SE)${teacher ? ', sweep-teacher.svg (greedy solutions the teacher cannot write, per iteration)' : ''}.\n`,
  );
}

/** The runs of a sweep directory that diverged (their diverged.json). */
export async function readSweepFailures(out: string, arms: readonly string[], seeds: readonly number[]): Promise<SweepFailure[]> {
  const failed: SweepFailure[] = [];
  for (const arm of arms)
    for (const seed of seeds) {
      const f = await readRunFailure(runDirOf(out, arm, seed));
      if (f) failed.push({ arm, seed, iteration: f.iteration, message: f.message });
    }
  return failed;
}

/** The evaluation records of a sweep directory: OUT/ARM/seed-S/iter-t/eval.json for every one that exists. */
export async function readSweepRecords(
  out: string,
  arms: readonly string[],
  seeds: readonly number[],
  iterations: number,
): Promise<SweepRecord[]> {
  const records: SweepRecord[] = [];
  for (const arm of arms)
    for (const seed of seeds)
      (await readRunEvals<SweepEval>(runDirOf(out, arm, seed), iterations)).forEach((e, t) => {
        if (e) records.push({ arm, seed, iteration: t + 1, eval: e });
      });
  return records;
}

/**
 * What a SPIN run's iteration t did besides its evaluation: the fraction of the opponent's answers
 * (iter-t/generated.json) equal to the real answer, and the mean over the iteration's steps (in
 * `metricsFile`) of rewards/real and rewards/generated; all null for the sft objective.
 */
export async function opponentStats(
  dir: string,
  t: number,
  objective: 'spin' | 'sft',
  prompts: readonly { real: string }[],
  metricsFile: string,
): Promise<Pick<SweepEval, 'generatedEqualsReal' | 'rewardsReal' | 'rewardsGenerated'>> {
  const genFile = join(iterationDir(dir, t), 'generated.json');
  if (objective !== 'spin' || !existsSync(genFile)) return { generatedEqualsReal: null, rewardsReal: null, rewardsGenerated: null };
  const answers: string[] = JSON.parse(await readFile(genFile, 'utf8'));
  const steps = readMetrics(metricsFile).rows.filter((r) => r.kind === 'step' && r.iteration === t);
  const mean = (k: string) => {
    const xs = steps.map((r) => r[k]).filter((v): v is number => typeof v === 'number');
    return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null;
  };
  return {
    generatedEqualsReal: answers.filter((a, i) => exactMatch(prompts[i], a)).length / answers.length,
    rewardsReal: mean('rewards/real'),
    rewardsGenerated: mean('rewards/generated'),
  };
}
