// The self-play driver: stages leave files, a run killed at generation, mid-training or between
// iterations resumes without redoing finished work, and ends with the weights of an uninterrupted run.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { initLlama } from '../src/model/init.js';
import { LlamaModel } from '../src/model/llama.js';
import { type SelfPlayHooks, type SelfPlayOptions, runSelfPlay } from '../src/spin/self_play.js';
import { writeByteTokenizer } from '../src/text/byte_tokenizer.js';
import { loadTokenizer } from '../src/text/tokenizer.js';
import { withSeed } from './helpers/random.js';
import { tinyConfig } from './helpers/tiny_model.js';
import * as ops from '../src/ops/index.js';

const be = new CpuBackend();

const options = (outDir: string, arm: 'spin' | 'sft' = 'spin'): SelfPlayOptions => ({
  outDir,
  iterations: 2,
  arm,
  learningRates: [2e-3, 1e-3],
  betas: [0.5],
  lossType: 'sigmoid',
  nllAlpha: 0,
  dropIdentical: false,
  mixPrevious: true,
  loop: {
    optim: { type: 'rmsprop' },
    lrSchedulerType: 'linear',
    warmupRatio: 0.1,
    microBatchSize: 4,
    gradientAccumulationSteps: 1,
    numTrainEpochs: 1,
    maxGradNorm: 1,
    seed: 3,
    saveSteps: 1,
  },
  truncation: { maxLength: 64, maxPromptLength: 40 },
  template: 'instruction',
});

/** A stand-in opponent for the test: answers depend on the prompt and the iteration only. */
function fakeGenerate(calls: string[], crashOnce: { at?: string } = {}): SelfPlayHooks['generate'] {
  return async (_model, prompts, t) => {
    const key = `gen-${t}`;
    calls.push(key);
    if (crashOnce.at === key) {
      crashOnce.at = undefined;
      throw new Error('injected crash in generation');
    }
    return prompts.map((p, i) => `${p.length % 7}${t}x${i % 3}`);
  };
}

async function setup(root: string, seed: number) {
  const init = join(root, 'init');
  mkdirSync(init, { recursive: true });
  await writeByteTokenizer(init);
  await initLlama(be, tinyConfig(), { seed, std: 0.05 }).save(init);
  return { init, tok: await loadTokenizer(init) };
}

const sft = Array.from({ length: 10 }, (_, i) => ({ prompt: `Add: ${i}+${i}`, real: `${2 * i}` }));

test('killed at generation, mid-training and between iterations: resumes to the same final weights', async () =>
  withSeed(async (rng) => {
    const root = mkdtempSync(join(tmpdir(), 'spinlm-selfplay-'));
    try {
      const { init, tok } = await setup(root, rng.int(0, 1e9));
      const straightCalls: string[] = [];
      const straight = await runSelfPlay(be, init, tok, sft, options(join(root, 'a')), {
        generate: fakeGenerate(straightCalls),
        evaluate: async () => ({ ok: 1 }),
      });
      assert.deepEqual(straightCalls, ['gen-0', 'gen-1']);
      for (const f of [
        'generated.json',
        'ref_logps.json',
        'model/config.json',
        'model/model.safetensors',
        'model/tokenizer.json',
        'eval.json',
      ]) {
        assert.ok(existsSync(join(root, 'a', 'iter-0', f)), f);
      }
      assert.ok(!existsSync(join(root, 'a', 'iter-0', 'checkpoint')), 'step checkpoints are removed once the model is saved');

      const out = join(root, 'b');
      const calls: string[] = [];
      const crash = { at: 'gen-1' };
      let crashStep: [number, number] | null = [0, 2];
      const hooks: SelfPlayHooks = {
        generate: fakeGenerate(calls, crash),
        afterStep: (t, s) => {
          if (crashStep && t === crashStep[0] && s === crashStep[1]) {
            crashStep = null;
            throw new Error('injected crash in training');
          }
        },
      };
      await assert.rejects(runSelfPlay(be, init, tok, sft, options(out), hooks), /crash in training/);
      await assert.rejects(runSelfPlay(be, init, tok, sft, options(out), hooks), /crash in generation/);
      const final = await runSelfPlay(be, init, tok, sft, options(out), hooks);
      assert.deepEqual(calls, ['gen-0', 'gen-1', 'gen-1'], 'finished generations are never redone');
      const [a, b] = [await LlamaModel.load(be, straight), await LlamaModel.load(be, final)];
      for (const [name, t] of a.weights.params) assert.deepEqual(await ops.read(b.weights.get(name)), await ops.read(t), name);
      a.weights.free();
      b.weights.free();
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  }));

test('the continued-SFT arm takes as many optimizer steps as SPIN on the same data', async () =>
  withSeed(async (rng) => {
    const root = mkdtempSync(join(tmpdir(), 'spinlm-selfplay-'));
    try {
      const { init, tok } = await setup(root, rng.int(0, 1e9));
      const steps = { spin: [0, 0], sft: [0, 0] };
      for (const arm of ['spin', 'sft'] as const) {
        await runSelfPlay(be, init, tok, sft, options(join(root, arm), arm), {
          generate: fakeGenerate([]),
          onStep: (t) => void steps[arm][t]++,
        });
      }
      assert.deepEqual(steps.sft, steps.spin);
      assert.deepEqual(steps.spin, [3, 5], '10 pairs, then 20 with the previous iteration mixed in, 4 per step');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  }));
