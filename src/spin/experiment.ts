// The experiment runner behind `spinlm run` (one run), `spinlm demo` (three arms, one seed) and
// `spinlm sweep` (arms x seeds): θ0 is evaluated once, then each run plays its self-play iterations
// from θ0 with runSelfPlay (src/spin/self_play.ts), its opponent answering with the run's generation
// settings, and its evaluations are read back from the eval.json files. Every stage leaves a file, so
// a rerun (after a kill, or with more runs) resumes where each run stopped. Directories:
//
//   run:    OUT/iter-t/...                     (runSelfPlay's layout: generated.json, ref_logps.json,
//   demo:   OUT/theta0/, OUT/ARM/iter-t/...     checkpoint/, model/, eval.json)
//   sweep:  OUT/theta0/eval.json, OUT/ARM/seed-S/iter-t/...
//
// The runner prints nothing: it reports through ExperimentEvents, which the CLI fills in.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Backend, ComputeDtype } from '../backend/backend.js';
import { answerPrompts } from '../generate/answers.js';
import { GREEDY } from '../generate/sampler.js';
import { type KvCacheDtype, LlamaDecoder } from '../model/decoder.js';
import { DivergenceError } from '../model/divergence.js';
import { LlamaModel } from '../model/llama.js';
import type { HfTokenizer } from '../text/tokenizer.js';
import { makeDirs, writeFileAtomic } from '../util/atomic.js';
import { iterationDir, runSelfPlay, type SelfPlayHooks, type SelfPlayOptions } from './self_play.js';
import type { StepLog } from './train_loop.js';

/** How the opponent answers (every run's generation is built from these, in one place: opponentHook). */
export interface GenerationSettings {
  temperature: number;
  topP: number;
  topK: number;
  maxNewTokens: number;
  /** Prompts decoded together. */
  batchSize: number;
  stopSequences?: number[][];
  /** Ids that end an answer besides the tokenizer's EOS (src/generate/stops.ts). */
  stopIds?: number[];
  kvCacheDtype: KvCacheDtype;
  computeDtype: ComputeDtype;
}

/** The demo's generation (docs/demo.md): greedy answers of at most 32 tokens, 64 prompts at a time. */
export const DEMO_GENERATION: GenerationSettings = {
  ...GREEDY,
  maxNewTokens: 32,
  batchSize: 64,
  kvCacheDtype: 'auto',
  computeDtype: 'f32',
};

/** A progress display the caller hands out (a bar in the CLI); the runner only updates and stops it. */
export interface Progress {
  update(done: number, extra?: Record<string, string>): void;
  stop(): void;
}

/** One self-play run of an experiment: an arm's settings with a seed, in its own directory. */
export interface ExperimentRun {
  /** The arm's name (a directory name in a sweep or the demo). */
  arm: string;
  seed: number;
  /** Its directory (runSelfPlay's outDir): see runDirOf / the layout above. */
  dir: string;
  selfPlay: Omit<SelfPlayOptions, 'outDir' | 'iterations'>;
  generation: GenerationSettings;
  /** Iteration t's answers sample with seed generationSeed + t (greedy answers use no seed). */
  generationSeed: number;
}

/** What the runner reports; every callback is optional. */
export interface ExperimentEvents {
  /** A run starts (or resumes): its directory exists. */
  onRunStart?(run: ExperimentRun): void | Promise<void>;
  /** A stage of an iteration starts ('generate' | 'reference' | 'train' | 'save' | 'evaluate'; skipped stages are not reported). */
  onStage?(run: ExperimentRun, iteration: number, stage: string): void;
  onStep?(run: ExperimentRun, iteration: number, log: StepLog): void | Promise<void>;
  /** A progress display for the opponent's draw `sample` over `total` prompts. */
  generationProgress?(run: ExperimentRun, iteration: number, sample: number, total: number): Progress;
  /** Test hook (fault injection): called after each training step. */
  afterStep?(run: ExperimentRun, iteration: number, step: number): void;
  /** A run has played all its iterations. */
  onRunDone?(run: ExperimentRun): void | Promise<void>;
  /**
   * A run diverged (its training stopped on a non-finite loss, gradient norm or weight; now, or on an
   * earlier try: `before`). Given, the runner records it in the run's diverged.json and goes on with
   * the other runs; absent, the DivergenceError stops the experiment.
   */
  onRunDiverged?(run: ExperimentRun, failure: RunFailure, before: boolean): void | Promise<void>;
}

/** What a diverged run left in its directory (diverged.json): the iteration and the guard's message. */
export interface RunFailure {
  iteration: number;
  message: string;
}

/** A run's record of its divergence (a rerun skips such a run: its training is deterministic and would diverge again). */
export const DIVERGED_FILE = 'diverged.json';

/** A run's divergence record, or null. */
export async function readRunFailure(dir: string): Promise<RunFailure | null> {
  const file = join(dir, DIVERGED_FILE);
  return existsSync(file) ? (JSON.parse(await readFile(file, 'utf8')) as RunFailure) : null;
}

export interface Experiment {
  backend: Backend;
  /** θ0: a Hugging Face model directory, every run's starting point. */
  theta0: string;
  tokenizer: HfTokenizer;
  /** The SFT prompts and real answers, answered by the opponent every iteration. */
  prompts: readonly { prompt: string; real: string }[];
  iterations: number;
  /** The runs, in the order they are played. */
  runs: readonly ExperimentRun[];
  /** Evaluation of the model after an iteration of a run (stored in its iter-t/eval.json). */
  evaluate?(model: LlamaModel, run: ExperimentRun, iteration: number): Promise<Record<string, unknown>>;
}

/** A run's directory in a sweep: OUT/ARM/seed-S. */
export const runDirOf = (out: string, arm: string, seed: number): string => join(out, arm, `seed-${seed}`);

/** The opponent's generate hook for runSelfPlay, from a run's generation settings. */
export function opponentHook(
  tok: HfTokenizer,
  g: GenerationSettings,
  seed: number,
  progress?: (iteration: number, sample: number, total: number) => Progress,
): SelfPlayHooks['generate'] {
  return async (model, prompts, t, file, sample) => {
    const bar = progress?.(t, sample, prompts.length);
    try {
      return await answerPrompts(new LlamaDecoder(model, g.kvCacheDtype, g.computeDtype), tok, prompts, {
        temperature: g.temperature,
        topP: g.topP,
        topK: g.topK,
        maxNewTokens: g.maxNewTokens,
        seed: seed + t,
        streamOffset: sample * prompts.length,
        batchSize: g.batchSize,
        stopSequences: g.stopSequences,
        stopIds: g.stopIds,
        journal: file,
        // a journal of an earlier spinlm: the run directory's fingerprint vouches for it
        adoptUnmarkedJournal: true,
        onProgress: bar ? (d) => bar.update(d) : undefined,
      });
    } finally {
      bar?.stop();
    }
  };
}

/**
 * θ0's evaluation, computed once: with `file`, it is kept there and read back on a rerun (a sweep's
 * OUT/theta0/eval.json); without, it is computed every time (the demo's iteration 0).
 */
export async function evaluateTheta0<E>(
  be: Backend,
  theta0: string,
  evaluate: (model: LlamaModel) => Promise<E>,
  file?: string,
): Promise<E> {
  if (file && existsSync(file)) return JSON.parse(await readFile(file, 'utf8')) as E;
  const model = await LlamaModel.load(be, theta0);
  try {
    const e = await evaluate(model);
    if (file) {
      await makeDirs(dirname(file));
      await writeFileAtomic(file, JSON.stringify(e, null, 2));
    }
    return e;
  } finally {
    model.weights.free();
  }
}

/** Plays (or resumes) one run; returns the directory of its final model. */
export async function runOne(x: Experiment, run: ExperimentRun, events: ExperimentEvents = {}): Promise<string> {
  await makeDirs(run.dir);
  await events.onRunStart?.(run);
  const final = await runSelfPlay(
    x.backend,
    x.theta0,
    x.tokenizer,
    x.prompts,
    { ...run.selfPlay, outDir: run.dir, iterations: x.iterations, loop: { ...run.selfPlay.loop, seed: run.seed } },
    {
      generate: opponentHook(
        x.tokenizer,
        run.generation,
        run.generationSeed,
        events.generationProgress && ((t, s, n) => events.generationProgress!(run, t, s, n)),
      ),
      evaluate: x.evaluate && ((m, t) => x.evaluate!(m, run, t)),
      onStep: (t, l) => events.onStep?.(run, t, l),
      onStage: (t, s) => events.onStage?.(run, t, s),
      afterStep: (t, s) => events.afterStep?.(run, t, s),
    },
  );
  await events.onRunDone?.(run);
  return final;
}

/** Plays (or resumes) every run of the experiment in order; returns their final model directories. */
export async function runExperiment(x: Experiment, events: ExperimentEvents = {}): Promise<string[]> {
  const finals: string[] = [];
  for (const run of x.runs) {
    const diverged = events.onRunDiverged;
    const failed = diverged ? await readRunFailure(run.dir) : null;
    if (diverged && failed) {
      await diverged(run, failed, true);
      continue;
    }
    let iteration = 0;
    const tracked: ExperimentEvents = {
      ...events,
      onStage: (r, t, s) => {
        iteration = t;
        events.onStage?.(r, t, s);
      },
    };
    try {
      finals.push(await runOne(x, run, tracked));
    } catch (err) {
      if (!diverged || !(err instanceof DivergenceError)) throw err;
      const failure: RunFailure = { iteration, message: err.message };
      await writeFileAtomic(join(run.dir, DIVERGED_FILE), `${JSON.stringify(failure, null, 2)}\n`);
      await diverged(run, failure, false);
    }
  }
  return finals;
}

/** A run's evaluations, iteration by iteration (iter-t/eval.json; null where there is none yet). */
export async function readRunEvals<E = Record<string, unknown>>(dir: string, iterations: number): Promise<(E | null)[]> {
  const out: (E | null)[] = [];
  for (let t = 0; t < iterations; t++) {
    const file = join(iterationDir(dir, t), 'eval.json');
    out.push(existsSync(file) ? (JSON.parse(await readFile(file, 'utf8')) as E) : null);
  }
  return out;
}
