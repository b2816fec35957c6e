// One LoRA or full fine-tuning measurement in a fresh process, for bench/lora.bench.ts (issue 30's goals):
// load the model (the peak RSS right after LlamaModel.load is the load's own), then SPIN steps
// (SpinObjective + runTrainingLoop, RMSProp, gradient checkpointing on) on random pairs, each pair one
// packed sequence (prompt, real answer, generated answer). Prints one JSON line: load seconds and peak
// RSS, steps/s, ms per step, tokens/s (the packed positions a step computes), the final peak RSS (VmHWM)
// and the allocator's peak live tensor bytes during the timed steps.
// Usage: node --import tsx bench/lora_probe.ts MODEL_DIR '{"mode":"lora","lengths":[[128,128,128],[128,128,128]],"steps":2,"warmup":1,"r":16}'
// (mode lora: adapters of rank r on every linear layer of the decoder layers ("all-linear"), base frozen
//  in its stored dtype; mode full: every parameter trained; lengths: per pair [prompt, real answer,
//  generated answer] tokens, all the pairs one micro-batch; warmup: untimed steps first, in their own
//  runTrainingLoop call; steps: timed steps, one runTrainingLoop call)
import { readFileSync } from 'node:fs';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { LlamaModel } from '../src/model/llama.js';
import { SpinObjective } from '../src/spin/objectives.js';
import { type LoopConfig, runTrainingLoop } from '../src/spin/train_loop.js';
import { Rng } from '../src/util/rng.js';
import { peakRss } from './harness.js';

const [modelDir, workJson] = process.argv.slice(2);
const work = {
  mode: 'lora',
  lengths: [
    [128, 128, 128],
    [128, 128, 128],
  ],
  steps: 2,
  warmup: 1,
  r: 16,
  ...(JSON.parse(workJson ?? '{}') as object),
} as { mode: 'lora' | 'full'; lengths: number[][]; steps: number; warmup: number; r: number };
if (work.mode !== 'lora' && work.mode !== 'full') throw new Error(`mode must be lora or full, got ${String(work.mode)}`);

const mb = (bytes: number) => bytes / 2 ** 20;
const rssMb = () => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) / 1024;
const log = (msg: string) => console.error(`[lora_probe ${new Date().toISOString()}] ${msg}`);

const be = new CpuBackend();
const t0 = performance.now();
const model = await LlamaModel.load(be, modelDir);
const loadS = (performance.now() - t0) / 1000;
const loadPeakMb = mb(peakRss());
const params = model.weights.count();
log(
  `loaded ${params} parameters (${model.weights.get('model.embed_tokens.weight').dtype}) in ${loadS.toFixed(1)} s, peak RSS ${loadPeakMb.toFixed(0)} MiB`,
);

const cfg = model.cfg;
const rng = new Rng(11);
const tokens = (n: number) => Array.from({ length: n }, () => rng.int(3, cfg.vocabSize - 1));
const B = work.lengths.length;
const makePairs = (steps: number) =>
  Array.from({ length: steps }, () =>
    work.lengths.map(([p, r, g]) => {
      const prompt = tokens(p);
      return { real: { prompt, answer: tokens(r) }, generated: { prompt, answer: tokens(g) } };
    }),
  ).flat();
const stepTokens = work.lengths.reduce((a, [p, r, g]) => a + p + r + g, 0);

const loop: LoopConfig = {
  learningRate: 5e-5,
  optim: { type: 'rmsprop' },
  lrSchedulerType: 'constant',
  warmupRatio: 0,
  microBatchSize: B,
  gradientAccumulationSteps: 1,
  numTrainEpochs: 1,
  maxGradNorm: 1,
  seed: 1,
  saveSteps: 0,
  gradientCheckpointing: true,
  ...(work.mode === 'lora' ? { lora: { r: work.r, alpha: 2 * work.r, dropout: 0, targetModules: 'all-linear', useRslora: false } } : {}),
} as LoopConfig;

let last: Record<string, unknown> = {};
/** Runs `steps` SPIN steps in one runTrainingLoop call; returns the wall milliseconds. */
async function run(steps: number): Promise<number> {
  const pairs = makePairs(steps);
  const ref = new Float32Array(2 * pairs.length).map(() => (-stepTokens * Math.log(cfg.vocabSize)) / (2 * B) + rng.normal());
  const obj = new SpinObjective(model, pairs, ref, {
    beta: 0.1,
    lossType: 'sigmoid',
    nllAlpha: 0,
    dropIdentical: false,
    eosId: 2,
    padId: 0,
  });
  const start = performance.now();
  const { steps: done } = await runTrainingLoop(model, pairs.length, obj, loop, {
    onStep: (s) => {
      last = s as unknown as Record<string, unknown>;
      log(
        `step done after ${((performance.now() - start) / 1000).toFixed(1)} s, RSS ${rssMb().toFixed(0)} MiB, peak ${mb(peakRss()).toFixed(0)} MiB`,
      );
    },
  });
  if (done !== steps) throw new Error(`ran ${done} steps, expected ${steps}`);
  return performance.now() - start;
}

const warmupMs = work.warmup > 0 ? await run(work.warmup) : NaN;
be.native.peakLiveBytes(true);
const ms = (await run(work.steps)) / work.steps;
const trained = work.mode === 'lora' ? [...model.weights.params].filter(([name]) => !model.weights.frozen(name)) : [];
console.log(
  JSON.stringify({
    mode: work.mode,
    params,
    adapter_params: trained.reduce((a, [, t]) => a + t.numel, 0),
    step_tokens: stepTokens,
    load_s: loadS,
    load_peak_rss_mb: loadPeakMb,
    warmup_ms_per_step: warmupMs / work.warmup,
    ms_per_step: ms,
    steps_per_s: 1000 / ms,
    tokens_per_s: (stepTokens * 1000) / ms,
    peak_rss_mb: mb(peakRss()),
    peak_live_mb: mb(be.native.peakLiveBytes(false)),
    loss: last.loss,
    grad_norm: last.grad_norm,
  }),
);
