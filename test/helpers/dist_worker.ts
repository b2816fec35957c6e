// One rank of the distributed tests (test/dist.test.ts), started by mpirun (or alone for the
// one-process reference): trains a tiny random Llama with SPIN on random pairs and writes what the
// test compares. Argument: a JSON job.
//   mode 'train'   rank 0 writes {logs, weights}; every rank writes its weights' hash (replicas agree)
//   mode 'memory'  every rank writes the engine's per-rank bytes and the allocator's live-bytes delta
//   mode 'reference'  every rank writes the reference log-probs it got (f32 bytes, base64) and how
//                  many pairs it scored itself
import { writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { CpuBackend } from '../../src/backend/cpu/cpu_backend.js';
import { closeProcessGroup, CommError, processGroup } from '../../src/dist/process_group.js';
import { type ZeroStage, ZeroEngine } from '../../src/dist/zero.js';
import type { ModelType } from '../../src/model/config.js';
import { type LoraOptions, resolveLora } from '../../src/model/lora.js';
import { initLlama } from '../../src/model/init.js';
import type { LlamaModel } from '../../src/model/llama.js';
import type { TokenizedPair } from '../../src/spin/batch.js';
import { referenceLogps, SpinObjective } from '../../src/spin/objectives.js';
import { type LoopConfig, runTrainingLoop, type StepLog } from '../../src/spin/train_loop.js';
import { Rng } from '../../src/util/rng.js';
import { tinyConfig } from './tiny_model.js';
import * as ops from '../../src/ops/index.js';

export interface DistJob {
  mode: 'train' | 'memory' | 'reference';
  /** null: one process, no group (the reference). */
  stage: ZeroStage | null;
  seed: number;
  dtype: 'f32' | 'bf16';
  optim: 'adamw' | 'rmsprop';
  items: number;
  micro: number;
  /** Accumulation per rank (the reference runs accum x its `world`). */
  accum: number;
  world: number;
  epochs: number;
  layers: number;
  hidden: number;
  out: string;
  checkpointDir?: string;
  saveSteps?: number;
  /** Rank `killRank` SIGKILLs itself after step `killAtStep`; or hangs there with `hang`. */
  killRank?: number;
  killAtStep?: number;
  hang?: boolean;
  /** Overlap communication with computation (ZeroEngine; default on). */
  overlap?: boolean;
  /** Tied embeddings (the table is also the LM head: its unit is held from the head to the embedding). */
  tie?: boolean;
  /** The model family (default llama): qwen3 adds q/k norms to each layer's unit, phi3 trains split q/k/v and gate/up. */
  modelType?: ModelType;
  /** head_dim, when not hidden / heads. */
  headDim?: number;
  /** LoRA (the loop adds the adapters; only they train and are sharded). */
  lora?: LoraOptions;
}

const EOS = 2;

function pairs(rng: Rng, n: number): TokenizedPair[] {
  const toks = (k: number) => Array.from({ length: k }, () => rng.int(3, 40));
  return Array.from({ length: n }, () => {
    const prompt = toks(rng.int(2, 6));
    return { real: { prompt, answer: [...toks(rng.int(1, 6)), EOS] }, generated: { prompt, answer: [...toks(rng.int(1, 6)), EOS] } };
  });
}

/** Every parameter as numbers (bf16 widened exactly), and a hash of their bytes. */
async function hostWeights(model: LlamaModel): Promise<{ weights: Record<string, number[]>; hash: string }> {
  const weights: Record<string, number[]> = {};
  const hash = createHash('sha256');
  for (const name of [...model.weights.params.keys()].sort()) {
    const t = model.weights.get(name);
    const host = await ops.read(t);
    hash.update(new Uint8Array(host.buffer, host.byteOffset, host.byteLength));
    weights[name] = Array.from(
      t.dtype === 'bf16'
        ? new Float32Array(new Uint32Array(Array.from(host as Uint16Array, (b) => b << 16)).buffer)
        : (host as Float32Array),
    );
  }
  return { weights, hash: hash.digest('hex') };
}

async function main() {
  const job = JSON.parse(process.argv[2]) as DistJob;
  const be = new CpuBackend();
  const group = job.stage === null ? null : processGroup();
  const rank = group?.rank ?? 0;
  const cfg = tinyConfig({
    vocab: 48,
    layers: job.layers,
    hidden: job.hidden,
    intermediate: job.hidden * 2,
    tie: job.tie,
    modelType: job.modelType,
    headDim: job.headDim,
  });
  const live0 = be.native.liveBytes();
  const model = initLlama(be, cfg, { seed: job.seed, std: 0.1, dtype: job.dtype, randomizeAll: true });
  if (job.mode === 'memory') {
    const full = be.native.liveBytes() - live0;
    model.weights.enableTraining();
    const engine = await ZeroEngine.create(model, group!, job.stage!, { type: job.optim }, { overlap: job.overlap });
    // one (zero-gradient) step: what stays allocated between steps
    engine.zeroGrad();
    engine.step(0, null).free();
    const live = be.native.liveBytes() - live0;
    writeFileSync(`${job.out}.rank${rank}.json`, JSON.stringify({ rank, fullParams: full, memory: engine.memory(), live }));
    engine.free();
    closeProcessGroup();
    return;
  }
  // LoRA: the adapters exist from the start (as runTrainingLoop would add them, seed 11), so `init` holds them
  if (job.lora) model.weights.addLora(cfg, resolveLora(job.lora, cfg.modelType), 11);
  // the starting point (the test measures how far training moved the weights)
  const init = job.mode === 'train' && rank === 0 ? (await hostWeights(model)).weights : null;
  const data = pairs(new Rng(job.seed).fork('data'), job.items);
  const loop: LoopConfig = {
    learningRate: 2e-3,
    optim: { type: job.optim },
    lrSchedulerType: 'linear',
    warmupRatio: 0.1,
    microBatchSize: job.micro,
    gradientAccumulationSteps: group ? job.accum : job.accum * job.world,
    numTrainEpochs: job.epochs,
    maxGradNorm: 0.5,
    seed: 11,
    saveSteps: job.saveSteps ?? 0,
    dist: group ? { group, zeroStage: job.stage!, overlap: job.overlap } : undefined,
    lora: job.lora,
  };
  let scored = 0;
  const ref = await referenceLogps(model, data, {
    microBatchSize: job.micro,
    seed: loop.seed,
    eosId: EOS,
    padId: 0,
    group: group ?? undefined,
    onProgress: () => void scored++,
  });
  if (job.mode === 'reference') {
    writeFileSync(`${job.out}.rank${rank}.json`, JSON.stringify({ ref: Buffer.from(ref.buffer).toString('base64'), scored: scored - 1 }));
    model.weights.free();
    closeProcessGroup();
    return;
  }
  const obj = new SpinObjective(model, data, ref, {
    beta: 0.5,
    lossType: 'sigmoid',
    nllAlpha: 0,
    dropIdentical: false,
    eosId: EOS,
    padId: 0,
  });
  const logs: StepLog[] = [];
  const bytes0 = group ? { ...group.bytes } : null;
  const t0 = performance.now();
  await runTrainingLoop(model, data.length, obj, loop, {
    onStep: (l) => void logs.push(l),
    checkpointDir: job.checkpointDir,
    afterStep: (s) => {
      if (rank === job.killRank && s === job.killAtStep) {
        if (job.hang) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
        process.kill(process.pid, 'SIGKILL');
      }
    },
  });
  const seconds = (performance.now() - t0) / 1000;
  const sent =
    group && bytes0
      ? Object.fromEntries(Object.entries(group.bytes).map(([k, v]) => [k, v - (bytes0 as Record<string, number>)[k]]))
      : null;
  const { weights, hash } = await hostWeights(model);
  writeFileSync(`${job.out}.rank${rank}.hash`, hash);
  if (rank === 0) writeFileSync(`${job.out}.json`, JSON.stringify({ logs, weights, init, seconds, sent, params: model.weights.count() }));
  model.weights.free();
  closeProcessGroup();
}

main().catch((err) => {
  if (err instanceof CommError) {
    // one line naming this rank and the collective, then the whole job ends (a hung peer included)
    process.stderr.write(`${err.message}\n`);
    processGroup().abort(3);
  }
  process.stderr.write(`${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
