// Parsed options (src/cli/args.ts: untyped, but each value already checked against its spec) turned
// into the library's typed configs, once per command and option group. This is the only file that
// reads option values by name; commands take the typed objects below.
import { type ComputeDtype, SPIN_LOSS_TYPES } from '../backend/backend.js';
import { launchedByMpi, processGroup } from '../dist/process_group.js';
import type { ZeroStage } from '../dist/zero.js';
import type { KvCacheDtype } from '../model/decoder.js';
import { type LoraOptions, resolveLora } from '../model/lora.js';
import type { ModelType } from '../model/config.js';
import type { OptimizerConfig } from '../optim/optimizer.js';
import type { TruncationOptions } from '../spin/batch.js';
import type { GenerationSettings } from '../spin/experiment.js';
import type { SelfPlayOptions, SpinStageOptions } from '../spin/self_play.js';
import type { LoopConfig } from '../spin/train_loop.js';
import { defaultTemplate, parseDay, type PromptTemplate, todayUtc } from '../text/templates.js';
import type { Rounds } from '../data/messages.js';
import type { HfTokenizer } from '../text/tokenizer.js';
import { DEVICES, type DeviceChoice } from '../backend/registry.js';
import { type Parsed, UsageError } from './args.js';

// ---- typed reads (a value of the wrong type is a bug in a spec, not a user error) ----

function value<T>(o: Parsed, k: string, ok: (v: unknown) => boolean, what: string): T {
  const v = o[k];
  if (!ok(v)) throw new TypeError(`option ${k}: expected ${what}, got ${JSON.stringify(v)}`);
  return v as T;
}
const isNum = (v: unknown) => typeof v === 'number';
export const num = (o: Parsed, k: string): number => value<number>(o, k, isNum, 'a number');
export const optNum = (o: Parsed, k: string): number | undefined => (o[k] === undefined ? undefined : num(o, k));
export const str = (o: Parsed, k: string): string => value<string>(o, k, (v) => typeof v === 'string', 'a string');
export const optStr = (o: Parsed, k: string): string | undefined => (o[k] === undefined ? undefined : str(o, k));
export const bool = (o: Parsed, k: string): boolean => o[k] === true;
export const nums = (o: Parsed, k: string): number[] =>
  value<number[]>(o, k, (v) => Array.isArray(v) && v.every(isNum), 'a list of numbers');
/** A choice option's value, one of `values` (its spec's oneOf). */
export const choice = <T extends string>(o: Parsed, k: string, values: readonly T[], fallback?: T): T =>
  o[k] === undefined && fallback !== undefined ? fallback : value<T>(o, k, (v) => values.includes(v as T), `one of ${values.join(', ')}`);

// ---- option groups ----

/** --data with --n (a seeded sample), --seed and --skip_invalid. */
export interface DataConfig {
  path: string;
  n?: number;
  /** The sample's seed (with n). */
  seed?: number;
  skipInvalid: boolean;
  /** --strict: refuse invalid UTF-8 instead of warning. */
  strict: boolean;
}
export function dataConfig(o: Parsed): DataConfig {
  const n = optNum(o, 'n');
  return { path: str(o, 'data'), n, seed: n ? num(o, 'seed') : undefined, skipInvalid: bool(o, 'skip_invalid'), strict: bool(o, 'strict') };
}

/** --model and the text options: where the model is, how it is loaded, how prompts are formatted and cut. */
export interface ModelConfig {
  dir: string;
  /** --adapter: a PEFT LoRA adapter directory applied (unmerged) to the model; undefined: none. */
  adapter?: string;
  /** Parameter dtype; undefined: as stored. */
  dtype?: 'f32' | 'bf16';
  template: 'auto' | 'instruction' | 'chat';
  /** --first_round_only: the official first round of a chat (the instruction template always takes it). */
  firstRoundOnly: boolean;
  /** --empty_system_turn: the official empty system turn (chat template). */
  emptySystemTurn: boolean;
  /** --template_date, or the run's recorded day (prepareOut); undefined: today. */
  templateDate?: string;
  maxLength?: number;
  maxPromptLength?: number;
  truncationMode: 'keep_end' | 'keep_start';
  computeDtype: ComputeDtype;
}
/** --template_date checked as a day (YYYY-MM-DD). */
function checkedDay(day: string | undefined): string | undefined {
  if (day === undefined) return undefined;
  try {
    parseDay(day);
  } catch (e) {
    throw new UsageError(`--template_date: ${(e as Error).message}`);
  }
  return day;
}

export function modelConfig(o: Parsed): ModelConfig {
  const dtype = choice(o, 'dtype', ['auto', 'f32', 'bf16'] as const, 'auto');
  return {
    dir: optStr(o, 'model') ?? '',
    adapter: optStr(o, 'adapter'),
    dtype: dtype === 'auto' ? undefined : dtype,
    template: choice(o, 'template', ['auto', 'instruction', 'chat'] as const, 'auto'),
    firstRoundOnly: bool(o, 'first_round_only'),
    emptySystemTurn: bool(o, 'empty_system_turn'),
    templateDate: checkedDay(optStr(o, 'template_date')),
    maxLength: optNum(o, 'max_length'),
    maxPromptLength: optNum(o, 'max_prompt_length'),
    truncationMode: choice(o, 'truncation_mode', ['keep_end', 'keep_start'] as const, 'keep_end'),
    computeDtype: inferenceComputeDtype(o),
  };
}

/** The prompt template: 'instruction', or the chat template with --empty_system_turn and the run's day. */
export function templateOf(m: Pick<ModelConfig, 'template' | 'emptySystemTurn' | 'templateDate'>, tok: HfTokenizer): PromptTemplate {
  const kind = m.template === 'auto' ? defaultTemplate(tok) : m.template;
  if (kind === 'chat' && tok.chatTemplate === null)
    throw new UsageError(`--template chat: the tokenizer in ${tok.dir} has no chat_template; use --template instruction`);
  if (kind === 'instruction') return 'instruction';
  return { kind: 'chat', emptySystemTurn: m.emptySystemTurn, date: m.templateDate ?? todayUtc() };
}

/** Which round of a conversation is the answer: the first under the instruction template or --first_round_only, else the last. */
export function roundsOf(m: Pick<ModelConfig, 'firstRoundOnly'>, template: PromptTemplate): Rounds {
  return template === 'instruction' || m.firstRoundOnly ? 'first' : 'last';
}

/**
 * Truncation from the options and the model's context (max_position_embeddings): --max_length
 * defaults to the context and may not exceed it; --max_prompt_length defaults to
 * min(512, max_length / 2).
 */
export function truncationOf(
  m: Pick<ModelConfig, 'maxLength' | 'maxPromptLength' | 'truncationMode'>,
  context?: number,
): TruncationOptions {
  const maxLength = m.maxLength ?? context ?? 1024;
  if (context !== undefined && maxLength > context) {
    throw new UsageError(
      `--max_length ${maxLength} exceeds the model's context of ${context} tokens (max_position_embeddings in config.json; longrope: original_max_position_embeddings); give --max_length ${context} or less`,
    );
  }
  const maxPromptLength = m.maxPromptLength ?? Math.min(512, Math.floor(maxLength / 2));
  if (maxPromptLength >= maxLength)
    throw new UsageError(`--max_prompt_length ${maxPromptLength} must be smaller than --max_length ${maxLength}`);
  return { maxLength, maxPromptLength, truncationMode: m.truncationMode };
}

/** --compute_dtype of generation and scoring: auto is f32 there (training's auto: loopConfig). */
function inferenceComputeDtype(o: Parsed): ComputeDtype {
  return choice(o, 'compute_dtype', ['auto', 'f32', 'bf16'] as const, 'auto') === 'bf16' ? 'bf16' : 'f32';
}

/** --compute_dtype, checked against the loaded parameters: bf16 compute needs bf16 parameters. */
export function checkComputeDtype(m: Pick<ModelConfig, 'computeDtype' | 'dir'>, paramDtype: string): ComputeDtype {
  if (m.computeDtype === 'bf16' && paramDtype !== 'bf16')
    throw new UsageError(
      `--compute_dtype bf16 needs bf16 parameters and ${m.dir} is loaded as ${paramDtype}: add --dtype bf16, or leave --compute_dtype at f32`,
    );
  return m.computeDtype;
}

/** The generation options (--temperature, --top_p, ...; --stop still as text: stopSequencesOf encodes it). */
export interface GenerationConfig extends Omit<GenerationSettings, 'stopSequences'> {
  stop?: string;
}
export function generationConfig(o: Parsed): GenerationConfig {
  return {
    temperature: num(o, 'temperature'),
    topP: num(o, 'top_p'),
    topK: num(o, 'top_k'),
    maxNewTokens: num(o, 'max_new_tokens'),
    batchSize: num(o, 'generation_batch_size'),
    kvCacheDtype: choice(o, 'kv_cache_dtype', ['auto', 'f32', 'bf16'] as const satisfies readonly KvCacheDtype[], 'auto'),
    computeDtype: inferenceComputeDtype(o),
    stop: optStr(o, 'stop'),
  };
}

/** --stop as token sequences: one string, or a JSON list of strings. */
export function stopSequencesOf(stop: string | undefined, tok: { encode(s: string): number[] }): number[][] | undefined {
  if (stop === undefined) return undefined;
  let list: unknown = stop;
  if (stop.trim().startsWith('[')) {
    try {
      list = JSON.parse(stop);
    } catch {
      throw new UsageError(`--stop: ${stop} is not a JSON list of strings`);
    }
  }
  const strings = Array.isArray(list) ? list : [list];
  if (strings.some((x) => typeof x !== 'string' || x.length === 0)) throw new UsageError('--stop: expected non-empty strings');
  return (strings as string[]).map((x) => tok.encode(x));
}

/** The library's generation settings: --stop encoded with the tokenizer. */
/** The generation settings; `stopIds`: the ids that end an answer (src/generate/stops.ts stopIdsOf). */
export function generationSettingsOf(g: GenerationConfig, tok: HfTokenizer, stopIds?: number[]): GenerationSettings {
  const { stop, ...rest } = g;
  return { ...rest, stopSequences: stopSequencesOf(stop, tok), ...(stopIds ? { stopIds } : {}) };
}

export function optimizerConfig(o: Parsed): OptimizerConfig {
  return choice(o, 'optim', ['rmsprop', 'adamw'] as const) === 'adamw'
    ? {
        type: 'adamw',
        beta1: num(o, 'adam_beta1'),
        beta2: num(o, 'adam_beta2'),
        eps: num(o, 'adam_epsilon'),
        weightDecay: num(o, 'weight_decay'),
      }
    : { type: 'rmsprop', alpha: num(o, 'rmsprop_alpha'), eps: num(o, 'adam_epsilon'), weightDecay: num(o, 'weight_decay') };
}

/** --lora_*: the LoRA settings (targets null: the family's default, known once the model is read), or undefined without --lora_r. */
export function loraOptionsOf(o: Parsed): LoraOptions | undefined {
  const r = optNum(o, 'lora_r');
  if (r === undefined) {
    const stray = ['lora_target_modules', 'use_rslora'].filter((k) => o[k] !== undefined && o[k] !== false);
    if (stray.length) throw new UsageError(`--${stray[0]} needs --lora_r (LoRA is off without a rank)`);
    return undefined;
  }
  const t = optStr(o, 'lora_target_modules');
  const list = t === undefined ? null : t.trim() === 'all-linear' ? 'all-linear' : t.split(',').map((x) => x.trim());
  return { r, alpha: num(o, 'lora_alpha'), dropout: num(o, 'lora_dropout'), useRslora: bool(o, 'use_rslora'), targetModules: list };
}

/** --lora_target_modules checked against the model's family (a UsageError naming the valid modules). */
export function checkLoraFor(lora: LoraOptions | undefined, family: ModelType): void {
  if (!lora) return;
  try {
    resolveLora(lora, family);
  } catch (e) {
    if (e instanceof RangeError) throw new UsageError(`--${e.message}`);
    throw e;
  }
}

/** The training loop (learning rate aside: a list, one per iteration); --fused_update's limits are checked here. */
export function loopConfig(o: Parsed, learningRate: number, dist = launchedByMpi()): LoopConfig {
  const maxGradNorm = num(o, 'max_grad_norm');
  const accumulation = num(o, 'gradient_accumulation_steps');
  const fusedUpdate = bool(o, 'fused_update');
  if (fusedUpdate) {
    const bad = [
      maxGradNorm > 0 &&
        `--max_grad_norm ${maxGradNorm} (clipping needs the global norm, known only after the whole backward: give --max_grad_norm 0)`,
      accumulation !== 1 &&
        `--gradient_accumulation_steps ${accumulation} (an update cannot wait for more micro-batches: give 1, and a larger --per_device_train_batch_size instead)`,
      (dist || (optNum(o, 'nproc') ?? 1) > 1) && 'data parallelism (ZeRO shards the gradients instead: --zero_stage 2)',
    ].filter(Boolean);
    if (bad.length) throw new UsageError(`--fused_update cannot go with ${bad.join('; nor with ')}`);
  }
  return {
    learningRate,
    optim: optimizerConfig(o),
    lrSchedulerType: choice(o, 'lr_scheduler_type', ['linear', 'cosine', 'constant'] as const),
    warmupRatio: num(o, 'warmup_ratio'),
    microBatchSize: num(o, 'per_device_train_batch_size'),
    maxTokensPerBatch: num(o, 'max_tokens_per_batch'),
    gradientAccumulationSteps: accumulation,
    numTrainEpochs: num(o, 'num_train_epochs'),
    maxGradNorm: maxGradNorm > 0 ? maxGradNorm : null,
    seed: num(o, 'seed'),
    saveSteps: num(o, 'save_steps'),
    gradientCheckpointing: bool(o, 'gradient_checkpointing'),
    computeDtype: choice(o, 'compute_dtype', ['auto', 'f32', 'bf16'] as const, 'auto'),
    fusedUpdate,
    lora: loraOptionsOf(o),
    dist: dist
      ? { group: processGroup(), zeroStage: Number(choice(o, 'zero_stage', ['0', '1', '2', '3'] as const, '0')) as ZeroStage }
      : undefined,
  };
}

/** The SPIN objective of one iteration (`spinlm train`: the first --beta). */
export function spinStageConfig(o: Parsed): SpinStageOptions {
  return {
    beta: nums(o, 'beta')[0],
    lossType: choice(o, 'loss_type', SPIN_LOSS_TYPES),
    nllAlpha: num(o, 'nll_alpha'),
    dropIdentical: bool(o, 'drop_identical_pairs'),
    lengthNormalized: bool(o, 'length_normalized'),
  };
}

/** The self-play settings `spinlm run` and each arm of `spinlm sweep` take from the same flags. */
export type SelfPlayFlags = Pick<
  SelfPlayOptions,
  | 'learningRates'
  | 'betas'
  | 'lossType'
  | 'nllAlpha'
  | 'dropIdentical'
  | 'lengthNormalized'
  | 'mixPrevious'
  | 'referenceModel'
  | 'opponentSamples'
  | 'loraMerge'
>;
export function selfPlayConfig(o: Parsed): SelfPlayFlags {
  const samples = optNum(o, 'opponent_samples') ?? 1;
  if (samples > 1 && !(num(o, 'temperature') > 0))
    throw new UsageError(
      `--opponent_samples ${samples} needs sampled answers: greedy answers (--temperature 0) are all the same; give --temperature 0.7 or 1.0`,
    );
  return {
    learningRates: nums(o, 'learning_rate'),
    betas: nums(o, 'beta'),
    lossType: choice(o, 'loss_type', SPIN_LOSS_TYPES),
    nllAlpha: num(o, 'nll_alpha'),
    dropIdentical: bool(o, 'drop_identical_pairs'),
    lengthNormalized: bool(o, 'length_normalized'),
    mixPrevious: bool(o, 'mix_previous_iteration'),
    referenceModel: choice(o, 'reference_model', ['previous', 'initial'] as const, 'previous'),
    opponentSamples: samples,
    loraMerge: choice(o, 'lora_merge', ['merge', 'stack'] as const, 'merge'),
  };
}

/** --device and --quiet, read before a command runs. */
export function deviceConfig(o: Parsed): { device: DeviceChoice; quiet: boolean } {
  return { device: choice(o, 'device', ['auto', ...DEVICES] as const, 'auto'), quiet: bool(o, 'quiet') };
}
