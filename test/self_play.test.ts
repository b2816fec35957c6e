// The self-play driver: stages leave files, a run killed at generation, mid-training or between
// iterations resumes without redoing finished work, and ends with the weights of an uninterrupted run.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { initLlama } from '../src/model/init.js';
import { LlamaModel } from '../src/model/llama.js';
import { tokenizePair } from '../src/spin/batch.js';
import { referenceLogps } from '../src/spin/objectives.js';
import { chooseOpponentAnswers, type SelfPlayHooks, type SelfPlayOptions, runSelfPlay } from '../src/spin/self_play.js';
import { padIdOf } from '../src/spin/sft.js';
import { formatPrompt } from '../src/text/templates.js';
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
  lengthNormalized: false,
  mixPrevious: true,
  referenceModel: 'previous',
  opponentSamples: 1,
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

test('opponent_samples: each draw has its own journal and streams; the first draw that differs from the real answer is chosen', async () =>
  withSeed(async (rng) => {
    const root = mkdtempSync(join(tmpdir(), 'spinlm-selfplay-'));
    try {
      const { init, tok } = await setup(root, rng.int(0, 1e9));
      const k = 3;
      const shift = rng.int(0, 3);
      // draw s differs from the real answer exactly for the prompts with (i + shift) % 4 === s: prompts
      // with (i + shift) % 4 === 3 get the real answer in every draw, and then draw 0 is kept
      const differs = (i: number, s: number) => (i + shift) % 4 === s;
      const seen: { t: number; sample: number; file: string; n: number }[] = [];
      const out = join(root, 'k');
      await runSelfPlay(
        be,
        init,
        tok,
        sft,
        { ...options(out), opponentSamples: k },
        {
          generate: async (_m, prompts, t, file, sample) => {
            seen.push({ t, sample, file, n: prompts.length });
            return prompts.map((_, i) => (differs(i, sample) ? `d${sample}-${i}-${t}` : sft[i].real));
          },
        },
      );
      assert.deepEqual(
        seen.map((c) => [c.t, c.sample, c.n]),
        [0, 1].flatMap((t) => [0, 1, 2].map((s) => [t, s, sft.length])),
      );
      const files = seen.map((c) => c.file);
      assert.equal(new Set(files).size, files.length, 'every draw of every iteration journals to its own file');
      for (const t of [0, 1]) {
        const chosen = JSON.parse(readFileSync(join(out, `iter-${t}`, 'generated.json'), 'utf8')) as string[];
        const expected = sft.map((p, i) => {
          const s = [0, 1, 2].find((d) => differs(i, d));
          return s === undefined ? p.real : `d${s}-${i}-${t}`;
        });
        assert.deepEqual(chosen, expected);
      }
      for (const f of files) assert.ok(!existsSync(f), `${f}: journals are removed once generated.json is written`);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  }));

test('chooseOpponentAnswers: first differing draw, else draw 0', () => {
  const reals = ['a', 'b', 'c'];
  assert.deepEqual(
    chooseOpponentAnswers(
      [
        ['a', 'x', 'c'],
        ['y', 'z', 'c'],
      ],
      reals,
    ),
    ['y', 'x', 'c'],
  );
  assert.deepEqual(chooseOpponentAnswers([['q', 'b', 'r']], reals), ['q', 'b', 'r']);
});

test('reference_model initial: every iteration is scored by θ0; previous (the paper) scores by the opponent θ_t', async () =>
  withSeed(async (rng) => {
    const root = mkdtempSync(join(tmpdir(), 'spinlm-selfplay-'));
    try {
      const { init, tok } = await setup(root, rng.int(0, 1e9));
      const refs: Record<string, Float32Array[]> = {};
      for (const mode of ['previous', 'initial'] as const) {
        const out = join(root, mode);
        await runSelfPlay(be, init, tok, sft, { ...options(out), referenceModel: mode }, { generate: fakeGenerate([]) });
        refs[mode] = [0, 1].map((t) => Float32Array.from(JSON.parse(readFileSync(join(out, `iter-${t}`, 'ref_logps.json'), 'utf8'))));
      }
      // iteration 0: the opponent is θ0 either way
      assert.deepEqual(refs.initial[0], refs.previous[0]);
      // iteration 1 (10 pairs of its own answers, then 10 of iteration 0's: mixing): θ0's scores, recomputed here
      const o = options('');
      const prompts = sft.map((p) => formatPrompt(tok, o.template, p.prompt));
      const answers = [0, 1].map((t) => JSON.parse(readFileSync(join(root, 'initial', `iter-${t}`, 'generated.json'), 'utf8')) as string[]);
      const pairs = [...answers[1], ...answers[0]].map((g, j) =>
        tokenizePair(tok, prompts[j % sft.length], sft[j % sft.length].real, g, o.truncation),
      );
      const theta0 = await LlamaModel.load(be, init);
      const expected = await referenceLogps(theta0, pairs, {
        microBatchSize: o.loop.microBatchSize,
        seed: o.loop.seed + 1,
        eosId: tok.eosId,
        padId: padIdOf(tok),
      });
      theta0.weights.free();
      assert.deepEqual(refs.initial[1], expected);
      assert.notDeepEqual(refs.previous[1], expected, 'the refreshed reference is θ1, which training moved away from θ0');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  }));
