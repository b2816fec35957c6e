// `spinlm sweep CONFIG.yaml`: a grid of self-play arms x seeds from one θ0 (docs/science.md). The config
// (src/cli/sweep_config.ts) names the base, the seeds, the baseline arm and the arms; each arm's
// options are turned into the library's settings here, and the experiment runner
// (src/spin/experiment.ts) plays each (arm, seed) in OUT/ARM/seed-S/ with runSelfPlay's resumable
// layout. The table, its JSON and the plot are rebuilt from the runs' eval.json files after every
// finished run (src/spin/sweep.ts). `--jobs N` runs N at a time in worker processes (src/cli/sweep_workers.ts).
import { existsSync, readFileSync } from 'node:fs';
import { basename, extname, join } from 'node:path';
import { packageRoot } from '../backend/native/addon.js';
import type { DeviceChoice } from '../backend/registry.js';
import { sampleItems } from '../data/sample.js';
import { loadSftPairs } from '../data/sft.js';
import type { SyntheticTask } from '../data/synthetic.js';
import { parseConfig } from '../model/config.js';
import { ropePositionLimit } from '../model/rope.js';
import { type EvalSettings, evaluateTasks } from '../spin/evaluate.js';
import { evaluateTheta0, type Experiment, type ExperimentRun, runDirOf, runExperiment } from '../spin/experiment.js';
import { MetricsWriter } from '../spin/metrics.js';
import {
  opponentStats,
  readSweepFailures,
  readSweepRecords,
  summarizeSweep,
  type SweepEval,
  sweepTable,
  writeSweepOutputs,
} from '../spin/sweep.js';
import { demoHeldoutPool, demoTasks } from '../spin/demo_setup.js';
import { type HfTokenizer, loadTokenizer } from '../text/tokenizer.js';
import { makeDirs, OutputError, writeFileAtomic } from '../util/atomic.js';
import { type Parsed, UsageError } from './args.js';
import { backend, fmt } from './common.js';
import {
  choice,
  generationConfig,
  generationSettingsOf,
  loopConfig,
  modelConfig,
  selfPlayConfig,
  templateOf,
  truncationOf,
} from './config.js';
import { checkOwnership, claimDir } from './ownership.js';
import { checkOverlap, clearOwnedSaying, fingerprintDiff, fingerprintOf, type Fingerprint, lockDir, truncateMetrics } from './run_dir.js';
import { ARM_OPTIONS, type SweepConfig, type SweepConfigArm } from './sweep_config.js';
import { RUN_DONE, runWorkers, workerSlot } from './sweep_workers.js';

export { ARM_OPTIONS, demoArmDefaults, readSweepConfig, type SweepConfig, type SweepConfigArm } from './sweep_config.js';

/** An arm ready to run: its options (for the fingerprint), its run settings (less the seed and directory) and its evaluation. */
interface PlannedArm {
  name: string;
  description: string;
  options: Parsed;
  run: Omit<ExperimentRun, 'seed' | 'dir' | 'generationSeed'>;
  eval: EvalSettings;
}

/** Resolves an arm's options against the model (context, tokenizer): truncation, template and stop strings are checked here. */
function planArm(file: string, i: number, arm: SweepConfigArm, tok: HfTokenizer, context: number): PlannedArm {
  const o = arm.options;
  const at = `${file}: arms[${i}] (${arm.name})`;
  const scoped = <T>(f: () => T): T => {
    try {
      return f();
    } catch (e) {
      if (e instanceof UsageError) throw new UsageError(`${at}: ${e.message.replace(/--([a-z_]+)/g, 'options.$1')}`);
      throw e;
    }
  };
  const m = modelConfig(o);
  const truncation = scoped(() => truncationOf(m, context));
  const template = scoped(() => templateOf(m, tok));
  const generation = scoped(() => generationSettingsOf(generationConfig(o), tok));
  const loop = scoped(() => loopConfig({ ...o, seed: 0, zero_stage: 0 }, 0, false)); // one process
  return {
    name: arm.name,
    description: arm.description,
    options: o,
    run: {
      arm: arm.name,
      selfPlay: {
        arm: choice(o, 'objective', ['spin', 'sft'] as const),
        ...scoped(() => selfPlayConfig(o)),
        loop,
        truncation,
        template,
        paramDtype: m.dtype,
      },
      generation,
    },
    eval: {
      template,
      truncation,
      logpBatchSize: generation.batchSize,
      generationBatchSize: generation.batchSize,
      maxNewTokens: generation.maxNewTokens,
    },
  };
}

/** Checks a directory's fingerprint (or writes it); a different one is refused like `spinlm run`'s resume check. */
async function checkFingerprint(dir: string, now: Fingerprint, what: string): Promise<void> {
  const fp = join(dir, 'fingerprint.json');
  if (existsSync(fp)) {
    let was: Fingerprint | null;
    try {
      was = JSON.parse(readFileSync(fp, 'utf8'));
    } catch {
      was = null;
    }
    // an arm option newer than the sweep's runs counts as its default
    const defaults = Object.fromEntries(ARM_OPTIONS.map((s) => [s.name, s.default]));
    const diffs = was ? fingerprintDiff(was, now, defaults).map((d) => d.replace(/^--/, '')) : ['fingerprint.json is unreadable'];
    if (diffs.length)
      throw new UsageError(
        `spinlm sweep: ${dir} holds ${what} run with other settings: ${diffs.join('; ')}. Rerun with the same config to resume, choose another --out, or add --overwrite_output_dir to start over`,
      );
  }
  await writeFileAtomic(fp, `${JSON.stringify(now, null, 2)}\n`);
}

export interface SweepCommandOptions {
  out: string;
  overwrite: boolean;
  device: DeviceChoice;
  quiet: boolean;
  /** (arm, seed) runs at a time, each in its own process (default 1: in this process). */
  jobs?: number;
}

/** The SFT prompts and the held-out tasks of a sweep: the demo's (shipped θ0) or the base's files. */
async function sweepData(cfg: SweepConfig): Promise<{ sft: { prompt: string; real: string }[]; heldout: SyntheticTask[] }> {
  let sft: { prompt: string; real: string }[];
  let heldoutAll: SyntheticTask[];
  if (cfg.model === null) {
    sft = demoTasks().train.map((t) => ({ prompt: t.prompt, real: t.answer }));
    heldoutAll = demoHeldoutPool();
  } else {
    sft = (await loadSftPairs(cfg.data!)).pairs;
    const rows = (await loadSftPairs(cfg.evalData!)).pairs;
    const bad = rows.findIndex((p) => typeof (p as { task?: unknown }).task !== 'string');
    if (bad >= 0)
      throw new UsageError(
        `${cfg.file}: base.eval_data ${cfg.evalData}: row ${bad + 1} has no "task" field; exact match needs synthetic tasks (spinlm synthetic writes them)`,
      );
    heldoutAll = rows.map((p) => ({ task: (p as unknown as { task: string }).task, prompt: p.prompt, answer: p.real }));
  }
  if (cfg.prompts > sft.length)
    throw new UsageError(`${cfg.file}: base.prompts ${cfg.prompts}: there are only ${sft.length} SFT prompts; give at most ${sft.length}`);
  if (cfg.evalTasks > heldoutAll.length)
    throw new UsageError(
      `${cfg.file}: base.eval_tasks ${cfg.evalTasks}: there are only ${heldoutAll.length} held-out tasks; give at most ${heldoutAll.length}`,
    );
  return {
    sft: sft.slice(0, cfg.prompts),
    heldout: cfg.evalSeed === null ? heldoutAll.slice(0, cfg.evalTasks) : sampleItems(heldoutAll, cfg.evalTasks, cfg.evalSeed),
  };
}

/** OUT checked against the inputs, created, locked, its fingerprints (the base's in OUT, each arm's in OUT/ARM) checked or written. */
async function prepareSweepDir(cfg: SweepConfig, o: SweepCommandOptions, modelDir: string, arms: readonly PlannedArm[]): Promise<void> {
  const inputs = [
    { flag: 'config', path: cfg.file },
    ...(cfg.model !== null ? [{ flag: 'model', path: cfg.model }] : []),
    ...(cfg.data !== null ? [{ flag: 'data', path: cfg.data }] : []),
    ...(cfg.evalData !== null ? [{ flag: 'eval_data', path: cfg.evalData }] : []),
  ];
  checkOverlap('sweep', { flag: 'out', path: o.out, kind: 'dir', clears: o.overwrite }, inputs);
  checkOwnership('sweep', o.out);
  try {
    await makeDirs(o.out);
  } catch (e) {
    if (e instanceof OutputError) throw new UsageError(`spinlm sweep: --out ${e.message}`);
    throw e;
  }
  await lockDir('sweep', o.out);
  if (o.overwrite) clearOwnedSaying('sweep', o.out);
  await claimDir(
    'sweep',
    o.out,
    arms.map((a) => a.name),
  );
  const baseFp = await fingerprintOf(
    'sweep',
    {
      model: modelDir,
      data: cfg.data ?? undefined,
      eval_data: cfg.evalData ?? undefined,
      prompts: cfg.prompts,
      eval_tasks: cfg.evalTasks,
      eval_seed: cfg.evalSeed ?? undefined,
      device: o.device,
    },
    [{ flag: 'model', path: modelDir }, ...inputs.filter((i) => i.flag === 'data' || i.flag === 'eval_data')],
  );
  await checkFingerprint(o.out, baseFp, 'a sweep');
  for (const arm of arms) {
    await makeDirs(join(o.out, arm.name));
    await checkFingerprint(join(o.out, arm.name), await fingerprintOf('sweep', arm.options, []), `arm '${arm.name}' of a sweep`);
  }
  await writeFileAtomic(
    join(o.out, 'sweep.resolved.json'),
    `${JSON.stringify({ command: 'sweep', ...cfg, model: modelDir, device: o.device }, null, 2)}\n`,
  );
}

/** The whole `spinlm sweep`: check, prepare OUT, run every (arm, seed) not yet done, write the table. */
export async function sweepCommand(cfg: SweepConfig, o: SweepCommandOptions): Promise<string> {
  const t0 = Date.now();
  const secs = () => `${((Date.now() - t0) / 1000).toFixed(0)}s`;
  const say = (line: string) => {
    if (!o.quiet) process.stderr.write(`[${secs()}] ${line}\n`);
  };
  // 1. everything checked before OUT is touched
  const modelDir = cfg.model ?? join(packageRoot, 'assets', 'theta0');
  const where = cfg.model === null ? 'the shipped θ0' : `${cfg.file}: base.model ${cfg.model}`;
  if (!existsSync(join(modelDir, 'config.json')))
    throw new UsageError(`${where}: no config.json in ${modelDir} (expected a Hugging Face model directory)`);
  for (const [key, path] of [
    ['data', cfg.data],
    ['eval_data', cfg.evalData],
  ] as const)
    if (path !== null && !existsSync(path)) throw new UsageError(`${cfg.file}: base.${key} ${path}: no such file`);
  const tok = await loadTokenizer(modelDir);
  const mc = parseConfig(JSON.parse(readFileSync(join(modelDir, 'config.json'), 'utf8')), join(modelDir, 'config.json'));
  tok.checkModelVocab(mc.vocabSize, join(modelDir, 'config.json'));
  const context = ropePositionLimit(mc.maxPositionEmbeddings, mc.ropeScaling); // longrope: original_max_position_embeddings
  const arms = cfg.arms.map((a, i) => planArm(cfg.file, i, a, tok, context));
  const { sft, heldout } = await sweepData(cfg);

  // 2. OUT: overlap, directory, lock, fingerprints (by the parent of --jobs workers)
  const worker = workerSlot();
  const jobs = worker ? 1 : (o.jobs ?? 1);
  if (!worker) await prepareSweepDir(cfg, o, modelDir, arms);

  // 3. θ0, once (with the baseline's evaluation settings; by the parent of --jobs workers)
  const be = await backend();
  const baselineArm = arms.find((a) => a.name === cfg.baseline)!;
  let theta0: SweepEval | null = null;
  if (!worker) {
    const file = join(o.out, 'theta0', 'eval.json');
    if (!existsSync(file)) say('θ0: evaluate');
    theta0 = await evaluateTheta0<SweepEval>(be, modelDir, (m) => evaluateTasks(m, tok, heldout, baselineArm.eval), file);
    say(`θ0: exact match ${fmt(theta0.exactMatch, 3)}, held-out log-prob/token ${fmt(theta0.heldoutLogp)}`);
  }

  // the table, from the eval.json files on disk: rewritten after every finished run, so that a long sweep
  // always has one for what is done (the `seeds` column says how many seeds each row has)
  const writeTable = async () => {
    if (!theta0) throw new Error('a --jobs worker writes no table');
    const records = await readSweepRecords(
      o.out,
      arms.map((a) => a.name),
      cfg.seeds,
      cfg.iterations,
    );
    const s = summarizeSweep({
      title: `spinlm sweep: ${basename(cfg.file)}`,
      arms,
      seeds: cfg.seeds,
      baseline: cfg.baseline,
      heldoutTasks: heldout.length,
      theta0,
      records,
      failed: await readSweepFailures(
        o.out,
        arms.map((a) => a.name),
        cfg.seeds,
      ),
    });
    await writeSweepOutputs(o.out, s);
    return s;
  };

  // 4. every (seed, arm): seed by seed, so that the finished seeds are complete pairs
  const runs: ExperimentRun[] = cfg.seeds.flatMap((seed) =>
    arms.map((arm) => ({ ...arm.run, seed, dir: runDirOf(o.out, arm.name, seed), generationSeed: seed })),
  );
  const evalOf = new Map(arms.map((a) => [a.name, a.eval]));
  const metrics = new Map<string, MetricsWriter>();
  const experiment: Experiment = {
    backend: be,
    theta0: modelDir,
    tokenizer: tok,
    prompts: sft,
    iterations: cfg.iterations,
    runs: worker ? runs.filter((_, i) => i % worker.n === worker.k) : runs,
    evaluate: async (m, run, t) => {
      const metricsFile = join(run.dir, 'metrics.jsonl');
      const e: SweepEval = {
        ...(await evaluateTasks(m, tok, heldout, evalOf.get(run.arm)!)),
        ...(await opponentStats(run.dir, t, run.selfPlay.arm, sft, metricsFile)),
      };
      const { arm, seed } = run;
      metrics.get(run.dir)!.write({ kind: 'eval', arm, iteration: t + 1, seed, exact_match: e.exactMatch, heldout_logp: e.heldoutLogp });
      say(
        `${arm} seed ${seed} after iteration ${t + 1}: exact match ${fmt(e.exactMatch, 3)}, held-out log-prob/token ${fmt(e.heldoutLogp)}`,
      );
      return e as unknown as Record<string, unknown>;
    },
  };
  if (jobs > 1) {
    const args = [
      join(packageRoot, 'bin', 'spinlm.js'),
      'sweep',
      cfg.file,
      '--out',
      o.out,
      '--device',
      o.device,
      ...(o.quiet ? ['--quiet'] : []),
    ];
    await runWorkers(args, jobs, say, writeTable);
  } else
    await runExperiment(experiment, {
      onRunStart: async (run) => {
        await truncateMetrics(run.dir, 'run');
        metrics.set(run.dir, new MetricsWriter(join(run.dir, 'metrics.jsonl')));
      },
      onStep: (run, t, l) => {
        metrics.get(run.dir)!.write({ kind: 'step', arm: run.arm, seed: run.seed, iteration: t, ...l });
        if (l.step % 10 === 0)
          say(
            `${run.arm} seed ${run.seed} iter ${t} step ${l.step} loss ${fmt(l.loss)}${typeof l['rewards/margins'] === 'number' ? ` margin ${fmt(l['rewards/margins'], 3)}` : ''}`,
          );
      },
      onStage: (run, t, s) => say(`${run.arm} seed ${run.seed} iteration ${t}: ${s}`),
      // fault injection for the resume test: SPINLM_KILL_AT=ARM/seed-S:iteration:step kills this process
      afterStep: (run, t, s) => {
        if (process.env.SPINLM_KILL_AT === `${run.arm}/seed-${run.seed}:${t}:${s}`) process.kill(process.pid, 'SIGKILL');
      },
      onRunDone: async (run) => {
        if (worker) process.stdout.write(`${RUN_DONE} ${run.arm} ${run.seed}\n`);
        else await writeTable();
      },
      // a diverged run is recorded as failed (diverged.json, the table's "failed" rows); the others go on
      onRunDiverged: async (run, failure, before) => {
        process.stderr.write(
          `spinlm sweep: ${run.arm} seed ${run.seed} iteration ${failure.iteration} ${before ? 'diverged on an earlier try' : 'failed'}: ${failure.message}\n`,
        );
        if (worker) process.stdout.write(`${RUN_DONE} ${run.arm} ${run.seed}\n`);
        else await writeTable();
      },
    });
  if (worker) return '';

  // 5. the table, from the eval.json files
  return sweepTable(await writeTable());
}

/** The default --out: the config's name without its extension, in the working directory. */
export const defaultSweepOut = (file: string) => basename(file, extname(file)) || 'spinlm-sweep';
