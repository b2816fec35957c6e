// Pieces the commands share: loading model + tokenizer, turning parsed options into library configs.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Backend, ComputeDtype, SpinLossType } from '../backend/backend.js';
import { cpuBackend } from '../backend/cpu/cpu_backend.js';
import { type BackendStatus, createBackend, type DeviceChoice, DeviceUnavailableError } from '../backend/registry.js';
import { type KvCacheDtype, LlamaDecoder } from '../model/decoder.js';
import { LlamaModel } from '../model/llama.js';
import type { TruncationOptions } from '../spin/batch.js';
import type { OptimizerConfig } from '../spin/optimizer.js';
import type { LoopConfig } from '../spin/train_loop.js';
import { defaultTemplate, type PromptTemplate } from '../text/templates.js';
import { type HfTokenizer, loadTokenizer } from '../text/tokenizer.js';
import type { Parsed } from './args.js';
import { launchedByMpi, processGroup } from '../dist/process_group.js';
import type { ZeroStage } from '../dist/zero.js';
import { UsageError } from './args.js';
import { type Input, prepareRunDir } from './run_dir.js';

let chosen: Backend | undefined;

/**
 * Picks the backend of a command from --device (before any work, so an unavailable device fails at
 * once with exit code 2). `auto` says on stderr which device it took and why the others were passed.
 */
export async function selectDevice(o: Parsed): Promise<Backend> {
  const choice = (o.device ?? 'auto') as DeviceChoice;
  let passedOver: BackendStatus[];
  try {
    const made = await createBackend(choice);
    chosen = made.backend;
    passedOver = made.passed;
  } catch (err) {
    if (err instanceof DeviceUnavailableError) throw new UsageError(`spinlm: ${err.message}`);
    throw err;
  }
  if (choice === 'auto' && !o.quiet) {
    const passed = passedOver.map((s) => `${s.name}: ${s.reason}`);
    process.stderr.write(`spinlm: --device auto chose ${chosen.name}${passed.length ? ` (${passed.join('; ')})` : ''}\n`);
  }
  return chosen;
}

/** The backend selectDevice chose (the CPU when none was chosen, e.g. in library use of the commands). */
export function backend(): Backend {
  chosen ??= cpuBackend();
  return chosen;
}

export async function loadModelAndTokenizer(o: Parsed): Promise<{ model: LlamaModel; tok: HfTokenizer; template: PromptTemplate }> {
  const dir = String(o.model);
  if (!existsSync(join(dir, 'config.json')))
    throw new UsageError(`--model ${dir}: no config.json there (expected a Hugging Face model directory)`);
  const tok = await loadTokenizer(dir);
  const dtype = o.dtype === 'auto' || o.dtype === undefined ? undefined : (o.dtype as 'f32' | 'bf16');
  const model = await LlamaModel.load(backend(), dir, { dtype });
  return { model, tok, template: resolveTemplate(o, tok) };
}

/** --compute_dtype, checked against the model's parameters: bf16 compute needs bf16 parameters. */
export function computeDtypeOf(o: Parsed, model: LlamaModel): ComputeDtype {
  const c = (o.compute_dtype ?? 'f32') as ComputeDtype;
  if (c === 'bf16' && model.weights.dtype !== 'bf16')
    throw new UsageError(
      `--compute_dtype bf16 needs bf16 parameters and ${String(o.model)} is loaded as ${model.weights.dtype}: add --dtype bf16, or leave --compute_dtype at f32`,
    );
  return c;
}

/** Generation's decoder: --kv_cache_dtype and --compute_dtype. */
export function decoderFor(o: Parsed, model: LlamaModel): LlamaDecoder {
  return new LlamaDecoder(model, o.kv_cache_dtype as KvCacheDtype, computeDtypeOf(o, model));
}

export function resolveTemplate(o: Parsed, tok: HfTokenizer): PromptTemplate {
  const t = (o.template ?? 'auto') as string;
  if (t === 'auto') return defaultTemplate(tok);
  if (t === 'chat' && tok.chatTemplate === null)
    throw new UsageError(`--template chat: the tokenizer in ${tok.dir} has no chat_template; use --template instruction`);
  return t as PromptTemplate;
}

/**
 * Truncation from the options and the model's context (max_position_embeddings): --max_length
 * defaults to the context and may not exceed it; --max_prompt_length defaults to
 * min(512, max_length / 2).
 */
export function truncation(o: Parsed, context?: number): TruncationOptions {
  const maxLength = o.max_length === undefined ? (context ?? 1024) : Number(o.max_length);
  if (context !== undefined && maxLength > context) {
    throw new UsageError(
      `--max_length ${maxLength} exceeds the model's context of ${context} tokens (max_position_embeddings in config.json); give --max_length ${context} or less`,
    );
  }
  const maxPromptLength = o.max_prompt_length === undefined ? Math.min(512, Math.floor(maxLength / 2)) : Number(o.max_prompt_length);
  if (maxPromptLength >= maxLength)
    throw new UsageError(`--max_prompt_length ${maxPromptLength} must be smaller than --max_length ${maxLength}`);
  return { maxLength, maxPromptLength, truncationMode: o.truncation_mode as 'keep_end' | 'keep_start' };
}

export function optimizer(o: Parsed): OptimizerConfig {
  return o.optim === 'adamw'
    ? {
        type: 'adamw',
        beta1: Number(o.adam_beta1),
        beta2: Number(o.adam_beta2),
        eps: Number(o.adam_epsilon),
        weightDecay: Number(o.weight_decay),
      }
    : { type: 'rmsprop', alpha: Number(o.rmsprop_alpha), eps: Number(o.adam_epsilon), weightDecay: Number(o.weight_decay) };
}

/** The self-play settings `spinlm run` and each arm of `spinlm sweep` take from the same flags. */
export function selfPlayFlags(o: Parsed) {
  const samples = Number(o.opponent_samples ?? 1);
  if (samples > 1 && !(Number(o.temperature) > 0))
    throw new UsageError(
      `--opponent_samples ${samples} needs sampled answers: greedy answers (--temperature 0) are all the same; give --temperature 0.7 or 1.0`,
    );
  return {
    learningRates: o.learning_rate as number[],
    betas: o.beta as number[],
    lossType: o.loss_type as SpinLossType,
    nllAlpha: Number(o.nll_alpha),
    dropIdentical: Boolean(o.drop_identical_pairs),
    lengthNormalized: Boolean(o.length_normalized),
    mixPrevious: Boolean(o.mix_previous_iteration),
    referenceModel: (o.reference_model ?? 'previous') as 'previous' | 'initial',
    opponentSamples: samples,
  };
}

export function loop(o: Parsed, learningRate: number): LoopConfig {
  if (o.fused_update) {
    const bad = [
      Number(o.max_grad_norm) > 0 &&
        `--max_grad_norm ${o.max_grad_norm} (clipping needs the global norm, known only after the whole backward: give --max_grad_norm 0)`,
      Number(o.gradient_accumulation_steps) !== 1 &&
        `--gradient_accumulation_steps ${o.gradient_accumulation_steps} (an update cannot wait for more micro-batches: give 1, and a larger --per_device_train_batch_size instead)`,
      (launchedByMpi() || Number(o.nproc ?? 1) > 1) && 'data parallelism (ZeRO shards the gradients instead: --zero_stage 2)',
    ].filter(Boolean);
    if (bad.length) throw new UsageError(`--fused_update cannot go with ${bad.join('; nor with ')}`);
  }
  return {
    learningRate,
    optim: optimizer(o),
    lrSchedulerType: o.lr_scheduler_type as LoopConfig['lrSchedulerType'],
    warmupRatio: Number(o.warmup_ratio),
    microBatchSize: Number(o.per_device_train_batch_size),
    gradientAccumulationSteps: Number(o.gradient_accumulation_steps),
    numTrainEpochs: Number(o.num_train_epochs),
    maxGradNorm: Number(o.max_grad_norm) > 0 ? Number(o.max_grad_norm) : null,
    seed: Number(o.seed),
    saveSteps: Number(o.save_steps),
    gradientCheckpointing: Boolean(o.gradient_checkpointing),
    fusedUpdate: Boolean(o.fused_update),
    dist: launchedByMpi() ? { group: processGroup(), zeroStage: Number(o.zero_stage ?? 0) as ZeroStage } : undefined,
  };
}

/** Rank 0 of a data-parallel run, or a single process: the one that writes outputs. */
export function isMain(): boolean {
  return !launchedByMpi() || processGroup().isMain;
}

/** Waits for every rank (a no-op in one process). */
export function barrier(): void {
  if (launchedByMpi()) processGroup().barrier();
}

/**
 * Before a directory-writing command works: refuses outputs that overlap inputs, creates and locks
 * the directory, checks the fingerprint of a run to resume, cuts metrics.jsonl back to the
 * checkpoints and writes the resolved options beside the outputs (src/cli/run_dir.ts).
 */
export async function prepareOut(command: string, o: Parsed, inputs: (keyof Parsed)[], layout: 'run' | 'single'): Promise<void> {
  const given: Input[] = inputs.filter((k) => typeof o[k] === 'string').map((k) => ({ flag: String(k), path: String(o[k]) }));
  // data parallel: rank 0 prepares (and locks) the directory, the others wait for it
  if (isMain()) await prepareRunDir(command, o, given, layout);
  barrier();
}

export const fmt = (x: number, d = 4) => (Number.isFinite(x) ? x.toFixed(d) : String(x));

/** --stop as token sequences: one string, or a JSON list of strings. */
export function stopSequences(o: Parsed, tok: { encode(s: string): number[] }): number[][] | undefined {
  if (o.stop === undefined) return undefined;
  const raw = String(o.stop);
  let list: unknown = raw;
  if (raw.trim().startsWith('[')) {
    try {
      list = JSON.parse(raw);
    } catch {
      throw new UsageError(`--stop: ${raw} is not a JSON list of strings`);
    }
  }
  const strings = Array.isArray(list) ? list : [list];
  if (strings.some((x) => typeof x !== 'string' || x.length === 0)) throw new UsageError('--stop: expected non-empty strings');
  return (strings as string[]).map((x) => tok.encode(x));
}
