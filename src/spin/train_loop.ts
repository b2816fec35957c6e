// The optimizer loop shared by SPIN and SFT training: epochs over a seeded shuffle, micro-batches with
// gradient accumulation, a warm-up + decay schedule, clipping, metrics per optimizer step, and step
// checkpoints that a rerun resumes from. What a micro-batch computes is the Objective's business.
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { LlamaModel } from '../model/llama.js';
import { openSafetensors, writeSafetensors } from '../model/safetensors.js';
import { writeFileAtomic } from '../util/atomic.js';
import { Rng } from '../util/rng.js';
import { Optimizer, type OptimizerConfig, type Parameter } from './optimizer.js';
import { lrMultiplier, type ScheduleType, warmupSteps } from './schedule.js';

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

export interface MicroResult {
  /** Metrics of the micro-batch (averaged over the accumulation window by the loop). */
  metrics: Record<string, number>;
  /** Tokens processed (for tokens/s). */
  tokens: number;
}

export interface Objective {
  /** Forward + backward of one micro-batch; gradients are accumulated, scaled by `scale`. */
  microStep(indices: readonly number[], scale: number): Promise<MicroResult>;
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
    ...[...model.weights.params].map(([name, t]) => ({ name: `param.${name}`, dtype: t.dtype, shape: t.shape, data: () => be.read(t) })),
    ...[...model.weights.masters].map(([name, t]) => ({ name: `master.${name}`, dtype: t.dtype, shape: t.shape, data: () => be.read(t) })),
    ...opt.stateTensors().map(({ name, tensor }) => ({ name: `optim.${name}`, dtype: tensor.dtype, shape: tensor.shape, data: () => be.read(tensor) })),
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
    const load = async (name: string, t: import('../tensor/tensor.js').Tensor) => be.write(t, await f.readTensor(name));
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
  try {
    while (step < totalSteps) {
      const epoch = Math.floor(step / perEpoch);
      const order = epochOrder(n, cfg.seed, epoch);
      const first = (step - epoch * perEpoch) * cfg.gradientAccumulationSteps * cfg.microBatchSize;
      const window = order.slice(first, first + cfg.gradientAccumulationSteps * cfg.microBatchSize);
      const micro: number[][] = [];
      for (let i = 0; i < window.length; i += cfg.microBatchSize) micro.push(window.slice(i, i + cfg.microBatchSize));
      const t0 = performance.now();
      model.weights.zeroGrad();
      const sums: Record<string, number> = {};
      let tokens = 0;
      for (const indices of micro) {
        // each micro-batch's mean is weighted by its share of the window's items
        const r = await objective.microStep(indices, indices.length / window.length);
        tokens += r.tokens;
        for (const [k, v] of Object.entries(r.metrics)) sums[k] = (sums[k] ?? 0) + (v * indices.length) / window.length;
      }
      const lr = cfg.learningRate * lrMultiplier(cfg.lrSchedulerType, step, totalSteps, warmup);
      const norm = opt.step(lr, cfg.maxGradNorm);
      const [gradNorm] = await be.read(norm);
      norm.free();
      step++;
      const log: StepLog = { step, epoch: step / perEpoch, ...sums, learning_rate: lr, grad_norm: gradNorm, tokens_per_s: tokens / ((performance.now() - t0) / 1000) };
      await hooks.onStep?.(log);
      const atEpochEnd = step % perEpoch === 0;
      if (hooks.checkpointDir && (step === totalSteps || atEpochEnd || (cfg.saveSteps > 0 && step % cfg.saveSteps === 0))) {
        await saveCheckpoint(hooks.checkpointDir, model, opt, { step, totalSteps, optimizerSteps: opt.stepCount, items: n });
      }
      hooks.afterStep?.(step);
    }
  } finally {
    opt.free();
  }
  return { steps: totalSteps };
}
