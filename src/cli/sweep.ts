// `spinlm sweep CONFIG.yaml`: a grid of self-play arms x seeds from one θ0 (docs/science.md). The config
// names the base (θ0, data, iterations, prompts, held-out tasks), the seeds, the baseline arm and the
// arms, whose options are `spinlm run`'s flags (the same specs and checks). Each (arm, seed) runs in
// OUT/ARM/seed-S/ with runSelfPlay's resumable layout; the table, its JSON and the plot are rebuilt
// from the runs' eval.json files at the end (src/spin/sweep.ts).
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { basename, extname, join } from 'node:path';
import { createInterface } from 'node:readline';
import YAML from 'yaml';
import type { ComputeDtype } from '../backend/backend.js';
import { packageRoot } from '../backend/native/addon.js';
import { sampleItems } from '../data/sample.js';
import { loadSftPairs } from '../data/sft.js';
import { exactMatch, type SyntheticTask } from '../data/synthetic.js';
import { answerPrompts } from '../generate/answers.js';
import { parseConfig } from '../model/config.js';
import { type KvCacheDtype, LlamaDecoder } from '../model/decoder.js';
import { LlamaModel } from '../model/llama.js';
import type { TruncationOptions } from '../spin/batch.js';
import { demoSelfPlayOptions } from '../spin/demo.js';
import { demoHeldoutPool, demoTasks } from '../spin/demo_setup.js';
import { exactMatchEval, heldoutLogp } from '../spin/evaluate.js';
import { MetricsWriter, readMetrics } from '../spin/metrics.js';
import { iterationDir, runSelfPlay, type SelfPlayOptions } from '../spin/self_play.js';
import { summarizeSweep, type SweepEval, type SweepRecord, sweepTable, writeSweepOutputs } from '../spin/sweep.js';
import type { PromptTemplate } from '../text/templates.js';
import { type HfTokenizer, loadTokenizer } from '../text/tokenizer.js';
import { makeDirs, OutputError, writeFileAtomic } from '../util/atomic.js';
import { type OptionSpec, type Parsed, positive, resolveValues, suggest, UsageError } from './args.js';
import { backend, fmt, loop, resolveTemplate, selfPlayFlags, stopSequences, truncation } from './common.js';
import { generationOptions, selfPlayLoopOptions, trainOptions } from './options.js';
import { checkOverlap, clearDir, fingerprintDiff, fingerprintOf, type Fingerprint, lockDir, truncateMetrics } from './run_dir.js';

/** Which objective an arm trains with: the SPIN loss (loss_type, beta, nll_alpha...) or continued SFT on the real answers. */
const objectiveOption: OptionSpec = {
  name: 'objective',
  type: { oneOf: ['spin', 'sft'] },
  default: 'spin',
  help: 'spin: the SPIN loss (loss_type, beta, nll_alpha, ...); sft: continued SFT on the real answers with the same optimizer steps',
};

/** Set by the sweep, not per arm: the seed (by `seeds:`), and how models are loaded or processes started. */
const NOT_ARM_OPTIONS = new Set(['seed', 'dtype', 'nproc', 'zero_stage']);

/** An arm's options: `spinlm run`'s training and generation flags (the same specs), plus `objective`. */
export const ARM_OPTIONS: OptionSpec[] = [
  objectiveOption,
  ...trainOptions.filter((s) => !NOT_ARM_OPTIONS.has(s.name)),
  ...selfPlayLoopOptions,
  ...generationOptions,
];

/** The base's keys besides `options`. */
const BASE_OPTIONS: OptionSpec[] = [
  { name: 'model', type: 'string', help: "θ0: a Hugging Face model directory (default: the demo's shipped θ0)" },
  { name: 'data', type: 'string', help: 'with model: SFT data whose prompts the opponent answers (JSONL or Parquet)' },
  { name: 'eval_data', type: 'string', help: 'with model: held-out synthetic tasks (rows with a "task" field)' },
  { name: 'iterations', type: 'int', default: 3, check: positive, help: 'self-play iterations per run' },
  { name: 'prompts', type: 'int', default: 1000, check: positive, help: 'SFT prompts per iteration (the first ones)' },
  {
    name: 'eval_tasks',
    type: 'int',
    default: 300,
    check: positive,
    help: 'held-out tasks (the first ones, or a sample drawn with eval_seed)',
  },
  { name: 'eval_seed', type: 'int', help: 'draw the eval_tasks held-out tasks as a seeded sample instead of taking the first ones' },
];

const TOP_KEYS = ['base', 'seeds', 'baseline', 'arms'];
const BASE_KEYS = [...BASE_OPTIONS.map((s) => s.name), 'options'];
const ARM_KEYS = ['name', 'description', 'options'];
const ARM_NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;

/** The settings of the demo's arms (docs/demo.md) as flag values: the defaults of a sweep from the shipped θ0. */
export function demoArmDefaults(): Record<string, unknown> {
  const d = demoSelfPlayOptions('', 1, false);
  const optim = d.loop.optim;
  return {
    learning_rate: d.learningRates,
    optim: optim.type,
    ...(optim.type === 'rmsprop' ? { rmsprop_alpha: optim.alpha } : {}),
    adam_epsilon: optim.eps,
    weight_decay: optim.weightDecay,
    lr_scheduler_type: d.loop.lrSchedulerType,
    warmup_ratio: d.loop.warmupRatio,
    per_device_train_batch_size: d.loop.microBatchSize,
    gradient_accumulation_steps: d.loop.gradientAccumulationSteps,
    num_train_epochs: d.loop.numTrainEpochs,
    max_grad_norm: d.loop.maxGradNorm ?? 0,
    save_steps: d.loop.saveSteps,
    beta: d.betas,
    loss_type: d.lossType,
    nll_alpha: d.nllAlpha,
    drop_identical_pairs: d.dropIdentical,
    mix_previous_iteration: d.mixPrevious,
    template: d.template,
    max_length: d.truncation.maxLength,
    max_prompt_length: d.truncation.maxPromptLength,
    // the demo's generation (src/spin/demo.ts): greedy, answers of at most 32 tokens, 64 prompts at a time
    temperature: 0,
    max_new_tokens: 32,
    generation_batch_size: 64,
  };
}

export interface SweepConfigArm {
  name: string;
  description: string;
  /** Resolved: every option of ARM_OPTIONS, defaults filled in. */
  options: Parsed;
}

export interface SweepConfig {
  file: string;
  /** null: the shipped demo θ0. */
  model: string | null;
  data: string | null;
  evalData: string | null;
  iterations: number;
  prompts: number;
  evalTasks: number;
  evalSeed: number | null;
  seeds: number[];
  baseline: string;
  arms: SweepConfigArm[];
}

const isMapping = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const shown = (v: unknown) => {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 60 ? `${s.slice(0, 57)}...` : s;
};

function checkKeys(where: string, obj: Record<string, unknown>, known: readonly string[], prefix = ''): void {
  for (const k of Object.keys(obj)) {
    if (known.includes(k)) continue;
    const near = /Did you mean --(\S+)\?/.exec(suggest(k, known))?.[1];
    throw new UsageError(
      `${where}: unknown key '${prefix}${k}'; ${near ? `did you mean '${prefix}${near}'?` : `the keys are ${known.map((x) => prefix + x).join(', ')}`}`,
    );
  }
}

/** Option values of a mapping, keyed by their canonical names (kebab-case and aliases resolved). */
function canonicalKeys(values: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(values)) {
    const c = k.replace(/-/g, '_');
    const spec = ARM_OPTIONS.find((s) => s.name === c || s.aliases?.includes(c));
    out[spec ? spec.name : c] = v;
  }
  return out;
}

/** Checks an options mapping against ARM_OPTIONS (one line per problem, naming the key and the fix). */
function checkArmOptions(where: string, options: unknown): Record<string, unknown> {
  if (options === undefined || options === null) return {};
  if (!isMapping(options))
    throw new UsageError(`${where}: options must be a mapping of \`spinlm run\` flags to values, got ${shown(options)}`);
  for (const k of Object.keys(options)) {
    const c = k.replace(/-/g, '_');
    if (c === 'seed') throw new UsageError(`${where}: options.seed is set per run by the top-level \`seeds:\` list; remove it`);
    if (NOT_ARM_OPTIONS.has(c))
      throw new UsageError(`${where}: options.${k} cannot differ between runs of a sweep (it is not an arm option); remove it`);
  }
  try {
    resolveValues(options, ARM_OPTIONS, where, 'options.');
  } catch (e) {
    if (e instanceof UsageError && /unknown key/.test(e.message) && !/Did you mean/.test(e.message))
      throw new UsageError(
        `${e.message.replace(/\.$/, '')}: arm options are \`spinlm run\`'s flags (see \`spinlm run --help\`) and objective`,
      );
    throw e;
  }
  return canonicalKeys(options);
}

/** Reads and checks a sweep config; every problem is a UsageError of one line naming the file and key. */
export function readSweepConfig(file: string): SweepConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new UsageError(`spinlm sweep: cannot read the config ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  let doc: unknown;
  try {
    doc = file.endsWith('.json') ? JSON.parse(text) : YAML.parse(text);
  } catch (e) {
    throw new UsageError(`${file}: not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(e as Error).message.split('\n')[0]}`);
  }
  if (!isMapping(doc)) throw new UsageError(`${file}: expected a mapping with the keys ${TOP_KEYS.join(', ')}`);
  checkKeys(file, doc, TOP_KEYS);

  const base = doc.base ?? {};
  if (!isMapping(base))
    throw new UsageError(`${file}: base must be a mapping (model, data, eval_data, iterations, prompts, eval_tasks, eval_seed, options)`);
  checkKeys(file, base, BASE_KEYS, 'base.');
  const { options: baseOptionsRaw, ...baseRest } = base;
  const b = resolveValues(baseRest, BASE_OPTIONS, `${file}:`, 'base.');
  const baseOptions = checkArmOptions(`${file}: base`, baseOptionsRaw);
  const model = typeof b.model === 'string' ? b.model : null;
  if (model === null && (b.data !== undefined || b.eval_data !== undefined))
    throw new UsageError(
      `${file}: base.data and base.eval_data go with base.model; the shipped θ0 plays on the demo's synthetic tasks (remove them, or name base.model)`,
    );
  if (model !== null && (b.data === undefined || b.eval_data === undefined))
    throw new UsageError(
      `${file}: base.model needs base.data (SFT prompts and real answers) and base.eval_data (held-out synthetic tasks with a "task" field)`,
    );

  let seeds: number[] = [1, 2, 3];
  if (doc.seeds !== undefined) {
    const s = doc.seeds;
    if (!Array.isArray(s) || s.length === 0 || !s.every((x) => Number.isSafeInteger(x) && x >= 0))
      throw new UsageError(`${file}: seeds must be a non-empty list of integers >= 0, such as [1, 2, 3]; got ${shown(s)}`);
    const dup = s.find((x, i) => s.indexOf(x) !== i);
    if (dup !== undefined) throw new UsageError(`${file}: seeds lists ${dup} twice; give each seed once`);
    seeds = s as number[];
  }

  if (!Array.isArray(doc.arms) || doc.arms.length === 0)
    throw new UsageError(`${file}: arms must be a non-empty list of {name, description, options}; got ${shown(doc.arms)}`);
  const arms: SweepConfigArm[] = [];
  doc.arms.forEach((a: unknown, i: number) => {
    const at = `${file}: arms[${i}]`;
    if (!isMapping(a)) throw new UsageError(`${at}: expected a mapping {name, description, options}, got ${shown(a)}`);
    checkKeys(at, a, ARM_KEYS);
    if (typeof a.name !== 'string' || !ARM_NAME.test(a.name))
      throw new UsageError(
        `${at}: name must be a string of letters, digits and . _ + - (it names the arm's directory), got ${shown(a.name)}`,
      );
    const name = a.name;
    const other = arms.findIndex((x) => x.name === name);
    if (other >= 0) throw new UsageError(`${at}: the name '${name}' is taken by arms[${other}] too; give each arm its own name`);
    if (a.description !== undefined && typeof a.description !== 'string')
      throw new UsageError(`${at} (${name}): description must be a string, got ${shown(a.description)}`);
    const own = checkArmOptions(`${at} (${name})`, a.options);
    const defaults = model === null ? demoArmDefaults() : {};
    const options = resolveValues({ ...defaults, ...baseOptions, ...own }, ARM_OPTIONS, `${at} (${name})`, 'options.');
    arms.push({ name, description: typeof a.description === 'string' ? a.description : '', options });
  });

  if (typeof doc.baseline !== 'string' || !arms.some((a) => a.name === doc.baseline))
    throw new UsageError(
      `${file}: baseline must name the arm the others are paired against (one of: ${arms.map((a) => a.name).join(', ')}); got ${shown(doc.baseline)}`,
    );

  return {
    file,
    model,
    data: (b.data as string | undefined) ?? null,
    evalData: (b.eval_data as string | undefined) ?? null,
    iterations: Number(b.iterations),
    prompts: Number(b.prompts),
    evalTasks: Number(b.eval_tasks),
    evalSeed: b.eval_seed === undefined ? null : Number(b.eval_seed),
    seeds,
    baseline: doc.baseline as string,
    arms,
  };
}

interface GenerationSettings {
  temperature: number;
  topP: number;
  topK: number;
  maxNewTokens: number;
  batchSize: number;
  stopSequences?: number[][];
  kvCacheDtype: KvCacheDtype;
  computeDtype: ComputeDtype;
}

/** An arm ready to run: its SelfPlayOptions (less outDir, iterations and seed) and its generation settings. */
interface PlannedArm {
  name: string;
  description: string;
  options: Parsed;
  selfPlay: Omit<SelfPlayOptions, 'outDir' | 'iterations'>;
  generation: GenerationSettings;
  template: PromptTemplate;
  truncation: TruncationOptions;
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
  const trunc = scoped(() => truncation(o, context));
  const template = scoped(() => resolveTemplate(o, tok));
  const stops = scoped(() => stopSequences(o, tok));
  const base = scoped(() => loop({ ...o, seed: 0, zero_stage: 0 }, 0));
  delete base.dist; // one process
  return {
    name: arm.name,
    description: arm.description,
    options: o,
    selfPlay: {
      arm: o.objective === 'sft' ? 'sft' : 'spin',
      ...scoped(() => selfPlayFlags(o as Parsed)),
      loop: base,
      truncation: trunc,
      template,
    },
    generation: {
      temperature: Number(o.temperature),
      topP: Number(o.top_p),
      topK: Number(o.top_k),
      maxNewTokens: Number(o.max_new_tokens),
      batchSize: Number(o.generation_batch_size),
      stopSequences: stops,
      kvCacheDtype: o.kv_cache_dtype as KvCacheDtype,
      computeDtype: o.compute_dtype as ComputeDtype,
    },
    template,
    truncation: trunc,
  };
}

export const runDirOf = (out: string, arm: string, seed: number) => join(out, arm, `seed-${seed}`);

/** Held-out exact match (overall and per family) and real-answer log-prob per token, with an arm's settings. */
async function evaluate(model: LlamaModel, tok: HfTokenizer, tasks: readonly SyntheticTask[], arm: PlannedArm): Promise<SweepEval> {
  const em = await exactMatchEval(model, tok, tasks, {
    template: arm.template,
    batchSize: arm.generation.batchSize,
    maxNewTokens: arm.generation.maxNewTokens,
  });
  const lp = await heldoutLogp(
    model,
    tok,
    tasks.map((t) => ({ prompt: t.prompt, real: t.answer })),
    { ...arm.truncation, template: arm.template, batchSize: arm.generation.batchSize },
  );
  return {
    exactMatch: em.accuracy,
    heldoutLogp: lp,
    byTask: Object.fromEntries(Object.entries(em.byTask).map(([k, v]) => [k, v.accuracy])),
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
  device: string;
  quiet: boolean;
  /** (arm, seed) runs at a time, each in its own process (default 1: in this process). */
  jobs?: number;
}

/**
 * A worker of `--jobs N` (set by the parent in SPINLM_SWEEP_WORKER as "k/N"): it runs the runs whose
 * index in the seed-major order is k mod N and nothing else (the parent holds the lock, writes the
 * fingerprints, evaluates θ0 and writes the tables).
 */
function workerSlot(): { k: number; n: number } | null {
  const v = process.env.SPINLM_SWEEP_WORKER;
  if (!v) return null;
  const m = /^(\d+)\/(\d+)$/.exec(v);
  if (!m || Number(m[1]) >= Number(m[2]))
    throw new Error(`SPINLM_SWEEP_WORKER=${v}: expected k/N with k < N (set by spinlm sweep --jobs, not by hand)`);
  return { k: Number(m[1]), n: Number(m[2]) };
}

/** The line a worker prints on stdout after each finished run (the parent rebuilds the table on it). */
const RUN_DONE = 'spinlm-sweep-run-done';

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
  const context = parseConfig(
    JSON.parse(readFileSync(join(modelDir, 'config.json'), 'utf8')),
    join(modelDir, 'config.json'),
  ).maxPositionEmbeddings;
  const arms = cfg.arms.map((a, i) => planArm(cfg.file, i, a, tok, context));
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
  sft = sft.slice(0, cfg.prompts);
  const heldout = cfg.evalSeed === null ? heldoutAll.slice(0, cfg.evalTasks) : sampleItems(heldoutAll, cfg.evalTasks, cfg.evalSeed);

  const worker = workerSlot();
  const jobs = worker ? 1 : (o.jobs ?? 1);
  if (!worker) {
    // 2. OUT: overlap, directory, lock, fingerprints (the base's in OUT, each arm's in OUT/ARM)
    const inputs = [
      { flag: 'config', path: cfg.file },
      ...(cfg.model !== null ? [{ flag: 'model', path: cfg.model }] : []),
      ...(cfg.data !== null ? [{ flag: 'data', path: cfg.data }] : []),
      ...(cfg.evalData !== null ? [{ flag: 'eval_data', path: cfg.evalData }] : []),
    ];
    checkOverlap('sweep', { flag: 'out', path: o.out, kind: 'dir', clears: o.overwrite }, inputs);
    try {
      await makeDirs(o.out);
    } catch (e) {
      if (e instanceof OutputError) throw new UsageError(`spinlm sweep: --out ${e.message}`);
      throw e;
    }
    await lockDir('sweep', o.out);
    if (o.overwrite && (existsSync(join(o.out, 'fingerprint.json')) || existsSync(join(o.out, 'sweep.resolved.json')))) clearDir(o.out);
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

  // 3. θ0, once (with the baseline's evaluation settings; by the parent of --jobs workers)
  const be = backend();
  const baselineArm = arms.find((a) => a.name === cfg.baseline)!;
  const theta0File = join(o.out, 'theta0', 'eval.json');
  if (!existsSync(theta0File) && !worker) {
    say('θ0: evaluate');
    const m = await LlamaModel.load(be, modelDir);
    try {
      const e = await evaluate(m, tok, heldout, baselineArm);
      await makeDirs(join(o.out, 'theta0'));
      await writeFileAtomic(theta0File, JSON.stringify(e, null, 2));
    } finally {
      m.weights.free();
    }
  }
  const theta0: SweepEval | null = worker ? null : JSON.parse(await readFile(theta0File, 'utf8'));
  if (theta0) say(`θ0: exact match ${fmt(theta0.exactMatch, 3)}, held-out log-prob/token ${fmt(theta0.heldoutLogp)}`);

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
    });
    await writeSweepOutputs(o.out, s);
    return s;
  };

  // 4. every (seed, arm): seed by seed, so that the finished seeds are complete pairs
  const runs = cfg.seeds.flatMap((seed) => arms.map((arm) => ({ seed, arm })));
  const runOne = async ({ seed, arm }: (typeof runs)[number]) => {
    const dir = runDirOf(o.out, arm.name, seed);
    const label = `${arm.name} seed ${seed}`;
    await makeDirs(dir);
    await truncateMetrics(dir, 'run');
    const metricsFile = join(dir, 'metrics.jsonl');
    const metrics = new MetricsWriter(metricsFile);
    await runSelfPlay(
      be,
      modelDir,
      tok,
      sft,
      { ...arm.selfPlay, outDir: dir, iterations: cfg.iterations, loop: { ...arm.selfPlay.loop, seed } },
      {
        generate: (m, prompts, t, file, sample) =>
          answerPrompts(new LlamaDecoder(m, arm.generation.kvCacheDtype, arm.generation.computeDtype), tok, prompts, {
            ...arm.generation,
            seed: seed + t,
            streamOffset: sample * prompts.length,
            journal: file,
          }),
        evaluate: async (m, t) => {
          const e = await evaluate(m, tok, heldout, arm);
          const genFile = join(iterationDir(dir, t), 'generated.json');
          if (arm.selfPlay.arm === 'spin' && existsSync(genFile)) {
            const answers: string[] = JSON.parse(await readFile(genFile, 'utf8'));
            e.generatedEqualsReal = answers.filter((a, i) => exactMatch(sft[i], a)).length / answers.length;
            const steps = readMetrics(metricsFile).rows.filter((r) => r.kind === 'step' && r.iteration === t);
            const mean = (k: string) => {
              const xs = steps.map((r) => r[k]).filter((v): v is number => typeof v === 'number');
              return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null;
            };
            e.rewardsReal = mean('rewards/real');
            e.rewardsGenerated = mean('rewards/generated');
          } else {
            e.generatedEqualsReal = null;
            e.rewardsReal = null;
            e.rewardsGenerated = null;
          }
          metrics.write({ kind: 'eval', arm: arm.name, iteration: t + 1, seed, exact_match: e.exactMatch, heldout_logp: e.heldoutLogp });
          say(`${label} after iteration ${t + 1}: exact match ${fmt(e.exactMatch, 3)}, held-out log-prob/token ${fmt(e.heldoutLogp)}`);
          return e as unknown as Record<string, unknown>;
        },
        onStep: (t, l) => {
          metrics.write({ kind: 'step', arm: arm.name, seed, iteration: t, ...l });
          if (l.step % 10 === 0)
            say(
              `${label} iter ${t} step ${l.step} loss ${fmt(l.loss)}${typeof l['rewards/margins'] === 'number' ? ` margin ${fmt(l['rewards/margins'], 3)}` : ''}`,
            );
        },
        onStage: (t, s) => say(`${label} iteration ${t}: ${s}`),
        // fault injection for the resume test: SPINLM_KILL_AT=ARM/seed-S:iteration:step kills this process
        afterStep: (t, s) => {
          if (process.env.SPINLM_KILL_AT === `${arm.name}/seed-${seed}:${t}:${s}`) process.kill(process.pid, 'SIGKILL');
        },
      },
    );
  };
  if (worker) {
    for (const [i, r] of runs.entries())
      if (i % worker.n === worker.k) {
        await runOne(r);
        process.stdout.write(`${RUN_DONE} ${r.arm.name} ${r.seed}\n`);
      }
    return '';
  }
  if (jobs > 1) await runWorkers(cfg, o, jobs, say, writeTable);
  else
    for (const r of runs) {
      await runOne(r);
      await writeTable();
    }

  // 5. the table, from the eval.json files
  const summary = await writeTable();
  return sweepTable(summary);
}

/**
 * `--jobs N`: N worker processes (this command again, SPINLM_SWEEP_WORKER=k/N) run the (arm, seed)
 * runs k, k + N, ... of the seed-major order, each on cores / N threads (SPINLM_NUM_THREADS and
 * OPENBLAS_NUM_THREADS, unless set); the table is rebuilt after every finished run. A failed
 * worker stops the others; a rerun resumes every run where it stopped, as without --jobs.
 */
async function runWorkers(
  cfg: SweepConfig,
  o: SweepCommandOptions,
  jobs: number,
  say: (line: string) => void,
  writeTable: () => Promise<unknown>,
): Promise<void> {
  const threads = String(Math.max(1, Math.floor(availableParallelism() / jobs)));
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
  say(`${jobs} workers, ${process.env.SPINLM_NUM_THREADS ?? threads} kernel thread(s) each`);
  let tables = Promise.resolve();
  const children = Array.from({ length: jobs }, (_, k) =>
    spawn(process.execPath, [...process.execArgv, ...args], {
      env: {
        ...process.env,
        SPINLM_SWEEP_WORKER: `${k}/${jobs}`,
        SPINLM_NUM_THREADS: process.env.SPINLM_NUM_THREADS ?? threads,
        OPENBLAS_NUM_THREADS: process.env.OPENBLAS_NUM_THREADS ?? process.env.SPINLM_NUM_THREADS ?? threads,
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    }),
  );
  const exits = children.map(
    (child, k) =>
      new Promise<void>((resolve, reject) => {
        createInterface({ input: child.stdout! }).on('line', (line) => {
          if (line.startsWith(RUN_DONE)) tables = tables.then(() => writeTable()).then(() => undefined);
        });
        child.on('error', reject);
        child.on('exit', (code, signal) => {
          if (code === 0) resolve();
          else reject(new Error(`worker ${k + 1} of ${jobs} stopped (${signal ?? `exit code ${code}`}); rerun the same command to resume`));
        });
      }),
  );
  try {
    await Promise.all(exits);
  } catch (err) {
    for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
    await Promise.allSettled(exits);
    throw err;
  } finally {
    await tables;
  }
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
      for (let t = 0; t < iterations; t++) {
        const file = join(iterationDir(runDirOf(out, arm, seed), t), 'eval.json');
        if (existsSync(file)) records.push({ arm, seed, iteration: t + 1, eval: JSON.parse(await readFile(file, 'utf8')) });
      }
  return records;
}

/** The default --out: the config's name without its extension, in the working directory. */
export const defaultSweepOut = (file: string) => basename(file, extname(file)) || 'spinlm-sweep';
