// One SPIN step in a fresh process against the spinlm tree at ROOT, for
// bench/pack.bench.ts: the same pairs whatever the tree, so the tree before the packed pair layout
// (two padded rows per pair) and this one (one packed row, the prompt once) are compared on equal work.
// Prints one JSON line: steps/s, peak RSS, the tokens the layout computes.
// Usage: node --import tsx bench/pack_probe.ts ROOT spin MODEL_DIR '{"lengths":[[512,256,256]],"steps":1,"ckpt":1}'
// (lengths: per pair [prompt, real answer, generated answer] tokens; the pairs form one micro-batch)
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const [root, mode, modelDir, workJson] = process.argv.slice(2);
const work = { lengths: [[512, 256, 256]], steps: 1, ckpt: 1, ...(JSON.parse(workJson ?? '{}') as object) } as {
  lengths: number[][];
  steps: number;
  ckpt: number;
};
const src = (p: string) => import(join(root, 'src', p));
const { CpuBackend } = await src('backend/cpu/cpu_backend.ts');
const { LlamaModel } = await src('model/llama.ts');
const { runTrainingLoop } = await src('spin/train_loop.ts');
const { SpinObjective } = await src('spin/objectives.ts');
const { Rng } = await src('util/rng.ts');

const peakMb = () => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) / 1024;
const be = new CpuBackend();
const model = await LlamaModel.load(be, modelDir);
const cfg = model.cfg;
const rng = new Rng(7);
const tokens = (n: number) => Array.from({ length: n }, () => rng.int(3, cfg.vocabSize - 1));
const B = work.lengths.length;
const makePairs = () =>
  work.lengths.map(([p, r, g]) => {
    const prompt = tokens(p);
    return { real: { prompt, answer: tokens(r) }, generated: { prompt, answer: tokens(g) } };
  });
const packedTokens = work.lengths.reduce((a, [p, r, g]) => a + p + r + g, 0);
const paddedTokens = 2 * B * Math.max(...work.lengths.map(([p, r, g]) => p + Math.max(r, g)));

if (mode === 'spin') {
  const loop = {
    learningRate: 5e-7,
    optim: { type: 'rmsprop' },
    lrSchedulerType: 'constant',
    warmupRatio: 0,
    microBatchSize: B,
    gradientAccumulationSteps: 1,
    numTrainEpochs: 1,
    maxGradNorm: 1,
    seed: 1,
    saveSteps: 0,
    gradientCheckpointing: !!work.ckpt,
  };
  const times: number[] = [];
  const cpu: number[] = []; // CPU seconds of the process per step (all threads): steadier than the wall clock on a shared machine
  for (let s = 0; s <= work.steps; s++) {
    const pairs = makePairs();
    const ref = new Float32Array(2 * B).map(() => -300 + rng.normal());
    const obj = new SpinObjective(model, pairs, ref, {
      beta: 0.1,
      lossType: 'sigmoid',
      nllAlpha: 0,
      dropIdentical: false,
      eosId: 2,
      padId: 0,
    });
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    await runTrainingLoop(model, B, obj, loop);
    times.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1e6);
  }
  const ms = Math.min(...times.slice(1)); // the first step warms the allocator and the optimizer state up
  console.log(
    JSON.stringify({
      steps_per_s: 1000 / ms,
      ms_per_step: ms,
      cpu_s_per_step: Math.min(...cpu.slice(1)),
      peak_rss_mb: peakMb(),
      packed_tokens: packedTokens,
      padded_tokens: paddedTokens,
    }),
  );
} else {
  throw new Error(`unknown mode ${mode}`);
}
