// The experiment runner (src/spin/experiment.ts) behind `spinlm run`, `demo` and `sweep`: θ0's
// evaluation is kept in its file, runs land in their directories, a rerun resumes a killed run to the
// weights of an uninterrupted one, and the evaluations are read back from the eval.json files.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { initLlama } from '../src/model/init.js';
import {
  evaluateTheta0,
  type Experiment,
  type ExperimentRun,
  type GenerationSettings,
  readRunEvals,
  runDirOf,
  runExperiment,
} from '../src/spin/experiment.js';
import { writeByteTokenizer } from '../src/text/byte_tokenizer.js';
import { loadTokenizer } from '../src/text/tokenizer.js';
import { tinyConfig } from './helpers/tiny_model.js';

const be = new CpuBackend();
const sft = Array.from({ length: 8 }, (_, i) => ({ prompt: `Add: ${i}+${i}`, real: `${2 * i}` }));
const generation: GenerationSettings = {
  temperature: 1,
  topP: 1,
  topK: 0,
  maxNewTokens: 6,
  batchSize: 4,
  kvCacheDtype: 'auto',
  computeDtype: 'f32',
};

async function setup(root: string) {
  const theta0 = join(root, 'theta0');
  mkdirSync(theta0, { recursive: true });
  await writeByteTokenizer(theta0);
  await initLlama(be, tinyConfig(), { seed: 11, std: 0.05 }).save(theta0);
  return { theta0, tok: await loadTokenizer(theta0) };
}

function runsOf(out: string, seeds: number[]): ExperimentRun[] {
  return seeds.flatMap((seed) =>
    (['spin', 'sft'] as const).map((arm) => ({
      arm,
      seed,
      dir: runDirOf(out, arm, seed),
      generation,
      generationSeed: seed,
      selfPlay: {
        arm,
        learningRates: [2e-3],
        betas: [0.5],
        lossType: 'sigmoid' as const,
        nllAlpha: 0,
        dropIdentical: false,
        lengthNormalized: false,
        mixPrevious: true,
        referenceModel: 'previous' as const,
        opponentSamples: 1,
        loop: {
          optim: { type: 'rmsprop' as const },
          lrSchedulerType: 'linear' as const,
          warmupRatio: 0.1,
          microBatchSize: 4,
          gradientAccumulationSteps: 1,
          numTrainEpochs: 1,
          maxGradNorm: 1,
          seed: 0,
          saveSteps: 1,
        },
        truncation: { maxLength: 48, maxPromptLength: 32 },
        template: 'instruction' as const,
      },
    })),
  );
}

test('runs arms x seeds in OUT/ARM/seed-S, resumes a killed run to the same weights, reads the evaluations back', async () => {
  const root = mkdtempSync(join(tmpdir(), 'spinlm-experiment-'));
  try {
    const { theta0, tok } = await setup(root);
    const experiment = (out: string): Experiment => ({
      backend: be,
      theta0,
      tokenizer: tok,
      prompts: sft,
      iterations: 2,
      runs: runsOf(out, [1, 2]),
      evaluate: async (m, run, t) => ({ arm: run.arm, seed: run.seed, iteration: t, params: m.weights.params.size }),
    });

    // θ0's evaluation: computed once and kept in its file
    let evaluations = 0;
    const file = join(root, 'a', 'theta0', 'eval.json');
    const e0 = await evaluateTheta0(be, theta0, async () => ({ n: ++evaluations }), file);
    assert.deepEqual(await evaluateTheta0(be, theta0, async () => ({ n: ++evaluations }), file), e0);
    assert.equal(evaluations, 1);

    const order: string[] = [];
    const finals = await runExperiment(experiment(join(root, 'a')), { onRunDone: (r) => void order.push(`${r.arm}/${r.seed}`) });
    assert.deepEqual(order, ['spin/1', 'sft/1', 'spin/2', 'sft/2'], 'seed-major order');
    assert.deepEqual(
      finals,
      runsOf(join(root, 'a'), [1, 2]).map((r) => join(r.dir, 'iter-1', 'model')),
    );
    for (const r of runsOf(join(root, 'a'), [1, 2])) {
      const evals = await readRunEvals(r.dir, 2);
      assert.deepEqual(
        evals.map((e) => e && [e.arm, e.seed, e.iteration]),
        [
          [r.arm, r.seed, 0],
          [r.arm, r.seed, 1],
        ],
      );
      assert.equal(existsSync(join(r.dir, 'iter-0', 'generated.json')), r.arm === 'spin', 'the sft arm needs no answers');
    }

    // killed in the second iteration of spin/2 (an injected crash), then resumed
    const b = join(root, 'b');
    await assert.rejects(
      runExperiment(experiment(b), {
        afterStep: (r, t, s) => {
          if (r.arm === 'spin' && r.seed === 2 && t === 1 && s === 1) throw new Error('injected crash');
        },
      }),
      /injected crash/,
    );
    assert.deepEqual(await readRunEvals(runDirOf(b, 'spin', 2), 2).then((x) => x.map((e) => e !== null)), [true, false]);
    const stages: string[] = [];
    await runExperiment(experiment(b), { onStage: (r, t, s) => void stages.push(`${r.arm}/${r.seed}:${t}:${s}`) });
    assert.deepEqual(stages, [
      'spin/2:1:train',
      'spin/2:1:save',
      'spin/2:1:evaluate',
      'sft/2:0:train',
      'sft/2:0:save',
      'sft/2:0:evaluate',
      'sft/2:1:train',
      'sft/2:1:save',
      'sft/2:1:evaluate',
    ]);
    for (const r of runsOf(b, [1, 2])) {
      const a = runDirOf(join(root, 'a'), r.arm, r.seed);
      assert.ok(
        readFileSync(join(r.dir, 'iter-1', 'model', 'model.safetensors')).equals(
          readFileSync(join(a, 'iter-1', 'model', 'model.safetensors')),
        ),
        `${r.arm}/${r.seed}: the resumed run ends with the uninterrupted run's weights`,
      );
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
