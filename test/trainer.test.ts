// The SPIN and SFT training loops on a tiny model: u = 0 and loss = log 2 at step 0, training lowers
// the loss and raises the margins, and a run killed mid-training resumes to the same final weights.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { SpinLossType } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { initLlama } from '../src/model/init.js';
import { openSafetensors } from '../src/model/safetensors.js';
import type { LlamaModel } from '../src/model/llama.js';
import type { TokenizedPair } from '../src/spin/batch.js';
import { referenceLogps, SftObjective, SpinObjective } from '../src/spin/objectives.js';
import { type LoopConfig, runTrainingLoop, type StepLog } from '../src/spin/train_loop.js';
import { withSeed } from './helpers/random.js';
import { tinyConfig } from './helpers/tiny_model.js';
import * as ops from '../src/ops/index.js';
import { randomPairs } from './helpers/pairs.js';

const be = new CpuBackend();
const EOS = 2;

const pairs = randomPairs;

const loop = (o: Partial<LoopConfig> = {}): LoopConfig => ({
  learningRate: 3e-3,
  optim: { type: 'adamw' },
  lrSchedulerType: 'linear',
  warmupRatio: 0.1,
  microBatchSize: 3,
  gradientAccumulationSteps: 2,
  numTrainEpochs: 2,
  maxGradNorm: 1.0,
  seed: 7,
  saveSteps: 0,
  ...o,
});

async function spinRun(model: LlamaModel, data: TokenizedPair[], cfg: LoopConfig, hooks = {}, lossType: SpinLossType = 'sigmoid') {
  const ref = await referenceLogps(model, data, {
    microBatchSize: cfg.microBatchSize,
    maxTokensPerBatch: cfg.maxTokensPerBatch,
    seed: cfg.seed,
    eosId: EOS,
    padId: 0,
  });
  const logs: StepLog[] = [];
  const obj = new SpinObjective(model, data, ref, {
    beta: 0.5,
    lossType,
    nllAlpha: 0,
    dropIdentical: false,
    eosId: EOS,
    padId: 0,
  });
  await runTrainingLoop(model, data.length, obj, cfg, { onStep: (l) => void logs.push(l), ...hooks });
  return logs;
}

test('SPIN step 0: u = 0 exactly (loss log 2, zero rewards and margins); training lowers the loss and raises margins', async () =>
  withSeed(async (rng) => {
    const model = initLlama(be, tinyConfig({ vocab: 48 }), { seed: rng.int(0, 1e9), std: 0.1 });
    const data = pairs(rng, 12);
    // one micro-batch per step: the first step's metrics are exactly those of the untouched model
    const logs = await spinRun(model, data, loop({ gradientAccumulationSteps: 1, microBatchSize: 4, numTrainEpochs: 4 }));
    assert.equal(logs[0].loss, Math.fround(Math.LN2));
    assert.equal(logs[0]['rewards/margins'], 0);
    assert.equal(logs[0]['rewards/real'], 0);
    assert.equal(logs[0]['rewards/generated'], 0);
    const last = logs[logs.length - 1];
    assert.ok(last.loss < logs[0].loss - 0.05, `loss ${logs[0].loss} -> ${last.loss}`);
    assert.ok(last['rewards/margins'] > 0.1, `margins ${last['rewards/margins']}`);
    assert.equal(logs.length, 12);
    assert.ok(logs.every((l) => Number.isFinite(l.grad_norm) && l.grad_norm > 0));
    model.weights.free();
  }));

for (const lossType of ['ipo', 'sppo_hard'] as const)
  test(`${lossType}: step 0 loss is exactly ${lossType === 'ipo' ? '1/(4 beta^2)' : '1/(2 beta^2)'} (u = 0); training lowers it and brings the margins to the target`, async () =>
    withSeed(async (rng) => {
      const model = initLlama(be, tinyConfig({ vocab: 48 }), { seed: rng.int(0, 1e9), std: 0.1 });
      const data = pairs(rng, 12);
      // a smaller learning rate than the sigmoid test's: AdamW's first steps at 3e-3 throw the margins
      // far past the squared losses' targets (the loss then rises before it falls)
      const cfg = loop({ learningRate: 1e-4, gradientAccumulationSteps: 1, microBatchSize: 4, numTrainEpochs: 6 });
      const logs = await spinRun(model, data, cfg, {}, lossType);
      // beta = 0.5: the target 1/(2 beta) is 1, so the losses start at 1 (ipo) and 2 (sppo_hard), exactly
      assert.equal(logs[0].loss, lossType === 'ipo' ? 1 : 2);
      assert.equal(logs[0]['rewards/margins'], 0);
      assert.equal(logs.length, 18);
      assert.ok(logs.every((l) => Number.isFinite(l.grad_norm) && l.grad_norm > 0));
      // the last epoch (3 steps, every pair once): the optimum is margin 1/2 (ipo) or rewards +-1/2, margin 1 (sppo_hard)
      const lastEpoch = logs.slice(-3);
      const mean = (k: keyof StepLog) => lastEpoch.reduce((a, l) => a + (l[k] as number), 0) / lastEpoch.length;
      const [loss, margin] = [mean('loss'), mean('rewards/margins')];
      const what = `loss ${logs[0].loss} -> ${loss}, margins ${margin}`;
      assert.ok(loss < 0.25 * logs[0].loss, what);
      if (lossType === 'ipo') assert.ok(Math.abs(margin - 0.5) < 0.25, what);
      else {
        assert.ok(Math.abs(margin - 1) < 0.5, what);
        assert.ok(
          mean('rewards/real') > 0 && mean('rewards/generated') < 0,
          `${what}, rewards ${mean('rewards/real')} ${mean('rewards/generated')}`,
        );
      }
      model.weights.free();
    }));

test('a token budget (max_tokens_per_batch) cuts micro-batches into runs: u = 0 at step 0, and the same steps as without a budget', async () =>
  withSeed(async (rng) => {
    const seed = rng.int(0, 1e9);
    const data = pairs(rng, 12);
    const weights = async (m: LlamaModel) =>
      Promise.all([...m.weights.params.values()].map(async (t) => Float32Array.from(await ops.read(t))));
    const runs: { logs: StepLog[]; w: Float32Array[] }[] = [];
    // 12 pairs of 4..13 packed tokens each: a budget of 20 cuts each 4-pair micro-batch into 2-4 runs
    for (const maxTokensPerBatch of [0, 20]) {
      const model = initLlama(be, tinyConfig({ vocab: 48 }), { seed, std: 0.1 });
      const cfg = loop({ gradientAccumulationSteps: 1, microBatchSize: 4, numTrainEpochs: 1, maxGradNorm: null, maxTokensPerBatch });
      const logs = await spinRun(model, data, cfg);
      runs.push({ logs, w: await weights(model) });
      model.weights.free();
    }
    const [none, budget] = runs;
    // the reference pass cut the same runs: the first step sees u = 0 exactly
    assert.equal(budget.logs[0].loss, Math.fround(Math.LN2));
    assert.equal(budget.logs[0]['rewards/margins'], 0);
    // each run weighted by its share of the step's pairs: the loss is the mean over the step's pairs, as
    // without a budget (gradients summed in another order: f32 rounding apart)
    assert.equal(budget.logs.length, none.logs.length);
    budget.logs.forEach((l, i) =>
      assert.ok(Math.abs(l.loss - none.logs[i].loss) <= 1e-6, `step ${i}: loss ${l.loss} vs ${none.logs[i].loss}`),
    );
    let worst = 0;
    none.w.forEach((w, i) => {
      for (let k = 0; k < w.length; k++) worst = Math.max(worst, Math.abs(budget.w[i][k] - w[k]));
    });
    assert.ok(worst <= 1e-5, `weights after training differ by ${worst}`);
  }));

test('a run killed mid-training (and mid-checkpoint write) resumes to bit-identical final weights', async () =>
  withSeed(async (rng) => {
    const seed = rng.int(0, 1e9);
    const data = pairs(rng, 10);
    const cfg = loop({ saveSteps: 1, optim: { type: 'rmsprop' } });
    const straight = initLlama(be, tinyConfig({ vocab: 48 }), { seed, std: 0.1, dtype: 'bf16' });
    await spinRun(straight, data, cfg);
    const dir = mkdtempSync(join(tmpdir(), 'spinlm-resume-'));
    try {
      const crashed = initLlama(be, tinyConfig({ vocab: 48 }), { seed, std: 0.1, dtype: 'bf16' });
      const ckpt = join(dir, 'checkpoint');
      await assert.rejects(
        spinRun(crashed, data, cfg, {
          checkpointDir: ckpt,
          afterStep: (s: number) => {
            if (s === 3) throw new Error('injected crash');
          },
        }),
        /injected crash/,
      );
      crashed.weights.free();
      // a fresh process would reload the model from its iteration start; the checkpoint restores the rest
      // a crash in the middle of writing the next checkpoint leaves a torn temp dir: it must be ignored
      const { mkdirSync, writeFileSync } = await import('node:fs');
      mkdirSync(`${ckpt}.tmp`, { recursive: true });
      writeFileSync(join(`${ckpt}.tmp`, 'state.safetensors'), 'torn');
      // the checkpoint holds each bf16 parameter as its f32 master only (the parameter is the master rounded)
      const f = await openSafetensors(join(ckpt, 'state.safetensors'));
      try {
        const names = f.names();
        assert.ok(names.some((n) => n.startsWith('master.')) && names.some((n) => n.startsWith('optim.')));
        assert.deepEqual(
          names.filter((n) => n.startsWith('param.')),
          [],
        );
      } finally {
        await f.close();
      }
      const resumed = initLlama(be, tinyConfig({ vocab: 48 }), { seed, std: 0.1, dtype: 'bf16' });
      const logs = await spinRun(resumed, data, cfg, { checkpointDir: ckpt });
      assert.equal(logs[0].step, 4, 'resumes after the last checkpointed step');
      for (const [name, t] of straight.weights.params) assert.deepEqual(await ops.read(resumed.weights.get(name)), await ops.read(t), name);
      for (const [name, t] of straight.weights.masters)
        assert.deepEqual(await ops.read(resumed.weights.masters.get(name)!), await ops.read(t), name);
      resumed.weights.free();
    } finally {
      rmSync(dir, { recursive: true, force: true });
      straight.weights.free();
    }
  }));

test('tokens_per_s: no step of a checkpointed run reports an impossible rate (checkpoints drain the metric reads)', async () =>
  withSeed(async (rng) => {
    const data = pairs(rng, 18);
    const model = initLlama(be, tinyConfig({ vocab: 48 }), { seed: rng.int(0, 1e9), std: 0.1 });
    const dir = mkdtempSync(join(tmpdir(), 'spinlm-rate-'));
    try {
      // 6 steps, a checkpoint after every third: the steps at a checkpoint (and the last) used to read
      // their end a microsecond after the previous step's, a rate thousands of times the others
      const logs = await spinRun(model, data, loop({ saveSteps: 3, numTrainEpochs: 2 }), { checkpointDir: join(dir, 'ckpt') });
      assert.equal(logs.length, 6);
      const rates = logs.map((l) => l.tokens_per_s).sort((a, b) => a - b);
      const median = rates[Math.floor(rates.length / 2)];
      for (const l of logs)
        assert.ok(l.tokens_per_s > 0 && l.tokens_per_s < 20 * median, `step ${l.step}: ${l.tokens_per_s} tokens/s, median ${median}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
      model.weights.free();
    }
  }));

test('SFT lowers the answer NLL', async () =>
  withSeed(async (rng) => {
    const model = initLlama(be, tinyConfig({ vocab: 48 }), { seed: rng.int(0, 1e9) });
    // a learnable task: the answer repeats the prompt
    const seqs = Array.from({ length: 16 }, () => {
      const p = Array.from({ length: 4 }, () => rng.int(3, 40));
      return { prompt: p, answer: [...p, EOS] };
    });
    const logs: StepLog[] = [];
    await runTrainingLoop(model, seqs.length, new SftObjective(model, seqs, EOS, 0), loop({ numTrainEpochs: 6, microBatchSize: 4 }), {
      onStep: (l) => void logs.push(l),
    });
    assert.ok(logs[logs.length - 1].loss < logs[0].loss - 0.3, `NLL ${logs[0].loss} -> ${logs[logs.length - 1].loss}`);
    model.weights.free();
  }));

test('bf16 training keeps only the f32 masters during a step (bf16 copies made per layer), with or without gradient checkpointing, with bit-identical results', async () =>
  withSeed(async (rng) => {
    const seed = rng.int(0, 1e9);
    const data = pairs(rng, 12);
    for (const optim of [{ type: 'rmsprop' as const }, { type: 'adamw' as const, weightDecay: 0.01 }]) {
      const cfg = loop({ optim, gradientAccumulationSteps: 2, maxGradNorm: rng.next() < 0.5 ? 0.5 : null, learningRate: 1e-3 });
      // a parameter hook of its own (here: one that does nothing) keeps the full bf16 copies resident
      const full = initLlama(be, tinyConfig({ vocab: 48 }), { seed, std: 0.1, dtype: 'bf16' });
      full.paramHook = { acquire: () => {}, release: () => {} };
      const fullLogs = await spinRun(full, data, cfg);
      const lean = initLlama(be, tinyConfig({ vocab: 48 }), { seed, std: 0.1, dtype: 'bf16' });
      const total = lean.weights.params.size;
      const ref = await referenceLogps(lean, data, { microBatchSize: cfg.microBatchSize, seed: cfg.seed, eosId: EOS, padId: 0 });
      const inner = new SpinObjective(lean, data, ref, {
        beta: 0.5,
        lossType: 'sigmoid',
        nllAlpha: 0,
        dropIdentical: false,
        eosId: EOS,
        padId: 0,
      });
      const resident: number[] = [];
      // the embedding's and the head's bf16 copies are made around their own uses only: none is
      // resident while a layer runs (untied; src/model/param_units.ts unitOf)
      const outer = ['model.embed_tokens.weight', 'model.norm.weight', 'lm_head.weight'];
      let layerUses = 0;
      const outerInLayers: string[] = [];
      const obj = Object.create(inner) as SpinObjective;
      obj.microStep = (idx, w, m) => {
        resident.push(lean.weights.params.size);
        const hook = lean.paramHook!;
        lean.paramHook = {
          acquire: (u, phase) => {
            hook.acquire(u, phase);
            if (u < 0) return;
            layerUses++;
            outerInLayers.push(...outer.filter((n) => lean.weights.params.has(n)));
          },
          release: (u, phase) => hook.release(u, phase),
        };
        try {
          return inner.microStep(idx, w, m);
        } finally {
          lean.paramHook = hook;
        }
      };
      const leanLogs: StepLog[] = [];
      // gradient checkpointing (AdamW case) recomputes the same activations: still bit-identical
      const checkpointing = optim.type === 'adamw';
      await runTrainingLoop(
        lean,
        data.length,
        obj,
        { ...cfg, gradientCheckpointing: checkpointing },
        { onStep: (l) => void leanLogs.push(l) },
      );
      assert.equal(lean.recompute, checkpointing);
      assert.ok(
        layerUses > 0 && outerInLayers.length === 0,
        `bf16 copies resident during layers: ${[...new Set(outerInLayers)].join(', ')}`,
      );
      assert.ok(
        resident.length > 0 && resident.every((n) => n === 0),
        `bf16 copies resident at micro-step starts: ${resident.join(', ')} (of ${total})`,
      );
      assert.equal(lean.paramHook, null);
      assert.deepEqual(
        [...lean.weights.params.keys()],
        [...full.weights.params.keys()],
        'every parameter is back after training, in order',
      );
      for (const [name, t] of full.weights.params)
        assert.deepEqual(await ops.read(lean.weights.get(name)), await ops.read(t), `${optim.type}: ${name}`);
      for (const [name, t] of full.weights.masters)
        assert.deepEqual(await ops.read(lean.weights.masters.get(name)!), await ops.read(t), `${optim.type}: master ${name}`);
      const strip = (l: StepLog[]) => l.map(({ tokens_per_s: _, ...rest }) => rest);
      assert.deepEqual(strip(leanLogs), strip(fullLogs));
      full.weights.free();
      lean.weights.free();
    }
  }));

test('fused updates (LOMO-style): no gradients resident between steps, and the same weights and logs as unfused steps without clipping', async () =>
  withSeed(async (rng) => {
    const seed = rng.int(0, 1e9);
    const data = pairs(rng, 10);
    // untied: the LM head and final norm are updated right after the first backward matmuls (their
    // unit is released there); tied: the shared embedding waits for the end of the backward
    const cases = [
      { optim: { type: 'rmsprop' as const }, dtype: 'bf16' as const, checkpointing: false, tie: false },
      { optim: { type: 'adamw' as const, weightDecay: 0.01 }, dtype: 'bf16' as const, checkpointing: true, tie: true },
      { optim: { type: 'adamw' as const }, dtype: 'f32' as const, checkpointing: rng.next() < 0.5, tie: rng.next() < 0.5 },
    ];
    for (const { optim, dtype, checkpointing, tie } of cases) {
      const what = `${optim.type}, ${dtype}, checkpointing ${checkpointing}, tied ${tie}`;
      const cfg = loop({
        optim,
        gradientAccumulationSteps: 1,
        maxGradNorm: null,
        learningRate: 1e-3,
        gradientCheckpointing: checkpointing,
      });
      const plain = initLlama(be, tinyConfig({ vocab: 48, tie }), { seed, std: 0.1, dtype });
      const plainLogs = await spinRun(plain, data, cfg);
      const fused = initLlama(be, tinyConfig({ vocab: 48, tie }), { seed, std: 0.1, dtype });
      const gradsAtStep: number[] = [];
      // what is resident when the embedding's gradient appears (the end of the backward)
      const withEmbedding: string[][] = [];
      const set = fused.weights.grads.set.bind(fused.weights.grads);
      fused.weights.grads.set = (name, g) => {
        if (name === 'model.embed_tokens.weight') withEmbedding.push([...fused.weights.grads.keys()]);
        return set(name, g);
      };
      const fusedLogs = await spinRun(
        fused,
        data,
        { ...cfg, fusedUpdate: true },
        { afterStep: () => gradsAtStep.push(fused.weights.grads.size) },
      );
      assert.ok(
        gradsAtStep.length === plainLogs.length && gradsAtStep.every((n) => n === 0),
        `${what}: gradients resident after steps: ${gradsAtStep}`,
      );
      assert.equal(fused.paramHook, null, `${what}: the hooks are removed`);
      assert.ok(withEmbedding.length > 0, `${what}: the embedding's gradient appears once per backward`);
      if (!tie)
        assert.ok(
          withEmbedding.every((names) => names.length === 0),
          `${what}: when the embedding's gradient appears, every other one is applied and freed: ${withEmbedding.find((n) => n.length)}`,
        );
      for (const [name, t] of plain.weights.params)
        assert.deepEqual(await ops.read(fused.weights.get(name)), await ops.read(t), `${what}: ${name}`);
      for (const [name, t] of plain.weights.masters)
        assert.deepEqual(await ops.read(fused.weights.masters.get(name)!), await ops.read(t), `${what}: master ${name}`);
      const strip = (l: StepLog[]) => l.map(({ tokens_per_s: _, ...rest }) => rest);
      assert.deepEqual(strip(fusedLogs), strip(plainLogs), `${what}: the same losses, metrics and gradient norms`);
      plain.weights.free();
      fused.weights.free();
    }
  }));

test('fused updates refuse clipping and gradient accumulation', async () => {
  const model = initLlama(be, tinyConfig({ vocab: 48 }), { seed: 1, std: 0.1 });
  const obj = { metricNames: ['loss'], microStep: () => 0 };
  await assert.rejects(
    runTrainingLoop(model, 4, obj, loop({ fusedUpdate: true, gradientAccumulationSteps: 1 })),
    /cannot clip.*max_grad_norm 0/,
  );
  await assert.rejects(runTrainingLoop(model, 4, obj, loop({ fusedUpdate: true, maxGradNorm: null })), /one micro-batch per step/);
  model.weights.free();
});
