// The config of `spinlm sweep` (docs/science.md, "The config"): YAML or JSON naming the base (θ0, data,
// iterations, prompts, held-out tasks), the seeds, the baseline arm and the arms, whose options are
// `spinlm run`'s flags (the same specs and checks). Read and checked here, before anything runs: every
// problem is one line naming the file and the key.
import { INPUT_CAPS, type InputFileError, readInputFileSync } from '../util/input_file.js';
import YAML from 'yaml';
import { demoSelfPlayOptions } from '../spin/demo.js';
import { DEMO_GENERATION } from '../spin/experiment.js';
import { type OptionSpec, type Parsed, positive, resolveValues, suggest, UsageError } from './args.js';
import { num, optNum, optStr } from './config.js';
import { generationOptions, selfPlayLoopOptions, trainOptions } from './options.js';

/** Which objective an arm trains with: the SPIN loss (loss_type, beta, nll_alpha...) or continued SFT on the real answers. */
const objectiveOption: OptionSpec = {
  name: 'objective',
  type: { oneOf: ['spin', 'sft'] },
  default: 'spin',
  help: 'spin: the SPIN loss (loss_type, beta, nll_alpha, ...); sft: continued SFT on the real answers with the same optimizer steps',
};

/** Set by the sweep, not per arm: the seed (by `seeds:`), and how models are loaded or processes started. */
const NOT_ARM_OPTIONS = new Set(['seed', 'dtype', 'nproc', 'zero_stage', 'oversubscribe']);

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
    // the demo's generation (src/spin/experiment.ts DEMO_GENERATION): greedy, answers of at most 32 tokens, 64 prompts at a time
    temperature: DEMO_GENERATION.temperature,
    max_new_tokens: DEMO_GENERATION.maxNewTokens,
    generation_batch_size: DEMO_GENERATION.batchSize,
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
    text = readInputFileSync(file, INPUT_CAPS.config);
  } catch (e) {
    const err = e as InputFileError;
    throw new UsageError(
      `spinlm sweep: ${err.code ? `cannot read the config ${file} (${err.code})` : `the config ${file} ${err.message}`}`,
    );
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
    data: optStr(b, 'data') ?? null,
    evalData: optStr(b, 'eval_data') ?? null,
    iterations: num(b, 'iterations'),
    prompts: num(b, 'prompts'),
    evalTasks: num(b, 'eval_tasks'),
    evalSeed: optNum(b, 'eval_seed') ?? null,
    seeds,
    baseline: doc.baseline as string,
    arms,
  };
}
