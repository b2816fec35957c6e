// The optimizer loop shared by SPIN and SFT training: epochs over a seeded shuffle, micro-batches with
// gradient accumulation, a warm-up + decay schedule, clipping, metrics per optimizer step, and step
// checkpoints that a rerun resumes from. What a micro-batch computes is the Objective's business.
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Backend, ComputeDtype } from '../backend/backend.js';
import type { LlamaModel } from '../model/llama.js';
import { openSafetensors, writeSafetensors } from '../model/safetensors.js';
import type { Tensor } from '../tensor/tensor.js';
import { writeFileAtomic } from '../util/atomic.js';
import { Rng } from '../util/rng.js';
import { Optimizer, type OptimizerConfig, type Parameter } from '../optim/optimizer.js';
import { lrMultiplier, type ScheduleType, warmupSteps } from './schedule.js';
import * as ops from '../ops/index.js';
import type { ProcessGroup } from '../dist/process_group.js';
import { type ZeroStage, ZeroEngine } from '../dist/zero.js';
import { MasterBackedParams } from '../model/master_params.js';
import { type LoraOptions, resolveLora } from '../model/lora.js';
import { FusedUpdate } from '../optim/fused_update.js';
import { splitByTokens } from './pack.js';
import { checkStepFinite, DivergenceError, finiteChunks, finiteOrThrow } from '../model/divergence.js';

export interface LoopConfig {
  learningRate: number;
  optim: OptimizerConfig;
  lrSchedulerType: ScheduleType;
  warmupRatio: number;
  /** Items per micro-batch (per_device_train_batch_size). */
  microBatchSize: number;
  /**
   * Token budget of a micro-batch (max_tokens_per_batch; 0 or absent: none): a micro-batch of
   * microBatchSize items is cut, in order, into runs of at most this many packed tokens
   * (Objective.tokensOf; an item over the budget runs alone). Each run is weighted by its share of the
   * window's items, so a step's loss is still the mean over the window's items (docs/algorithm.md).
   */
  maxTokensPerBatch?: number;
  gradientAccumulationSteps: number;
  numTrainEpochs: number;
  /** Clip the global gradient norm to this (null: no clipping). */
  maxGradNorm: number | null;
  seed: number;
  /** Write a resumable checkpoint every this many optimizer steps (0: only at the end of an epoch). */
  saveSteps: number;
  /**
   * Gradient checkpointing: each layer keeps only its input during the forward and reruns its
   * forward in the backward (docs/memory.md: activations ~H instead of ~6H + 3I floats per token
   * and layer, for ~1/3 more compute). Same results bit for bit. Absent: the model's own setting.
   */
  gradientCheckpointing?: boolean;
  /**
   * The arithmetic of the forward and backward passes (LlamaModel.computeDtype): 'f32', or 'bf16' mixed
   * precision (docs/numerics.md "Mixed precision"). The reference pass (self_play.ts referenceStage) runs
   * in it too, so the first step's u is exactly 0. 'auto': bf16 on CUDA, f32 on the CPU and WebGPU
   * (trainingComputeDtype). Absent: the model's own setting (LlamaModel.computeDtype, default f32).
   */
  computeDtype?: ComputeDtype | 'auto';
  /**
   * Fused updates (LOMO-style, src/optim/fused_update.ts): each unit of parameters is updated as soon
   * as the backward has its gradient, which is then freed, so no full set of gradients is resident.
   * The same weights as an unfused step; needs maxGradNorm null, one micro-batch per step and one
   * process.
   */
  fusedUpdate?: boolean;
  /**
   * Data parallelism (docs/distributed.md): a step's window is micro x accumulation x group.size
   * items, rank r takes micro-batches [r * accumulation, (r + 1) * accumulation) of it; ZeRO stage
   * as DeepSpeed numbers them. Absent: one process, no group.
   */
  dist?: { group: ProcessGroup; zeroStage: ZeroStage; overlap?: boolean };
  /**
   * LoRA (docs/lora.md): adapters are added (seeded by `seed`, B = 0) to a model that has none, and
   * only they train. targetModules null: PEFT's default for the family.
   */
  lora?: LoraOptions;
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
  /** Tokens item i takes in a packed micro-batch (for LoopConfig.maxTokensPerBatch). */
  tokensOf?(i: number): number;
}

/** A micro-batch of items cut by the token budget (LoopConfig.maxTokensPerBatch) into the runs that are computed together. */
export function tokenRuns(
  indices: readonly number[],
  tokensOf: ((i: number) => number) | undefined,
  maxTokens: number | undefined,
): number[][] {
  return tokensOf && maxTokens ? splitByTokens(indices, tokensOf, maxTokens) : [[...indices]];
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
  return Math.ceil(Math.ceil(n / cfg.microBatchSize) / (cfg.gradientAccumulationSteps * (cfg.dist?.group.size ?? 1)));
}

/** The item order of an epoch: a seeded shuffle, the same on every run and resume. */
export function epochOrder(n: number, seed: number, epoch: number): number[] {
  const order = Array.from({ length: n }, (_, i) => i);
  new Rng(seed).fork(`epoch-${epoch}`).shuffle(order);
  return order;
}

/** LoopConfig.computeDtype on a backend: 'auto' is bf16 on CUDA (mixed precision, as GPU trainers run), f32 elsewhere. */
export function trainingComputeDtype(c: ComputeDtype | 'auto', be: Pick<Backend, 'name'>): ComputeDtype {
  if (c === 'auto') return be.name === 'cuda' || be.name === 'cuda-emu' ? 'bf16' : 'f32';
  if (c !== 'f32' && c !== 'bf16') throw new RangeError(`computeDtype must be 'auto', 'f32' or 'bf16', got ${String(c)}`);
  return c;
}

export function checkLoopConfig(cfg: LoopConfig): void {
  const posInt = (x: number, name: string) => {
    if (!Number.isSafeInteger(x) || x < 1) throw new RangeError(`${name} must be a positive integer, got ${x}`);
  };
  posInt(cfg.microBatchSize, 'per_device_train_batch_size');
  posInt(cfg.gradientAccumulationSteps, 'gradient_accumulation_steps');
  posInt(cfg.numTrainEpochs, 'num_train_epochs');
  if (cfg.maxTokensPerBatch !== undefined && !(Number.isSafeInteger(cfg.maxTokensPerBatch) && cfg.maxTokensPerBatch >= 0))
    throw new RangeError(`max_tokens_per_batch must be an integer >= 0 (0: no budget), got ${cfg.maxTokensPerBatch}`);
  if (!(cfg.learningRate >= 0) || !Number.isFinite(cfg.learningRate))
    throw new RangeError(`learning_rate must be a finite number >= 0, got ${cfg.learningRate}`);
  if (cfg.maxGradNorm !== null && !(cfg.maxGradNorm > 0))
    throw new RangeError(`max_grad_norm must be positive (or off), got ${cfg.maxGradNorm}`);
  if (!Number.isSafeInteger(cfg.saveSteps) || cfg.saveSteps < 0)
    throw new RangeError(`save_steps must be an integer >= 0, got ${cfg.saveSteps}`);
  if (cfg.fusedUpdate) {
    // the global norm is known only after the whole backward, and an update cannot wait for more micro-batches
    if (cfg.maxGradNorm !== null)
      throw new RangeError('fused updates cannot clip by the global gradient norm: turn clipping off (max_grad_norm 0)');
    if (cfg.gradientAccumulationSteps !== 1)
      throw new RangeError('fused updates take one micro-batch per step: set gradient_accumulation_steps 1');
    if (cfg.dist) throw new RangeError('fused updates are for one process (with data parallelism ZeRO shards the gradients instead)');
  }
}

/** A step whose metrics are still being read from the device. */
interface PendingLog {
  step: number;
  lr: number;
  tokens: number;
  /** When the host finished issuing the step (performance.now()). */
  issued: number;
  values: Promise<{ metrics: Float32Array; norm: Float32Array; done: number }>;
}

interface TrainerState {
  step: number;
  totalSteps: number;
  optimizerSteps: number;
  items: number;
  /** Distributed checkpoints: the world size and ZeRO stage that wrote them (one file per rank). */
  world?: number;
  zeroStage?: number;
}

/** param = its master rounded to bf16 (as the optimizer writes it), chunk by chunk. */
async function roundInto(master: Tensor<'f32'>, param: Tensor<'bf16'>): Promise<void> {
  for (let off = 0; off < master.numel; off += ops.READ_CHUNK_ELEMENTS) {
    const n = Math.min(ops.READ_CHUNK_ELEMENTS, master.numel - off);
    const r = ops.cast(master.view(off, [n]), 'bf16');
    try {
      ops.write(param.view(off, [n]), { dtype: 'bf16', data: await ops.read(r) });
    } finally {
      r.free();
    }
  }
}

const STATE_FILE = 'trainer_state.json';
const TENSORS_FILE = 'state.safetensors';

/**
 * Saves the parameters, optimizer state and the step, atomically (temp dir + rename). A parameter with
 * an f32 master is saved as its master only (its bf16 copy is the master rounded: loadCheckpoint
 * rebuilds it), and every tensor is read to the host in 4 MiB chunks (ops.readChunks), so writing a
 * checkpoint adds no whole-tensor host copies to the step's memory (docs/memory.md).
 */
async function saveCheckpoint(
  dir: string,
  model: LlamaModel,
  opt: Optimizer,
  state: TrainerState,
  lean: MasterBackedParams | null,
): Promise<void> {
  const tmp = `${dir}.tmp`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  // with only the masters resident (lean), params holds no bf16 copy of the parameters with masters
  const names = lean ? lean.names() : [...model.weights.params.keys()];
  // every element is checked on its way out: a checkpoint never holds NaN / Inf (model/divergence.ts)
  const chunked = (name: string, t: Tensor) => ({
    name,
    dtype: t.dtype,
    shape: t.shape,
    data: () => finiteOrThrow(name, ops.readChunks(t)),
  });
  const tensors = [
    // a frozen base (LoRA) is never written: only the adapters are saved
    ...names
      .filter((name) => !model.weights.masters.has(name) && !model.weights.frozen(name))
      .map((name) => chunked(`param.${name}`, model.weights.params.get(name)!)),
    ...[...model.weights.masters].map(([name, t]) => chunked(`master.${name}`, t)),
    ...opt.stateTensors().map(({ name, tensor }) => chunked(`optim.${name}`, tensor)),
  ];
  try {
    await writeSafetensors(join(tmp, TENSORS_FILE), tensors);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true }); // the last good checkpoint stays
    throw err;
  }
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
  const f = await openSafetensors(join(dir, TENSORS_FILE));
  try {
    const load = async (name: string, t: Tensor) => ops.write(t, await f.readTensor(name));
    for (const [name, t] of model.weights.masters) await load(`master.${name}`, t);
    for (const [name, t] of model.weights.params) {
      if (model.weights.frozen(name)) continue; // the base of a LoRA run: never written, not in the checkpoint
      const master = model.weights.masters.get(name);
      // a parameter with a master is its master rounded (checkpoints before this change stored both)
      if (master && t.dtype === 'bf16' && !f.has(`param.${name}`)) await roundInto(master, t as Tensor<'bf16'>);
      else await load(`param.${name}`, t);
    }
    for (const { name, tensor } of opt.stateTensors()) await load(`optim.${name}`, tensor);
  } finally {
    await f.close();
  }
  opt.stepCount = state.optimizerSteps;
  return state;
}

const rankFile = (rank: number, world: number) => `rank-${rank}-of-${world}.safetensors`;

/** Distributed checkpoint: each rank writes what it holds; rank 0 writes the step and renames the directory into place. */
async function saveDistCheckpoint(dir: string, engine: ZeroEngine, state: TrainerState): Promise<void> {
  const { group } = engine;
  const tmp = `${dir}.tmp`;
  if (group.isMain) {
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true });
  }
  group.barrier();
  // each rank checks its shard on the way out; the verdicts are combined before the rename, so every
  // rank stops together and the last good checkpoint stays (model/divergence.ts)
  let bad: string | null = null;
  const tensors = engine.stateTensors().map(({ name, tensor }) => ({
    name,
    dtype: tensor.dtype,
    shape: tensor.shape,
    data: () => finiteChunks(name, ops.readChunks(tensor), (m) => (bad ??= m)),
  }));
  await writeSafetensors(join(tmp, rankFile(group.rank, group.size)), tensors);
  const anyBad = new Int32Array([bad ? 1 : 0]);
  group.allReduceHost(anyBad, 'max');
  if (anyBad[0]) {
    if (group.isMain) await rm(tmp, { recursive: true, force: true });
    group.barrier();
    throw new DivergenceError(`training diverged: ${bad ?? "another rank's shard holds NaN or Inf"}; not written`, true);
  }
  group.barrier();
  if (group.isMain) {
    await writeFileAtomic(join(tmp, STATE_FILE), `${JSON.stringify(state, null, 2)}\n`);
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
  }
  group.barrier();
}

async function loadDistCheckpoint(dir: string, engine: ZeroEngine): Promise<TrainerState | null> {
  const { group } = engine;
  let state: TrainerState;
  try {
    state = JSON.parse(await readFile(join(dir, STATE_FILE), 'utf8'));
  } catch {
    return null;
  }
  if (state.world !== group.size || state.zeroStage !== engine.stage) {
    throw new Error(
      `checkpoint ${dir} was written by ${state.world ?? 1} process(es) at zero_stage ${state.zeroStage ?? 'none'}, this run has ${group.size} at zero_stage ${engine.stage}: resume with the same --nproc and --zero_stage, or remove it to start over`,
    );
  }
  const f = await openSafetensors(join(dir, rankFile(group.rank, group.size)));
  try {
    const wanted = engine.stateTensors();
    // a checkpoint of another parameter layout (spinlm before the embedding and the head were separate
    // units, or another model) has other names or sizes: say so before reading anything
    const bad = wanted.find(({ name, tensor }) => !f.has(name) || f.info(name).shape.reduce((a, b) => a * b, 1) !== tensor.numel);
    if (bad)
      throw new Error(
        `checkpoint ${dir} does not match this run's sharded state (${bad.name}: ${f.has(bad.name) ? 'another size' : 'missing'}); it was written by another model or by an older spinlm with another parameter layout: remove it to start over`,
      );
    for (const { name, tensor } of wanted) ops.write(tensor, (await f.readTensor(name)) as never);
  } finally {
    await f.close();
  }
  engine.afterLoad();
  engine.opt.stepCount = state.optimizerSteps;
  return state;
}

/**
 * Trains `model` on `n` items. Returns when every epoch is done; with hooks.checkpointDir a rerun
 * after a crash resumes from the last checkpoint and reaches the same final weights.
 */
export async function runTrainingLoop(
  model: LlamaModel,
  n: number,
  objective: Objective,
  cfg: LoopConfig,
  hooks: LoopHooks = {},
): Promise<{ steps: number }> {
  checkLoopConfig(cfg);
  if (n < 1) throw new RangeError('nothing to train on: the data set is empty');
  const be = model.backend;
  if (cfg.lora && !model.weights.lora) model.weights.addLora(model.cfg, resolveLora(cfg.lora, model.cfg.modelType), cfg.seed);
  // with fused updates no full set of gradients is ever allocated (each unit's exists while it trains)
  model.weights.enableTraining({ grads: !cfg.fusedUpdate });
  if (cfg.gradientCheckpointing !== undefined) model.recompute = cfg.gradientCheckpointing;
  if (cfg.computeDtype !== undefined) model.computeDtype = trainingComputeDtype(cfg.computeDtype, be);
  const dist = cfg.dist;
  const engine = dist ? await ZeroEngine.create(model, dist.group, dist.zeroStage, cfg.optim, { overlap: dist.overlap }) : null;
  // one process with bf16 parameters: only the f32 masters stay resident while training (master_params.ts);
  // the optimizer updates the masters in place (the same arithmetic) and end() rounds them to bf16
  const lean = !engine && model.paramHook === null && model.weights.masters.size > 0 ? new MasterBackedParams(model) : null;
  const params: Parameter[] = engine
    ? []
    : [...model.weights.params]
        .filter(([name]) => !model.weights.frozen(name))
        .map(([name, param]) => {
          const master = model.weights.masters.get(name);
          const grad = cfg.fusedUpdate ? undefined : model.weights.grad(name);
          return lean && master ? { name, param: master, grad } : { name, param, master, grad };
        });
  // from here to the end of training only the masters of bf16 parameters are resident (the model
  // acquires each layer's bf16 copy while it runs); dropped before the optimizer state exists, so the
  // bf16 copies never sit beside masters, gradients and state together (the 1.1B step's peak did:
  // docs/memory.md); the finally block below (or the catch before it) rebuilds them
  lean?.begin();
  let opt: Optimizer;
  try {
    opt = engine ? engine.opt : new Optimizer(be, params, cfg.optim);
  } catch (err) {
    lean?.end();
    throw err;
  }
  // wraps the masters' hook (installed by lean.begin() above); removed before lean.end()
  const fused = cfg.fusedUpdate
    ? new FusedUpdate(
        model,
        opt,
        params.map((p) => p.name),
      )
    : null;
  const perEpoch = stepsPerEpoch(n, cfg);
  const totalSteps = perEpoch * cfg.numTrainEpochs;
  const warmup = warmupSteps(totalSteps, cfg.warmupRatio);
  const accum = cfg.gradientAccumulationSteps;
  const world = dist?.group.size ?? 1;
  let step = 0;
  let finished = false;
  /** The checkpoint on disk, for the divergence message (null: none yet). */
  let lastSaved: string | null = null;
  if (hooks.checkpointDir) {
    try {
      const resumed = engine
        ? await loadDistCheckpoint(hooks.checkpointDir, engine)
        : await loadCheckpoint(hooks.checkpointDir, model, opt);
      if (resumed) {
        if (resumed.totalSteps !== totalSteps || resumed.items !== n) {
          throw new Error(
            `checkpoint ${hooks.checkpointDir} is from a run with ${resumed.items} items / ${resumed.totalSteps} steps, this run has ${n} / ${totalSteps}: remove it to start over`,
          );
        }
        step = resumed.step;
        lastSaved = `${hooks.checkpointDir}, step ${step}`;
      }
    } catch (err) {
      if (!engine) opt.free();
      fused?.end();
      lean?.end();
      throw err;
    }
  }
  // A step's metrics and gradient norm stay on the device; their reads are issued when the step has
  // been issued and awaited one step later (or at a checkpoint / the end), so the host never waits
  // for the device inside a step and a GPU is never idle between steps.
  const pending: PendingLog[] = [];
  // the end of the previous logged step, and when it was issued: for tokens_per_s
  let lastDone = performance.now();
  let lastIssued = lastDone;
  const flush = async (keep: number) => {
    while (pending.length > keep) {
      const p = pending.shift()!;
      const { metrics, norm, done } = await p.values;
      const sums = Object.fromEntries(objective.metricNames.map((k, i) => [k, metrics[i]]));
      // The step ended when its reads resolved (a GPU), but a backend that computes on the host resolves
      // them only when this loop next yields: after the NEXT step, or all at once when a checkpoint or the
      // end drains the queue. A step therefore lasts at least as long as the host spent issuing it.
      const end = Math.max(done, lastDone + (p.issued - lastIssued));
      // the loss and the norm are all-reduced: every rank of a group takes the same decision here
      checkStepFinite(p.step, sums.loss, norm[0], lastSaved);
      const log: StepLog = {
        step: p.step,
        epoch: p.step / perEpoch,
        ...sums,
        learning_rate: p.lr,
        grad_norm: norm[0],
        tokens_per_s: p.tokens / (Math.max(1e-6, end - lastDone) / 1000),
      };
      lastDone = end;
      lastIssued = p.issued;
      if (!dist || dist.group.isMain) await hooks.onStep?.(log);
    }
  };
  try {
    while (step < totalSteps) {
      const epoch = Math.floor(step / perEpoch);
      const order = epochOrder(n, cfg.seed, epoch);
      const windowItems = accum * world * cfg.microBatchSize;
      const first = (step - epoch * perEpoch) * windowItems;
      const window = order.slice(first, first + windowItems);
      const micro: number[][] = [];
      for (let i = 0; i < window.length; i += cfg.microBatchSize) micro.push(window.slice(i, i + cfg.microBatchSize));
      // data parallel: rank r takes the r-th run of `accum` micro-batches of the window (fixed order)
      const runs = (m: number[][]) => m.flatMap((ix) => tokenRuns(ix, objective.tokensOf?.bind(objective), cfg.maxTokensPerBatch));
      const mine = runs(dist ? micro.slice(dist.group.rank * accum, (dist.group.rank + 1) * accum) : micro);
      // ZeRO: every rank runs as many micro-steps as the rank with the most runs (idle ones join the gathers)
      const most = dist
        ? Math.max(...Array.from({ length: world }, (_, r) => runs(micro.slice(r * accum, (r + 1) * accum)).length))
        : mine.length;
      if (engine) engine.zeroGrad();
      else model.weights.zeroGrad(); // (fused updates: no gradients between steps, each unit's starts at zero)
      const lr = cfg.learningRate * lrMultiplier(cfg.lrSchedulerType, step, totalSteps, warmup);
      if (fused) {
        fused.lr = lr;
        opt.beginFusedStep();
      }
      const metrics = ops.zeros(be, 'f32', [objective.metricNames.length]);
      let tokens = 0;
      // each micro-batch's mean is weighted by its share of the (global) window's items
      const lora = model.weights.lora;
      mine.forEach((indices, k) => {
        engine?.beginMicroStep(k === mine.length - 1);
        // LoRA dropout: this pass's masks (lora_linear.ts), the same on a recompute and on resume
        if (lora) [lora.dropoutSeed, lora.dropoutKey] = [cfg.seed, `${step}/${dist?.group.rank ?? 0}/${k}`];
        try {
          tokens += objective.microStep(indices, indices.length / window.length, metrics);
        } finally {
          if (lora) lora.dropoutKey = null;
        }
      });
      let norm: Tensor<'f32'>;
      if (engine && dist) {
        // ZeRO-3 ranks with fewer micro-batches (the last window of an epoch) still join every gather
        for (let k = mine.length; k < most; k++) engine.idleMicroStep();
        // after the step: gradient reductions issued during the backward come first on every rank
        norm = engine.step(lr, cfg.maxGradNorm);
        dist.group.allReduce(metrics, 'sum');
        const t = new Float64Array([tokens]);
        dist.group.allReduceHost(t, 'sum');
        tokens = t[0];
      } else {
        norm = fused ? opt.endFusedStep() : opt.step(lr, cfg.maxGradNorm);
      }
      step++;
      const values = Promise.all([ops.read(metrics), ops.read(norm)]).then(([m, g]) => ({ metrics: m, norm: g, done: performance.now() }));
      values
        .finally(() => {
          metrics.free();
          norm.free();
        })
        .catch(() => {});
      pending.push({ step, lr, tokens, issued: performance.now(), values });
      const atEpochEnd = step % perEpoch === 0;
      const checkpoint = hooks.checkpointDir && (step === totalSteps || atEpochEnd || (cfg.saveSteps > 0 && step % cfg.saveSteps === 0));
      await flush(checkpoint ? 0 : 1);
      if (checkpoint) {
        // the writer's host buffers are not tensors: give the step's recycled blocks back first, so the
        // two never add up above the step's peak (the next step maps them again: rare, and cheap)
        model.backend.releaseCached?.();
        const state = { step, totalSteps, optimizerSteps: opt.stepCount, items: n };
        try {
          if (engine && dist) await saveDistCheckpoint(hooks.checkpointDir!, engine, { ...state, world, zeroStage: dist.zeroStage });
          else await saveCheckpoint(hooks.checkpointDir!, model, opt, state, lean);
        } catch (err) {
          if (!(err instanceof DivergenceError)) throw err;
          const kept = lastSaved ? `the last good checkpoint (${lastSaved}) is kept` : 'no checkpoint was written';
          throw new DivergenceError(
            `training diverged at step ${step}: ${err.message.replace(/^training diverged: /, '')}; ${kept}`,
            err.everyRank,
          );
        }
        lastSaved = `${hooks.checkpointDir}, step ${step}`;
      }
      hooks.afterStep?.(step);
    }
    await flush(0);
    // every rank's model holds the whole trained parameters again (rank 0 writes the HF model)
    engine?.finish();
    finished = true;
  } finally {
    if (engine && !finished) engine.free();
    else if (!engine) opt.free();
    fused?.end();
    // after the optimizer state is gone, so the rebuilt bf16 parameters never sit beside it
    lean?.end();
  }
  return { steps: totalSteps };
}
