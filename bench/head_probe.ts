// One measurement of a SPIN step or of scoring in a fresh process, run against the spinlm tree at ROOT
// (so bench/head.bench.ts can put the tree before the fused head beside the current one); prints one
// JSON line. Both trees have the APIs used here (LlamaModel.load, SpinObjective, runTrainingLoop,
// collateSpinBatch, scoreBatch).
// Usage: node --import tsx bench/head_probe.ts ROOT spin|score|op|attention MODEL_DIR '{"pairs":4,"len":500,"prompt":250,"steps":1,"ckpt":1}'
// (ckpt: gradient checkpointing in the SPIN step; op: M = pairs x len rows, fused 1 or 0)
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const [root, mode, modelDir, workJson] = process.argv.slice(2);
const work = { pairs: 4, len: 512, prompt: 256, steps: 2, ckpt: 0, fused: 1, ...(JSON.parse(workJson ?? '{}') as Record<string, number>) };
const src = (p: string) => import(join(root, 'src', p));
const { CpuBackend } = await src('backend/cpu/cpu_backend.ts');
const { LlamaModel } = await src('model/llama.ts');
const { runTrainingLoop } = await src('spin/train_loop.ts');
const { SpinObjective } = await src('spin/objectives.ts');
const { collateSpinBatch } = await src('spin/batch.ts');
const { scoreBatch } = await src('spin/score.ts');
const { Rng } = await src('util/rng.ts');

const peakMb = () => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) / 1024;
const be = new CpuBackend();
const model = await LlamaModel.load(be, modelDir);
const cfg = model.cfg;
const rng = new Rng(5);
const tokens = (n: number) => Array.from({ length: n }, () => rng.int(3, cfg.vocabSize - 1));
const B = work.pairs,
  L = work.len,
  P = work.prompt;
const makePairs = (n: number) =>
  Array.from({ length: n }, () => {
    const prompt = tokens(P);
    return { real: { prompt, answer: tokens(L - P) }, generated: { prompt, answer: tokens(L - P) } };
  });
// the tensor allocator's peak live bytes since the last reset (native/addon.cc peakLiveBytes)
const peakLiveMb = (reset = false) => be.native.peakLiveBytes(reset) / 2 ** 20;

if (mode === 'spin') {
  const loop = {
    learningRate: 5e-7,
    optim: { type: 'rmsprop' },
    lrSchedulerType: 'linear',
    warmupRatio: 0.1,
    microBatchSize: B,
    gradientAccumulationSteps: 1,
    numTrainEpochs: 1,
    maxGradNorm: 1,
    seed: 1,
    saveSteps: 0,
    gradientCheckpointing: !!work.ckpt,
  };
  const run = async (n: number) => {
    const pairs = makePairs(B * n);
    const ref = new Float32Array(2 * pairs.length).map(() => -(L - P) * Math.log(cfg.vocabSize) + rng.normal());
    const obj = new SpinObjective(model, pairs, ref, {
      beta: 0.1,
      lossType: 'sigmoid',
      nllAlpha: 0,
      dropIdentical: false,
      eosId: 2,
      padId: 0,
    });
    const t0 = performance.now();
    await runTrainingLoop(model, pairs.length, obj, loop);
    return performance.now() - t0;
  };
  await run(1); // warm-up: allocator, page faults, the optimizer's first allocation
  peakLiveMb(true);
  const ms = work.steps > 0 ? (await run(work.steps)) / work.steps : NaN;
  console.log(JSON.stringify({ steps_per_s: 1000 / ms, ms_per_step: ms, peak_rss_mb: peakMb(), peak_live_mb: peakLiveMb() }));
} else if (mode === 'score') {
  const batch = collateSpinBatch(makePairs(B), 2, 0);
  await scoreBatch(model, batch);
  peakLiveMb(true);
  const times: number[] = [];
  for (let i = 0; i < work.steps; i++) {
    const t0 = performance.now();
    await scoreBatch(model, batch);
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const ms = times[times.length >> 1];
  console.log(JSON.stringify({ batches_per_s: 1000 / ms, ms_per_batch: ms, peak_rss_mb: peakMb(), peak_live_mb: peakLiveMb() }));
} else if (mode === 'op') {
  // the head and the log-prob over M rows alone, forward + backward: fused (ops.headLogprob, this tree only)
  // or unfused (matmul to [M, V] logits, logprobGather, its backward, the head's two products); the
  // allocator's peak live bytes above what the inputs and the head's gradient hold
  const ops = await src('ops/index.ts');
  const M = B * L;
  const H = cfg.hiddenSize;
  const w = model.weights.get(cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight');
  const h = ops.upload(be, { dtype: 'f32', data: Float32Array.from({ length: M * H }, () => rng.normal()) }, [M, H]);
  const targets = ops.upload(be, { dtype: 'i32', data: Int32Array.from(tokens(M)) }, [M]);
  const dw = ops.zeros(be, 'f32', [cfg.vocabSize, H]);
  const dlogp = ops.upload(be, { dtype: 'f32', data: new Float32Array(M).fill(-1 / M) }, [M]);
  const once = () => {
    if (work.fused) {
      const { logp, lse } = ops.headLogprob(h, w, targets);
      const dh = ops.headLogprobBackward(h, w, targets, lse, dlogp, { dw });
      for (const t of [logp, lse, dh]) t.free();
    } else {
      const logits = ops.matmul(h, w, { transB: true });
      const { logp, lse } = ops.logprobGather(logits, targets);
      ops.logprobGatherBackward(logits, targets, lse, dlogp, { out: logits });
      ops.matmul(logits, h, { transA: true, out: dw, accumulate: true });
      const dh = ops.matmul(logits, w);
      for (const t of [logits, logp, lse, dh]) t.free();
    }
  };
  once();
  const base = be.native.liveBytes() / 2 ** 20;
  peakLiveMb(true);
  const t0 = performance.now();
  once();
  const ms = performance.now() - t0;
  await ops.read(dw.view(0, [1]));
  console.log(JSON.stringify({ ms, op_peak_live_mb: peakLiveMb() - base, logits_mb: (M * cfg.vocabSize * 4) / 2 ** 20 }));
} else if (mode === 'attention') {
  // the attention kernels alone (forward + backward, no soft-cap): the uncapped path before / after the
  // soft-cap and head_dim 256 work must not be slower. B sequences of L positions, 8 / 4 heads of 64.
  const ops = await src('ops/index.ts');
  const [b, l, nh, nkv, hd] = [4, L, 8, 4, 64];
  const up = (shape: number[]) =>
    ops.upload(be, { dtype: 'f32', data: Float32Array.from({ length: shape.reduce((x, y) => x * y) }, () => rng.normal()) }, shape);
  const [q, k, v, dout] = [up([b, l, nh, hd]), up([b, l, nkv, hd]), up([b, l, nkv, hd]), up([b, l, nh, hd])];
  const mask = ops.upload(be, { dtype: 'i32', data: new Int32Array(b * l).fill(1) }, [b, l]);
  const once = async () => {
    const { out, lse } = ops.attention(q, k, v, mask, {});
    const g = ops.attentionBackward(q, k, v, mask, out, lse, dout, {});
    await ops.read(g.dq.view(0, [1]));
    for (const t of [out, lse, g.dq, g.dk, g.dv]) t.free();
  };
  await once();
  const times: number[] = [];
  for (let i = 0; i < work.steps; i++) {
    const t0 = performance.now();
    await once();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  console.log(JSON.stringify({ ms: times[times.length >> 1] }));
} else {
  throw new Error(`unknown mode ${mode}`);
}
