// The optimizer loop shared by SPIN and SFT training: epochs over a seeded shuffle, micro-batches with
// gradient accumulation, a warm-up + decay schedule, clipping, metrics per optimizer step, and step
// checkpoints that a rerun resumes from. What a micro-batch computes is the Objective's business.
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { LlamaModel } from '../model/llama.js';
import { openSafetensors, writeSafetensors } from '../model/safetensors.js';
import type { Tensor } from '../tensor/tensor.js';
import { writeFileAtomic } from '../util/atomic.js';
import { Rng } from '../util/rng.js';
import { Optimizer, type OptimizerConfig, type Parameter } from './optimizer.js';
import { lrMultiplier, type ScheduleType, warmupSteps } from './schedule.js';
import * as ops from '../ops/index.js';

export interface LoopConfig {
  learningRate: number;
  optim: OptimizerConfig;
  lrSchedulerType: ScheduleType;
  warmupRatio: number;
  /** Items per micro-batch (per_device_train_batch_size). */
  microBatchSize: number;
  gradientAccumulationSteps: number;
  numTrainEpochs: number;
  /** Clip the global gradient norm to this (null: no clipping). */
  maxGradNorm: number | null;
  seed: number;
  /** Write a resumable checkpoint every this many optimizer steps (0: only at the end of an epoch). */
  saveSteps: number;
}

export interface Objective {
  /** Names of the metrics microStep accumulates, in the order of its metrics tensor. */
  readonly metricNames: readonly string[];
  /**
   * Forward + backward of one micro-batch, issued on the device with no host read: gradients are
   * accumulated scaled by `weight` (the micro-batch's share of the window's items), and `metrics`
   * f32 [metricNames.length] gets weight x the micro-batch's metric means added. Returns the
   * non-padding tokens it processed (known on the host).
   */
  microStep(indices: readonly number[], weight: number, metrics: Tensor<'f32'>): number;
}

export interface StepLog extends Record<string, number> {
  step: number;
  epoch: number;
  learning_rate: number;
  grad_norm: number;
  tokens_per_s: number;
}

export interface LoopHooks {
  /** Called after each optimizer step. */
  onStep?: (log: StepLog) => void | Promise<void>;
  /** Where step checkpoints go (none when absent). */
  checkpointDir?: string;
  /** Test hook: called after each step's checkpoint decision; throwing simulates a crash. */
  afterStep?: (step: number) => void;
}

/** Optimizer steps for n items: ceil(n / micro) micro-batches per epoch, ceil(. / accum) steps. */
export function stepsPerEpoch(n: number, cfg: LoopConfig): number {
  return Math.ceil(Math.ceil(n / cfg.microBatchSize) / cfg.gradientAccumulationSteps);
}

/** The item order of an epoch: a seeded shuffle, the same on every run and resume. */
export function epochOrder(n: number, seed: number, epoch: number): number[] {
  const order = Array.from({ length: n }, (_, i) => i);
  new Rng(seed).fork(`epoch-${epoch}`).shuffle(order);
  return order;
}

export function checkLoopConfig(cfg: LoopConfig): void {
  const posInt = (x: number, name: string) => {
    if (!Number.isSafeInteger(x) || x < 1) throw new RangeError(`${name} must be a positive integer, got ${x}`);
  };
  posInt(cfg.microBatchSize, 'per_device_train_batch_size');
  posInt(cfg.gradientAccumulationSteps, 'gradient_accumulation_steps');
  posInt(cfg.numTrainEpochs, 'num_train_epochs');
  if (!(cfg.learningRate >= 0) || !Number.isFinite(cfg.learningRate)) throw new RangeError(`learning_rate must be a finite number >= 0, got ${cfg.learningRate}`);
  if (cfg.maxGradNorm !== null && !(cfg.maxGradNorm > 0)) throw new RangeError(`max_grad_norm must be positive (or off), got ${cfg.maxGradNorm}`);
  if (!Number.isSafeInteger(cfg.saveSteps) || cfg.saveSteps < 0) throw new RangeError(`save_steps must be an integer >= 0, got ${cfg.saveSteps}`);
}

/** A step whose metrics are still being read from the device. */
interface PendingLog {
  step: number;
  lr: number;
  tokens: number;
  values: Promise<{ metrics: Float32Array; norm: Float32Array; done: number }>;
}

interface TrainerState {
  step: number;
  totalSteps: number;
  optimizerSteps: number;
  items: number;
}

const STATE_FILE = 'trainer_state.json';
const TENSORS_FILE = 'state.safetensors';

/** Saves parameters (f32 masters where they exist), optimizer state and the step, atomically (temp dir + rename). */
async function saveCheckpoint(dir: string, model: LlamaModel, opt: Optimizer, state: TrainerState): Promise<void> {
  const be = model.backend;
  const tmp = `${dir}.tmp`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  const tensors = [
    ...[...model.weights.params].map(([name, t]) => ({ name: `param.${name}`, dtype: t.dtype, shape: t.shape, data: () => ops.read(t) })),
    ...[...model.weights.masters].map(([name, t]) => ({ name: `master.${name}`, dtype: t.dtype, shape: t.shape, data: () => ops.read(t) })),
    ...opt.stateTensors().map(({ name, tensor }) => ({ name: `optim.${name}`, dtype: tensor.dtype, shape: tensor.shape, data: () => ops.read(tensor) })),
  ];
  await writeSafetensors(join(tmp, TENSORS_FILE), tensors);
  await writeFileAtomic(join(tmp, STATE_FILE), `${JSON.stringify(state, null, 2)}\n`);
  await rm(dir, { recursive: true, force: true });
  await rename(tmp, dir);
}

/** Loads a checkpoint written by saveCheckpoint, or returns null when there is none. */
async function loadCheckpoint(dir: string, model: LlamaModel, opt: Optimizer): Promise<TrainerState | null> {
  let state: TrainerState;
  try {
    state = JSON.parse(await readFile(join(dir, STATE_FILE), 'utf8'));
  } catch {
    return null;
  }
  const be = model.backend;
  const f = await openSafetensors(join(dir, TENSORS_FILE));
  try {
    const load = async (name: string, t: Tensor) => ops.write(t, await f.readTensor(name));
    for (const [name, t] of model.weights.params) await load(`param.${name}`, t);
    for (const [name, t] of model.weights.masters) await load(`master.${name}`, t);
    for (const { name, tensor } of opt.stateTensors()) await load(`optim.${name}`, tensor);
  } finally {
    await f.close();
  }
  opt.stepCount = state.optimizerSteps;
  return state;
}

/**
 * Trains `model` on `n` items. Returns when every epoch is done; with hooks.checkpointDir a rerun
 * after a crash resumes from the last checkpoint and reaches the same final weights.
 */
export async function runTrainingLoop(model: LlamaModel, n: number, objective: Objective, cfg: LoopConfig, hooks: LoopHooks = {}): Promise<{ steps: number }> {
  checkLoopConfig(cfg);
  if (n < 1) throw new RangeError('nothing to train on: the data set is empty');
  const be = model.backend;
  model.weights.enableTraining();
  const params: Parameter[] = [...model.weights.params].map(([name, param]) => ({ name, param, master: model.weights.masters.get(name), grad: model.weights.grad(name) }));
  const opt = new Optimizer(be, params, cfg.optim);
  const perEpoch = stepsPerEpoch(n, cfg);
  const totalSteps = perEpoch * cfg.numTrainEpochs;
  const warmup = warmupSteps(totalSteps, cfg.warmupRatio);
  let step = 0;
  if (hooks.checkpointDir) {
    const resumed = await loadCheckpoint(hooks.checkpointDir, model, opt);
    if (resumed) {
      if (resumed.totalSteps !== totalSteps || resumed.items !== n) {
        throw new Error(`checkpoint ${hooks.checkpointDir} is from a run with ${resumed.items} items / ${resumed.totalSteps} steps, this run has ${n} / ${totalSteps}: remove it to start over`);
      }
      step = resumed.step;
    }
  }
  // A step's metrics and gradient norm stay on the device; their reads are issued when the step has
  // been issued and awaited one step later (or at a checkpoint / the end), so the host never waits
  // for the device inside a step and a GPU is never idle between steps.
  const pending: PendingLog[] = [];
  let lastDone = performance.now();
  const flush = async (keep: number) => {
    while (pending.length > keep) {
      const p = pending.shift()!;
      const { metrics, norm, done } = await p.values;
      const sums = Object.fromEntries(objective.metricNames.map((k, i) => [k, metrics[i]]));
      const log: StepLog = { step: p.step, epoch: p.step / perEpoch, ...sums, learning_rate: p.lr, grad_norm: norm[0], tokens_per_s: p.tokens / (Math.max(1e-6, done - lastDone) / 1000) };
      lastDone = done;
      await hooks.onStep?.(log);
    }
  };
  try {
    while (step < totalSteps) {
      const epoch = Math.floor(step / perEpoch);
      const order = epochOrder(n, cfg.seed, epoch);
      const first = (step - epoch * perEpoch) * cfg.gradientAccumulationSteps * cfg.microBatchSize;
      const window = order.slice(first, first + cfg.gradientAccumulationSteps * cfg.microBatchSize);
      const micro: number[][] = [];
      for (let i = 0; i < window.length; i += cfg.microBatchSize) micro.push(window.slice(i, i + cfg.microBatchSize));
      model.weights.zeroGrad();
      const metrics = ops.zeros(be, 'f32', [objective.metricNames.length]);
      let tokens = 0;
      // each micro-batch's mean is weighted by its share of the window's items
      for (const indices of micro) tokens += objective.microStep(indices, indices.length / window.length, metrics);
      const lr = cfg.learningRate * lrMultiplier(cfg.lrSchedulerType, step, totalSteps, warmup);
      const norm = opt.step(lr, cfg.maxGradNorm);
      step++;
      const values = Promise.all([ops.read(metrics), ops.read(norm)]).then(([m, g]) => ({ metrics: m, norm: g, done: performance.now() }));
      values.finally(() => {
        metrics.free();
        norm.free();
      }).catch(() => {});
      pending.push({ step, lr, tokens, values });
      const atEpochEnd = step % perEpoch === 0;
      const checkpoint = hooks.checkpointDir && (step === totalSteps || atEpochEnd || (cfg.saveSteps > 0 && step % cfg.saveSteps === 0));
      await flush(checkpoint ? 0 : 1);
      if (checkpoint) await saveCheckpoint(hooks.checkpointDir!, model, opt, { step, totalSteps, optimizerSteps: opt.stepCount, items: n });
      hooks.afterStep?.(step);
    }
    await flush(0);
  } finally {
    opt.free();
  }
  return { steps: totalSteps };
}
