// The self-play driver (docs/algorithm.md): per iteration t, the opponent θ_t answers every SFT
// prompt, its reference log-probs are computed once, θ_{t+1} is trained from θ_t, saved, evaluated,
// and becomes the next opponent. Every stage leaves a file when it completes, so a rerun after a
// kill skips what is done, resumes training from its last step checkpoint, and ends with the same
// weights as an uninterrupted run.
//
//   outDir/iter-t/generated.json   answers of θ_t to the prompts (stage 1)
//   outDir/iter-t/ref_logps.json   S(θ_t, .) of the training pairs (stage 2), with
//                 ref_logps.fingerprint.json: the pairs it scores (a digest of their token ids)
//   outDir/iter-t/checkpoint/      step checkpoints while training (stage 3)
//   outDir/iter-t/model/           θ_{t+1}, Hugging Face format, renamed into place when complete (stage 4)
//   outDir/iter-t/adapter/         with LoRA: the iteration's adapter in PEFT's files (stage 4, before model/);
//                                  model/ is then θ_t with it merged (docs/lora.md, "Self-play")
//   outDir/iter-t/eval.json        evaluation of θ_{t+1} (stage 5)
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Backend, ComputeDtype, SpinLossType } from '../backend/backend.js';
import { detachAdapter, loadAdapter, mergeOwnAdapter, saveAdapter } from '../model/adapter.js';
import { LlamaModel } from '../model/llama.js';
import { mergeAdapterIntoWeights } from '../model/lora_merge.js';
import { readPeftAdapter } from '../model/peft.js';
import { saveDerivedModel } from '../model/side_files.js';
import type { HfTokenizer } from '../text/tokenizer.js';
import { formatPrompt, type PromptSource, type PromptTemplate } from '../text/templates.js';
import { makeDirs, writeFileAtomic } from '../util/atomic.js';
import { checkTruncation, type TokenizedPair, type TruncationOptions } from './batch.js';
import { tokenizeChatPair, tokenizeChatSft } from './prompt_tokens.js';
import { referenceLogps, SftObjective, SpinObjective } from './objectives.js';
import { padIdOf } from './sft.js';
import { type LoopConfig, runTrainingLoop, type StepLog, trainingComputeDtype } from './train_loop.js';
import { shardByItem } from '../dist/shard.js';

export type Arm = 'spin' | 'sft';

export interface SelfPlayOptions {
  outDir: string;
  iterations: number;
  /** 'spin': the SPIN loss (with nllAlpha > 0: plus an NLL term); 'sft': continued SFT on the real answers, same steps. */
  arm: Arm;
  /** Per iteration (the last value repeats): the paper's 5e-7, 5e-7, 1e-7, 1e-7. */
  learningRates: number[];
  /** Per iteration (the last value repeats): the paper's 0.1, 0.1, 0.1, 5.0. */
  betas: number[];
  lossType: SpinLossType;
  nllAlpha: number;
  dropIdentical: boolean;
  /** Log-probs divided by the answer's token count (policy and reference). */
  lengthNormalized: boolean;
  /** Train iteration t >= 1 on the generated data of t-1 and t (official). */
  mixPrevious: boolean;
  /** Reference of iteration t: 'previous' = the opponent θ_t (the paper), 'initial' = θ0 in every iteration. */
  referenceModel: 'previous' | 'initial';
  /**
   * Answers sampled per prompt (k >= 1): the opponent's answer is the first of the k that differs
   * from the real answer (the first sample when all equal it). k > 1 needs sampling, not greedy.
   */
  opponentSamples: number;
  loop: Omit<LoopConfig, 'learningRate'>;
  truncation: TruncationOptions;
  template: PromptTemplate;
  /** Parameter dtype every model of the run is loaded in (--dtype); undefined: as stored. */
  paramDtype?: 'f32' | 'bf16';
  /**
   * A PEFT adapter that θ0 carries (--adapter): θ0 is the initial model plus it, unmerged, and iteration
   * 0 trains it further (its own reference: never "adapter off").
   */
  initialAdapter?: string;
  /**
   * With LoRA, how θ_{t+1} is made from the iteration's adapter: 'merge' (default): θ_t + s B A, rounded
   * once to the stored dtype; 'stack': the untouched θ0 plus the sum of every adapter so far (the initial
   * one trained further by iteration 0), in float64, rounded once, so no rounding accumulates across iterations.
   */
  loraMerge?: LoraMergeMode;
}

export type LoraMergeMode = 'merge' | 'stack';

export interface SelfPlayHooks {
  /**
   * The opponent's answers to `prompts` (templated text in, answer text out), written resumably to
   * `file`. `sample` (0 .. opponentSamples-1) numbers the independent draws of one iteration: draw
   * s must use its own random streams (answerPrompts' streamOffset = s x prompts.length).
   */
  generate(model: LlamaModel, prompts: readonly string[], iteration: number, file: string, sample: number): Promise<string[]>;
  /** Evaluation of a freshly trained model (e.g. held-out exact match and log-prob). */
  evaluate?(model: LlamaModel, iteration: number): Promise<Record<string, unknown>>;
  onStep?(iteration: number, log: StepLog): void | Promise<void>;
  /** 'generate' | 'reference' | 'train' | 'save' | 'evaluate', when a stage starts (not when skipped). */
  onStage?(iteration: number, stage: string): void;
  /** Test hook: throwing here simulates a crash after a training step. */
  afterStep?(iteration: number, step: number): void;
}

const pick = (xs: readonly number[], t: number, what: string) => {
  if (xs.length === 0) throw new RangeError(`${what} needs at least one value`);
  return xs[Math.min(t, xs.length - 1)];
};

/** A stage's output file; a damaged one (not JSON) is named, with the fix. */
async function readJson<T>(file: string): Promise<T> {
  const text = await readFile(file, 'utf8');
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new Error(`${file}: damaged, not valid JSON (${(e as Error).message}); delete it and rerun to compute it again`, { cause: e });
  }
}

export function iterationDir(outDir: string, t: number): string {
  return join(outDir, `iter-${t}`);
}

// ---- the stages, shared by runSelfPlay and `spinlm train` (one SPIN iteration from a pair file) ----

/** The SPIN objective's settings for one iteration. */
export interface SpinStageOptions {
  beta: number;
  lossType: SpinLossType;
  nllAlpha: number;
  dropIdentical: boolean;
  lengthNormalized: boolean;
}

/**
 * The opponent's answer per prompt from k draws (samples[s][i]: draw s for prompt i): the first draw
 * that differs from the real answer, else draw 0. A pair whose two sides are equal carries no
 * gradient in the SPIN loss, so choosing a differing draw keeps the prompt in play.
 */
export function chooseOpponentAnswers(samples: readonly (readonly string[])[], reals: readonly string[]): string[] {
  return reals.map((real, i) => samples.find((draw) => draw[i] !== real)?.[i] ?? samples[0][i]);
}

/**
 * Stage 2: S(model, .) of the real and generated answers of every pair ([2N]: real then generated),
 * computed once and kept in `file`; a rerun reads the file instead.
 */
export async function referenceStage(
  model: LlamaModel,
  pairs: readonly TokenizedPair[],
  tok: HfTokenizer,
  loop: Pick<LoopConfig, 'microBatchSize' | 'maxTokensPerBatch' | 'seed' | 'dist' | 'computeDtype'>,
  file: string,
  onProgress?: (done: number, total: number) => void,
): Promise<Float32Array> {
  // in the arithmetic the training will run in: the first training forward reproduces these bit for bit
  if (loop.computeDtype !== undefined) model.computeDtype = trainingComputeDtype(loop.computeDtype, model.backend);
  // data parallel: the ranks agree on whether the file is there (one of them may see it before
  // another, or not at all without a shared file system), then score their share of the batches
  const group = loop.dist?.group;
  const have = new Int32Array([existsSync(file) ? 1 : 0]);
  if (group && group.size > 1) group.allReduceHost(have, 'min');
  // the file's fingerprint beside it: the token ids of the pairs it scores, in order (a file without
  // one, from an earlier spinlm, is vouched for by its directory's fingerprint)
  const keyFile = `${file.replace(/\.json$/, '')}.fingerprint.json`;
  const key = referenceKey(pairs, loop.microBatchSize, loop.maxTokensPerBatch ?? 0, model.computeDtype);
  if (have[0]) {
    if (existsSync(keyFile)) {
      const was = await readJson<typeof key>(keyFile);
      const diffs = [];
      if (was.pairs !== key.pairs) diffs.push(`the pairs differ (${was.count} before, ${key.count} now)`);
      if (was.micro_batch_size !== key.micro_batch_size)
        diffs.push(`micro_batch_size (was ${was.micro_batch_size}, now ${key.micro_batch_size})`);
      if ((was.max_tokens_per_batch ?? 0) !== key.max_tokens_per_batch)
        diffs.push(`max_tokens_per_batch (was ${was.max_tokens_per_batch ?? 0}, now ${key.max_tokens_per_batch})`);
      if (was.layout !== key.layout) diffs.push(`the batch layout (was ${was.layout ?? 'padded rows'}, now ${key.layout})`);
      // the first training forward reproduces the reference bit for bit only in the same arithmetic
      if ((was.compute_dtype ?? 'f32') !== key.compute_dtype)
        diffs.push(`compute_dtype (was ${was.compute_dtype ?? 'f32'}, now ${key.compute_dtype})`);
      if (diffs.length)
        throw new Error(`${file}: reference log-probs of another run: ${diffs.join('; ')}; delete it and ${keyFile} to recompute`);
    }
    const ref = Float32Array.from(await readJson<number[]>(file));
    if (ref.length !== 2 * pairs.length)
      throw new Error(
        `${file}: holds ${ref.length} log-probs but there are ${pairs.length} pairs (${2 * pairs.length} expected); remove it to recompute`,
      );
    return ref;
  }
  const ref = await referenceLogps(model, pairs, {
    microBatchSize: loop.microBatchSize,
    maxTokensPerBatch: loop.maxTokensPerBatch,
    seed: loop.seed,
    eosId: tok.eosId,
    padId: padIdOf(tok),
    onProgress,
    group,
  });
  if (!group || group.isMain) {
    await writeFileAtomic(keyFile, `${JSON.stringify(key)}\n`);
    await writeFileAtomic(file, JSON.stringify(Array.from(ref)));
  }
  group?.barrier();
  return ref;
}

/** What reference log-probs are of: a digest of the pairs' token ids (in order), the micro-batch size, the arithmetic. */
function referenceKey(pairs: readonly TokenizedPair[], microBatchSize: number, maxTokensPerBatch: number, computeDtype: ComputeDtype) {
  const h = createHash('sha256');
  for (const p of pairs) h.update(JSON.stringify([p.real.prompt, p.real.answer, p.generated.prompt, p.generated.answer]));
  // the layout and the token budget decide which pairs share a forward pass, hence the last bits
  return {
    pairs: `sha256 ${h.digest('hex')}`,
    count: pairs.length,
    micro_batch_size: microBatchSize,
    max_tokens_per_batch: maxTokensPerBatch,
    layout: 'packed pairs' as string | undefined,
    // the forward's arithmetic (a file without it, from an earlier spinlm, was computed in f32)
    compute_dtype: computeDtype as ComputeDtype | undefined,
  };
}

/** Stage 3 (SPIN): trains `model` in place on the pairs against the reference log-probs; resumes from `checkpointDir`. */
export async function spinTrainStage(
  model: LlamaModel,
  pairs: readonly TokenizedPair[],
  ref: Float32Array,
  tok: HfTokenizer,
  spin: SpinStageOptions,
  loop: LoopConfig,
  checkpointDir: string,
  hooks: { onStep?: (log: StepLog) => void | Promise<void>; afterStep?: (step: number) => void } = {},
): Promise<void> {
  const padId = padIdOf(tok);
  const obj = new SpinObjective(model, pairs, ref, { ...spin, eosId: tok.eosId, padId });
  await runTrainingLoop(model, pairs.length, obj, loop, { checkpointDir, onStep: hooks.onStep, afterStep: hooks.afterStep });
}

/** With LoRA, where stage 4 writes the adapter and how it makes the model (docs/lora.md, "Self-play"). */
export interface AdapterStage {
  /** The adapter's directory (PEFT files), written before the model. */
  adapterDir: string;
  /** 'stack': the model is `stack.base` (untouched) plus these adapters and this one, merged as one sum. */
  stack?: { base: string; adapters: readonly string[]; paramDtype?: 'f32' | 'bf16' };
}

/** Writes `dir` complete or not at all: `write(tmp)` into a temp dir renamed into place. */
async function writeDirAtomically(dir: string, write: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = `${dir}.tmp`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  await write(tmp);
  await rm(dir, { recursive: true, force: true });
  await rename(tmp, dir);
}

/**
 * Stage 4: writes `model` (Hugging Face format) to `modelDir` with the config.json and side files of
 * the model it was trained from (`sourceDir`; src/model/side_files.ts), complete or not at all (a temp
 * dir renamed into place), then removes `checkpointDir`. A model that carries a LoRA adapter first
 * writes it as PEFT files to `lora.adapterDir` (base_model_name_or_path: sourceDir), then the model
 * with the adapter merged (W + s B A in float64, one rounding; 'stack': the untouched base plus every
 * adapter of the stack); the adapter is taken off `model`.
 */
export async function saveModelStage(
  model: LlamaModel,
  modelDir: string,
  sourceDir: string,
  checkpointDir: string,
  lora?: AdapterStage,
): Promise<void> {
  if (model.weights.lora) {
    if (!lora) throw new Error('saveModelStage: the model carries a LoRA adapter: say where to write it');
    await writeDirAtomically(lora.adapterDir, (tmp) => saveAdapter(model, tmp, sourceDir));
    if (lora.stack) {
      const { base, adapters, paramDtype } = lora.stack;
      const stacked = await LlamaModel.load(model.backend, base, { dtype: paramDtype });
      try {
        const all = [];
        for (const dir of [...adapters, lora.adapterDir]) all.push(await readPeftAdapter(dir, stacked.cfg));
        await mergeAdapterIntoWeights(stacked.weights, stacked.cfg, ...all);
        await writeDirAtomically(modelDir, (tmp) => saveDerivedModel(stacked, tmp, { dir: sourceDir }));
      } finally {
        stacked.weights.free();
      }
      await detachAdapter(model);
    } else {
      await mergeOwnAdapter(model);
      await writeDirAtomically(modelDir, (tmp) => saveDerivedModel(model, tmp, { dir: sourceDir }));
    }
  } else await writeDirAtomically(modelDir, (tmp) => saveDerivedModel(model, tmp, { dir: sourceDir }));
  await rm(checkpointDir, { recursive: true, force: true });
}

/** Runs (or resumes) the iterations; returns the directory of the final model. */
export async function runSelfPlay(
  be: Backend,
  initialModel: string,
  tok: HfTokenizer,
  sft: readonly (PromptSource & { real: string })[],
  opts: SelfPlayOptions,
  hooks: SelfPlayHooks,
): Promise<string> {
  checkTruncation(opts.truncation);
  if (!Number.isSafeInteger(opts.iterations) || opts.iterations < 1)
    throw new RangeError(`iterations must be a positive integer, got ${opts.iterations}`);
  if (sft.length === 0) throw new RangeError('no SFT pairs to play on');
  const padId = padIdOf(tok);
  const prompts = sft.map((p) => formatPrompt(tok, opts.template, p));
  let current = initialModel;
  const generated: string[][] = [];
  // data parallel (opts.loop.dist): answers sharded by prompt (one journal per rank), rank 0 writes the model
  const group = opts.loop.dist?.group;
  // θ0's adapter's settings: the fresh adapters of later iterations take them when --lora_r is not given
  let initialLora: LoopConfig['lora'];
  for (let t = 0; t < opts.iterations; t++) {
    const dir = iterationDir(opts.outDir, t);
    await makeDirs(dir);
    const modelDir = join(dir, 'model');
    const done = existsSync(join(modelDir, 'config.json'));
    const opponent = await LlamaModel.load(be, current, { dtype: opts.paramDtype });
    try {
      // θ0 with its adapter (--adapter): the opponent, the reference and the start of training alike
      if (t === 0 && opts.initialAdapter) initialLora = (await loadAdapter(opponent, opts.initialAdapter)).lora;
      // 1. the opponent answers every prompt (the arm 'sft' needs no answers, but keeps the same data)
      const genFile = join(dir, 'generated.json');
      if (existsSync(genFile)) generated[t] = await readJson<string[]>(genFile);
      else if (opts.arm === 'sft') generated[t] = sft.map(() => '');
      else {
        hooks.onStage?.(t, 'generate');
        // one journal per draw (and per rank): generated.partial, generated.partial.s1, ...
        const journal = (s: number) => {
          const f = join(dir, s === 0 ? 'generated.partial' : `generated.partial.s${s}`);
          return group ? `${f}.rank-${group.rank}-of-${group.size}` : f;
        };
        const draws: string[][] = [];
        for (let s = 0; s < opts.opponentSamples; s++)
          draws.push(
            group
              ? await shardByItem(group, prompts, (mine) => hooks.generate(opponent, mine, t, journal(s), s))
              : await hooks.generate(opponent, prompts, t, journal(s), s),
          );
        generated[t] =
          draws.length === 1
            ? draws[0]
            : chooseOpponentAnswers(
                draws,
                sft.map((p) => p.real),
              );
        await writeFileAtomic(genFile, JSON.stringify(generated[t]));
        for (let s = 0; s < opts.opponentSamples; s++) await rm(journal(s), { force: true });
      }
      if (!done) {
        // the training pairs of iteration t: this iteration's answers, plus the previous ones (official mixing)
        const rows = sft.map((p, i) => ({ ...p, generated: generated[t][i] }));
        if (t > 0 && opts.mixPrevious) rows.push(...sft.map((p, i) => ({ ...p, generated: generated[t - 1][i] })));
        const loop: LoopConfig = {
          ...opts.loop,
          lora: opts.loop.lora ?? initialLora,
          learningRate: pick(opts.learningRates, t, 'learning_rate'),
          seed: opts.loop.seed + t,
        };
        if (opts.arm === 'spin') {
          const pairs = rows.map((r, i) =>
            tokenizeChatPair(tok, opts.template, r, r.real, r.generated, opts.truncation, `prompt ${(i % sft.length) + 1}`),
          );
          // 2. reference log-probs, once: of θ_t (the paper), or of θ0 with a fixed reference
          const refFile = join(dir, 'ref_logps.json');
          if (!existsSync(refFile)) hooks.onStage?.(t, 'reference');
          const fixed = opts.referenceModel === 'initial' && t > 0 && !existsSync(refFile);
          const refModel = fixed ? await LlamaModel.load(be, initialModel, { dtype: opts.paramDtype }) : opponent;
          if (fixed && opts.initialAdapter) await loadAdapter(refModel, opts.initialAdapter);
          let ref: Float32Array;
          try {
            ref = await referenceStage(refModel, pairs, tok, loop, refFile);
          } finally {
            if (fixed) refModel.weights.free();
          }
          hooks.onStage?.(t, 'train');
          const spin = {
            beta: pick(opts.betas, t, 'beta'),
            lossType: opts.lossType,
            nllAlpha: opts.nllAlpha,
            dropIdentical: opts.dropIdentical,
            lengthNormalized: opts.lengthNormalized,
          };
          await spinTrainStage(opponent, pairs, ref, tok, spin, loop, join(dir, 'checkpoint'), {
            onStep: (l) => hooks.onStep?.(t, l),
            afterStep: (s) => hooks.afterStep?.(t, s),
          });
        } else {
          const seqs = rows.map((r, i) =>
            tokenizeChatSft(tok, opts.template, r, r.real, opts.truncation, `prompt ${(i % sft.length) + 1}`),
          );
          hooks.onStage?.(t, 'train');
          await runTrainingLoop(opponent, seqs.length, new SftObjective(opponent, seqs, tok.eosId, padId), loop, {
            checkpointDir: join(dir, 'checkpoint'),
            onStep: (l) => hooks.onStep?.(t, l),
            afterStep: (s) => hooks.afterStep?.(t, s),
          });
        }
        // 4. θ_{t+1}, complete or not at all
        hooks.onStage?.(t, 'save');
        // with LoRA: iter-t/adapter, then θ_{t+1} with it merged (or the stack over the untouched θ0)
        const adapterStage: AdapterStage = { adapterDir: join(dir, 'adapter') };
        if (opts.loraMerge === 'stack')
          adapterStage.stack = {
            base: initialModel,
            // iteration 0's adapter is the initial one (--adapter) trained further: it replaces it in the stack
            adapters: Array.from({ length: t }, (_, i) => join(iterationDir(opts.outDir, i), 'adapter')),
            paramDtype: opts.paramDtype,
          };
        if (!group || group.isMain) await saveModelStage(opponent, modelDir, current, join(dir, 'checkpoint'), adapterStage);
        group?.barrier();
      }
    } finally {
      opponent.weights.free();
    }
    // 5. evaluation of θ_{t+1}
    const evalFile = join(dir, 'eval.json');
    if (hooks.evaluate && !existsSync(evalFile)) {
      hooks.onStage?.(t, 'evaluate');
      const trained = await LlamaModel.load(be, modelDir, { dtype: opts.paramDtype });
      try {
        const r = await hooks.evaluate(trained, t);
        if (!group || group.isMain) await writeFileAtomic(evalFile, JSON.stringify(r, null, 2));
        group?.barrier();
      } finally {
        trained.weights.free();
      }
    }
    current = modelDir;
  }
  return current;
}
