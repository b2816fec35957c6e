// The self-play commands: `run` (one self-play run), `demo` (the embedded default: three arms from the
// shipped θ0) and `sweep` (arms x seeds from a config). Each parses its options into a typed config,
// hands the work to the experiment runner (src/spin/experiment.ts) and prints what it reports.
import { join } from 'node:path';
import { packageRoot } from '../backend/native/addon.js';
import { loadSftPairs } from '../data/sft.js';
import { stopIdsOf } from '../generate/stops.js';
import { DEMO_ARMS, type DemoOptions, runDemo } from '../spin/demo.js';
import { areTasks, type EvalSettings, evaluateHeldout } from '../spin/evaluate.js';
import { type ExperimentRun, runExperiment } from '../spin/experiment.js';
import { MetricsWriter, readMetrics } from '../spin/metrics.js';
import { writeReport } from '../spin/report.js';
import { makeDirs, OutputError, writeFileAtomic } from '../util/atomic.js';
import { type Parsed, positive, UsageError } from './args.js';
import { type Command, promptFits, sftData, stepLine } from './command.js';
import { backend, checkInputPaths, fmt, isMain, loadModelAndTokenizer, prepareOut, templateDateOf } from './common.js';
import {
  bool,
  checkComputeDtype,
  dataConfig,
  deviceConfig,
  generationConfig,
  generationSettingsOf,
  checkLoraFor,
  loopConfig,
  modelConfig,
  num,
  optStr,
  selfPlayConfig,
  str,
  truncationOf,
} from './config.js';
import {
  dataOption,
  generationOptions,
  modelOption,
  nOption,
  outOption,
  overwriteOption,
  quietOption,
  selfPlayLoopOptions,
  skipInvalidOption,
  strictOption,
  trainOptions,
} from './options.js';
import { progressBar } from './progress.js';
import { checkOwnership, claimDir } from './ownership.js';
import { lockDir } from './run_dir.js';
import { defaultSweepOut, sweepCommand } from './sweep.js';
import { readSweepConfig } from './sweep_config.js';

export const run: Command = {
  name: 'run',
  summary:
    'Self-play: per iteration generate -> reference log-probs -> train -> checkpoint -> evaluate; the new model is the next opponent. Killed runs resume.',
  options: [
    modelOption,
    dataOption,
    strictOption,
    outOption('run directory (iter-t/..., metrics.jsonl, report.html)'),
    { name: 'iterations', type: 'int', default: 3, check: positive, help: 'self-play iterations' },
    ...selfPlayLoopOptions,
    { name: 'eval_data', type: 'string', help: 'held-out file for the per-iteration evaluation (mean real-answer log-prob per token)' },
    nOption,
    skipInvalidOption,
    ...trainOptions,
    ...generationOptions,
    overwriteOption,
    quietOption,
  ],
  async run(o) {
    const c = runConfig(o); // checked before anything is written, like every input below
    checkInputPaths('run', o, ['model', 'data', 'eval_data']);
    c.model.templateDate ??= templateDateOf(o);
    const { model, tok, template, rounds } = await loadModelAndTokenizer(c.model);
    checkLoraFor(c.loop.lora, model.cfg.modelType);
    const trunc = truncationOf(c.model, model.maxPositions);
    const generation = generationSettingsOf(c.generation, tok, await stopIdsOf(c.model.dir, model.cfg.eosTokenIds, tok, template));
    generation.computeDtype = checkComputeDtype(c.model, model.weights.dtype);
    // every row's length is checked here, before the first stage, naming the file and row
    const fits = promptFits(model, tok, template);
    model.weights.free();
    const sft = await sftData(c.data, fits, rounds);
    const heldout = c.evalData ? (await loadSftPairs(c.evalData, { check: fits, rounds, strictUtf8: c.data.strict })).pairs : null;
    await prepareOut('run', o, ['model', 'data', 'eval_data'], 'run', c.model.templateDate);
    const metrics = new MetricsWriter(join(c.out, 'metrics.jsonl'));
    const evalSettings: EvalSettings = {
      template,
      truncation: trunc,
      logpBatchSize: c.loop.microBatchSize,
      generationBatchSize: generation.batchSize,
      maxNewTokens: generation.maxNewTokens,
      stopIds: generation.stopIds,
    };
    const one: ExperimentRun = {
      arm: 'spin',
      seed: c.loop.seed,
      dir: c.out,
      selfPlay: { arm: 'spin', ...c.selfPlay, loop: c.loop, truncation: trunc, template, paramDtype: c.model.dtype },
      generation,
      generationSeed: c.loop.seed,
    };
    const [final] = await runExperiment(
      {
        backend: await backend(),
        theta0: c.model.dir,
        tokenizer: tok,
        prompts: sft,
        iterations: c.iterations,
        runs: [one],
        evaluate: heldout
          ? async (m, _run, t) => {
              const r = await evaluateHeldout(m, tok, heldout, evalSettings);
              if (isMain()) metrics.write({ kind: 'eval', iteration: t + 1, ...r });
              process.stderr.write(
                `iteration ${t}: ${Object.entries(r)
                  .map(([k, v]) => `${k} ${fmt(v as number)}`)
                  .join(', ')}\n`,
              );
              return r;
            }
          : undefined,
      },
      {
        generationProgress: (_run, t, sample, total) =>
          progressBar(`iter ${t} generating${sample > 0 ? ` (draw ${sample + 1})` : ''}`, total, 'prompts', { quiet: c.quiet }),
        onStep: (_run, t, l) => {
          metrics.write({ kind: 'step', iteration: t, ...l });
          if (!c.quiet && l.step % 10 === 0) process.stderr.write(`${stepLine(`iter ${t}`, l)}\n`);
        },
        onStage: (_run, t, s) => process.stderr.write(`iteration ${t}: ${s}\n`),
        // fault injection for the resume tests: SPINLM_KILL_AT=iteration:step kills this process (SIGKILL)
        afterStep: (_run, t, s) => {
          if (process.env.SPINLM_KILL_AT === `${t}:${s}`) process.kill(process.pid, 'SIGKILL');
        },
      },
    );
    const evalColumns = heldout ? (areTasks(heldout) ? ['exact_match', 'heldout_logp'] : ['heldout_logp']) : [];
    if (isMain()) await writeReport(c.out, readMetrics(join(c.out, 'metrics.jsonl')).rows, { title: 'spinlm run', evalColumns });
    process.stderr.write(`spinlm: final model ${final}; report ${join(c.out, 'report.html')}\n`);
  },
};

/** `spinlm run`'s options as one typed config. */
function runConfig(o: Parsed) {
  return {
    out: str(o, 'out'),
    model: modelConfig(o),
    data: dataConfig(o),
    evalData: optStr(o, 'eval_data'),
    iterations: num(o, 'iterations'),
    selfPlay: selfPlayConfig(o),
    loop: loopConfig(o, 0),
    generation: generationConfig(o),
    quiet: bool(o, 'quiet'),
  };
}

export const demo: Command = {
  name: 'demo',
  summary:
    'The embedded default: from a shipped weak model θ0, 3 SPIN iterations, SPIN + NLL, and continued SFT on synthetic tasks; a table and a report. No downloads.',
  options: [
    { name: 'out', type: 'string', default: 'spinlm-demo', help: 'output directory (resumable)' },
    { name: 'from_scratch', type: 'bool', default: false, help: 'retrain θ0 with the documented SFT recipe instead of the shipped one' },
    { name: 'iterations', type: 'int', default: 3, check: positive, help: 'self-play iterations per arm' },
    { name: 'prompts', type: 'int', default: 1000, check: positive, help: 'SFT prompts answered per iteration' },
    { name: 'eval_tasks', type: 'int', default: 300, check: positive, help: 'held-out tasks' },
    { name: 'quick', type: 'bool', default: false, help: 'a shortened demo (for CI): fewer epochs and smaller batches' },
    quietOption,
  ],
  async run(o) {
    const out = str(o, 'out');
    const quiet = bool(o, 'quiet');
    const t0 = Date.now();
    const secs = () => `${((Date.now() - t0) / 1000).toFixed(0)}s`;
    const metrics = new MetricsWriter(join(out, 'metrics.jsonl'));
    checkOwnership('demo', out);
    try {
      await makeDirs(out);
    } catch (e) {
      if (e instanceof OutputError) throw new UsageError(`spinlm demo: --out ${out}: ${e.message}`);
      throw e;
    }
    await lockDir('demo', out);
    await claimDir('demo', out);
    const opts: DemoOptions = {
      outDir: out,
      theta0Dir: join(packageRoot, 'assets', 'theta0'),
      fromScratch: bool(o, 'from_scratch'),
      iterations: num(o, 'iterations'),
      prompts: num(o, 'prompts'),
      evalTasks: num(o, 'eval_tasks'),
      quick: bool(o, 'quick'),
    };
    const rows = await runDemo(await backend(), opts, {
      onStage: (arm, t, s) => {
        if (!quiet) process.stderr.write(`[${secs()}] ${arm} iteration ${t}: ${s}\n`);
      },
      onStep: (arm, t, l) => {
        metrics.write({ kind: 'step', arm, iteration: t, ...l });
        if (!quiet && l.step % 10 === 0) process.stderr.write(`[${secs()}] ${stepLine(`${arm} iter ${t}`, l)}\n`);
      },
      onSftStep: (l) => {
        if (!quiet && l.step % 50 === 0) process.stderr.write(`[${secs()}] θ0 sft step ${l.step} loss ${fmt(l.loss)}\n`);
      },
      onRow: (r) => {
        metrics.write({
          kind: 'eval',
          arm: r.arm,
          iteration: r.iteration,
          exact_match: r.exactMatch,
          heldout_logp: r.heldoutLogp,
          by_task: r.byTask,
        });
        process.stderr.write(
          `[${secs()}] ${r.arm} after iteration ${r.iteration}: exact match ${fmt(r.exactMatch, 3)}, held-out log-prob/token ${fmt(r.heldoutLogp)}\n`,
        );
      },
    });
    const lines = [
      '| iteration | ' + DEMO_ARMS.map((a) => `${a.name} exact match | ${a.name} log-prob/token`).join(' | ') + ' |',
      '| --- |' + DEMO_ARMS.map(() => ' --- | --- |').join(''),
    ];
    const iters = [...new Set(rows.map((r) => r.iteration))].sort((a, b) => a - b);
    for (const it of iters)
      lines.push(
        `| ${it} | ` +
          DEMO_ARMS.map((a) => {
            const r = rows.find((x) => x.arm === a.name && x.iteration === it);
            return r ? `${fmt(r.exactMatch, 3)} | ${fmt(r.heldoutLogp)}` : ' | ';
          }).join(' | ') +
          ' |',
      );
    const table = lines.join('\n');
    const notes = `Held-out: ${opts.evalTasks} synthetic tasks never trained on. Arms: ${DEMO_ARMS.map((a) => `${a.name} = ${a.description}`).join('; ')}. Iteration 0 is θ0.`;
    const { rows: mrows } = readMetrics(join(out, 'metrics.jsonl'));
    await writeReport(out, mrows, {
      title: 'spinlm demo: SPIN vs SPIN+NLL vs continued SFT',
      evalColumns: ['exact_match', 'heldout_logp'],
      notes,
    });
    await writeFileAtomic(join(out, 'table.md'), `${table}\n`);
    console.log(`\n${table}\n\n${notes}\nReport: ${join(out, 'report.html')} (plots), ${join(out, 'report.md')}; total ${secs()}.`);
  },
};

export const sweep: Command = {
  name: 'sweep',
  summary:
    'A grid of self-play arms x seeds from a YAML config (docs/science.md); resumable; writes sweep.md / sweep.json / sweep.svg with paired standard errors against a baseline arm.',
  positional: { name: 'sweep_config', usage: 'CONFIG.yaml' },
  options: [
    {
      name: 'out',
      type: 'string',
      check: (v: string) => (v === '' ? 'must not be empty' : null),
      help: "output directory (default: the config's name, e.g. sweep-demo for sweep-demo.yaml)",
    },
    {
      name: 'jobs',
      type: 'int',
      default: 1,
      check: positive,
      help: 'runs at a time, each in its own process on cores / jobs threads (small models run faster side by side than on more threads)',
    },
    overwriteOption,
    quietOption,
  ],
  async run(o) {
    const file = str(o, 'sweep_config');
    const cfg = readSweepConfig(file);
    const out = optStr(o, 'out') ?? defaultSweepOut(file);
    const t0 = Date.now();
    const table = await sweepCommand(cfg, {
      out,
      overwrite: bool(o, 'overwrite_output_dir'),
      ...deviceConfig(o),
      jobs: num(o, 'jobs'),
    });
    if (process.env.SPINLM_SWEEP_WORKER) return; // a --jobs worker: the parent prints the table
    console.log(
      `\n${table}\n\nΔ: mean paired difference in exact match vs ${cfg.baseline} (same seed, iteration and tasks); paired SE = sd/sqrt(n) over the ${cfg.seeds.length} seeds.\nTables: ${join(out, 'sweep.md')} (per task family too), ${join(out, 'sweep.json')}; plot: ${join(out, 'sweep.svg')}; total ${((Date.now() - t0) / 1000).toFixed(0)}s.`,
    );
  },
};
