// `spinlm demo`: the embedded default. From the shipped weak model θ0 (or one retrained from scratch),
// three self-play iterations on the same SFT prompts with the official SPIN loss, the same with an NLL
// term on the real answer, and continued SFT given the same optimizer steps; held-out exact match and
// real-answer log-prob per iteration for each. Which arm wins at this scale is a finding, not a given
// (docs/demo.md).
import { existsSync } from 'node:fs';
import { cp, mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Backend } from '../backend/backend.js';
import { parseConfig } from '../model/config.js';
import { initLlama } from '../model/init.js';
import { writeByteTokenizer } from '../text/byte_tokenizer.js';
import { loadTokenizer } from '../text/tokenizer.js';
import { writeFileAtomic } from '../util/atomic.js';
import { DEMO_MODEL_CONFIG, DEMO_SFT_LOOP, DEMO_TRUNCATION, demoTasks } from './demo_setup.js';
import { type EvalSettings, evaluateTasks, type TaskEval } from './evaluate.js';
import { DEMO_GENERATION, evaluateTheta0, type ExperimentRun, readRunEvals, runExperiment } from './experiment.js';
import type { SelfPlayOptions } from './self_play.js';
import { runSft } from './sft.js';
import type { LoopHooks, StepLog } from './train_loop.js';

export interface DemoArm {
  name: string;
  description: string;
  overrides: Partial<SelfPlayOptions>;
}

/** The three arms, each from θ0 with the same data and the same optimizer steps per iteration. */
export const DEMO_ARMS: DemoArm[] = [
  { name: 'spin', description: 'SPIN, the official loss (sigmoid, beta 0.1)', overrides: { arm: 'spin', nllAlpha: 0 } },
  { name: 'spin+nll', description: 'SPIN plus an NLL term on the real answer (alpha 1)', overrides: { arm: 'spin', nllAlpha: 1 } },
  { name: 'sft', description: 'continued SFT on the real answers, same optimizer steps', overrides: { arm: 'sft', nllAlpha: 0 } },
];

export interface DemoOptions {
  outDir: string;
  /** Where the shipped θ0 lives (a Hugging Face directory). */
  theta0Dir: string;
  /** Retrain θ0 with `spinlm sft`'s recipe instead of using the shipped one. */
  fromScratch: boolean;
  iterations: number;
  /** SFT prompts the opponent answers each iteration. */
  prompts: number;
  /** Held-out tasks to evaluate on. */
  evalTasks: number;
  /** Shorter everything, for CI. */
  quick: boolean;
}

export interface DemoRow {
  arm: string;
  iteration: number;
  exactMatch: number;
  heldoutLogp: number;
  byTask: Record<string, number>;
}

export interface DemoHooks {
  onStage?: (arm: string, iteration: number, stage: string) => void;
  onStep?: (arm: string, iteration: number, log: StepLog) => void;
  onSftStep?: LoopHooks['onStep'];
  onRow?: (row: DemoRow) => void;
}

/** The self-play settings of every arm (overridden per arm). Small learning rates: docs/demo.md. */
export function demoSelfPlayOptions(outDir: string, iterations: number, quick: boolean): SelfPlayOptions {
  return {
    outDir,
    iterations,
    arm: 'spin',
    learningRates: [5e-5],
    betas: [0.1],
    lossType: 'sigmoid',
    nllAlpha: 0,
    dropIdentical: false,
    lengthNormalized: false,
    mixPrevious: true,
    referenceModel: 'previous',
    opponentSamples: 1,
    loop: {
      optim: { type: 'rmsprop', alpha: 0.99, eps: 1e-8, weightDecay: 0 },
      lrSchedulerType: 'linear',
      warmupRatio: 0.1,
      microBatchSize: quick ? 16 : 32,
      gradientAccumulationSteps: 2,
      numTrainEpochs: quick ? 1 : 2,
      maxGradNorm: 1.0,
      seed: 7,
      saveSteps: 10,
    },
    truncation: DEMO_TRUNCATION,
    template: 'instruction',
  };
}

/** The demo's evaluation: greedy answers of at most 32 tokens and log-probs, 64 at a time (docs/demo.md). */
export const DEMO_EVAL: EvalSettings = {
  template: 'instruction',
  truncation: DEMO_TRUNCATION,
  logpBatchSize: 64,
  generationBatchSize: 64,
  maxNewTokens: 32,
};

/** Trains θ0 from scratch with the demo recipe (what `spinlm demo --from-scratch` and the shipped θ0 come from). */
export async function trainTheta0(be: Backend, dir: string, hooks: LoopHooks = {}, opts: { quick?: boolean } = {}): Promise<void> {
  if (existsSync(join(dir, 'model.safetensors'))) return;
  const tmp = `${dir}.partial`;
  await mkdir(tmp, { recursive: true });
  await writeByteTokenizer(tmp);
  const model = initLlama(be, parseConfig(DEMO_MODEL_CONFIG, 'demo model'), { seed: 2024 });
  try {
    const tok = await loadTokenizer(tmp);
    const { train } = demoTasks();
    const loop = opts.quick ? { ...DEMO_SFT_LOOP, numTrainEpochs: 1 } : DEMO_SFT_LOOP;
    const data = (opts.quick ? train.slice(0, 2000) : train).map((t) => ({ prompt: t.prompt, real: t.answer }));
    await runSft(
      model,
      tok,
      data,
      { loop, truncation: DEMO_TRUNCATION, template: 'instruction' },
      { ...hooks, checkpointDir: join(tmp, 'checkpoint') },
    );
    await model.save(tmp);
    await rm(join(tmp, 'checkpoint'), { recursive: true, force: true });
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
  } finally {
    model.weights.free();
  }
}

export async function runDemo(be: Backend, opts: DemoOptions, hooks: DemoHooks = {}): Promise<DemoRow[]> {
  await mkdir(opts.outDir, { recursive: true });
  const theta0 = join(opts.outDir, 'theta0');
  if (opts.fromScratch) {
    hooks.onStage?.('theta0', 0, 'sft');
    await trainTheta0(be, theta0, { onStep: hooks.onSftStep }, { quick: opts.quick });
  } else if (!existsSync(join(theta0, 'model.safetensors'))) {
    if (!existsSync(join(opts.theta0Dir, 'model.safetensors'))) {
      throw new Error(`the shipped weak model is missing from ${opts.theta0Dir}: reinstall spinlm, or run \`spinlm demo --from-scratch\``);
    }
    await cp(opts.theta0Dir, theta0, { recursive: true });
  }
  const { train, test } = demoTasks();
  const heldout = test.slice(0, opts.evalTasks);
  const sft = train.slice(0, opts.prompts).map((t) => ({ prompt: t.prompt, real: t.answer }));
  const tok = await loadTokenizer(theta0);
  hooks.onStage?.('theta0', 0, 'evaluate');
  const r0 = await evaluateTheta0(be, theta0, (m) => evaluateTasks(m, tok, heldout, DEMO_EVAL));
  for (const arm of DEMO_ARMS) hooks.onRow?.({ arm: arm.name, iteration: 0, ...r0 });
  const runs: ExperimentRun[] = DEMO_ARMS.map((arm) => {
    const { outDir: _o, iterations: _i, ...selfPlay } = { ...demoSelfPlayOptions('', opts.iterations, opts.quick), ...arm.overrides };
    return {
      arm: arm.name,
      seed: selfPlay.loop.seed,
      dir: join(opts.outDir, arm.name),
      selfPlay,
      generation: DEMO_GENERATION,
      generationSeed: 0,
    };
  });
  await runExperiment(
    {
      backend: be,
      theta0,
      tokenizer: tok,
      prompts: sft,
      iterations: opts.iterations,
      runs,
      evaluate: async (model, run, t) => {
        const r = await evaluateTasks(model, tok, heldout, DEMO_EVAL);
        hooks.onRow?.({ arm: run.arm, iteration: t + 1, ...r });
        return r as unknown as Record<string, unknown>;
      },
    },
    {
      onStep: (run, t, l) => hooks.onStep?.(run.arm, t, l),
      onStage: (run, t, s) => hooks.onStage?.(run.arm, t, s),
    },
  );
  // per arm: θ0, then the iterations from their eval.json files (those of resumed runs included)
  const rows: DemoRow[] = [];
  for (const run of runs) {
    rows.push({ arm: run.arm, iteration: 0, ...r0 });
    (await readRunEvals<TaskEval>(run.dir, opts.iterations)).forEach((e, t) => rows.push({ arm: run.arm, iteration: t + 1, ...e! }));
  }
  await writeFileAtomic(join(opts.outDir, 'demo_results.json'), JSON.stringify(rows, null, 2));
  return rows;
}
