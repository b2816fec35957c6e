// One spinlm model measurement in a fresh process (bench/model.bench.ts and bench/matrix.bench.ts run
// it); prints one JSON line.
// Usage: node --import tsx bench/model_probe.ts score|train|generate|generate-mixed|spin|gemm STEPS [MODEL_DIR [WORK_JSON]]
//   MODEL_DIR: a Hugging Face model directory, loaded as stored (bench/make_model.ts makes random ones);
//              without it, the 32M benchmark config with random f32 weights
//   WORK_JSON: the workload's sizes, overriding DEFAULT_WORK (e.g. '{"rows":1,"pairs":1}' for a 1.1B model)
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { parseConfig } from '../src/model/config.js';
import { generate } from '../src/generate/generate.js';
import { LlamaDecoder } from '../src/model/decoder.js';
import { initLlama } from '../src/model/init.js';
import { LlamaModel } from '../src/model/llama.js';
import { uploadInput } from '../src/model/input.js';
import { runTrainingLoop } from '../src/spin/train_loop.js';
import { Rng } from '../src/util/rng.js';
import { medianMs, peakRss } from './harness.js';
import { DEFAULT_WORK, spinBenchLoop, spinBenchObjective } from './model_probe_work.js';
import * as ops from '../src/ops/index.js';

const mode = process.argv[2];
const steps = Number(process.argv[3] ?? 5);
const be = new CpuBackend();
export const BENCH_CONFIG = {
  model_type: 'llama',
  hidden_size: 512,
  intermediate_size: 1408,
  num_hidden_layers: 8,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  rms_norm_eps: 1e-5,
  vocab_size: 8000,
  max_position_embeddings: 2048,
  tie_word_embeddings: false,
  eos_token_id: 2,
};
const work = { ...DEFAULT_WORK, ...(process.argv[5] ? (JSON.parse(process.argv[5]) as Partial<typeof DEFAULT_WORK>) : {}) };
const model = process.argv[4]
  ? await LlamaModel.load(be, process.argv[4])
  : initLlama(be, parseConfig(BENCH_CONFIG, 'bench config'), { seed: 1 });
const cfg = model.cfg;
const rng = new Rng(5);
const tokens = (n: number) => Array.from({ length: n }, () => rng.int(3, cfg.vocabSize - 1));
// FLOPs count the matmuls of every weight but the input embedding (a gather, no FLOPs)
const nonEmbedding = () => model.weights.count() - cfg.vocabSize * cfg.hiddenSize;
const report = (o: Record<string, number | string>) => console.log(JSON.stringify({ ...o, peak_rss_mb: peakRss() / 2 ** 20 }));

if (mode === 'gemm') {
  const n = 2048;
  const a = ops.empty(be, 'f32', [n, n]),
    b = ops.empty(be, 'f32', [n, n]),
    c = ops.empty(be, 'f32', [n, n]);
  ops.fill(a, 0.5);
  ops.fill(b, 0.25);
  const ms = await medianMs('sgemm', () => ops.matmul(a, b, { transB: true, out: c }), 5, 2);
  // blas_core: OpenBLAS's kernel set (OPENBLAS_CORETYPE overrides its choice: on an AVX-512 CPU,
  // Haswell's AVX2 kernels run at about half the rate of SkylakeX's)
  report({ gflops: (2 * n ** 3) / (ms * 1e6), blas_core: be.blasCore() });
} else if (mode === 'score' || mode === 'train') {
  const R = work.rows,
    L = work.len,
    T = R * L;
  if (mode === 'train') model.weights.enableTraining();
  const input = uploadInput(
    be,
    {
      rows: R,
      length: L,
      inputIds: Int32Array.from(tokens(T)),
      positions: Int32Array.from({ length: T }, (_, i) => i % L),
      attentionMask: new Int32Array(T).fill(1),
    },
    cfg.vocabSize,
  );
  if (mode === 'score') {
    // forward only (what `spinlm score` and the reference log-probs run): logits of every position
    const ms = await medianMs('forward', () => model.forward(input, { computeDtype: work.compute }).logits.free(), steps, 1);
    report({ tokens_per_s: T / (ms / 1000), gflops: (2 * nonEmbedding() * T) / (ms * 1e6), ms_per_step: ms });
    process.exit(0);
  }
  const ms = await medianMs(
    'fwd+bwd',
    () => {
      const { logits, state } = model.forward(input, { train: true });
      ops.fill(logits, 1e-4); // stands in for d(loss)/d(logits): the loss kernels are benchmarked in loss.bench.ts
      model.backward(state!, logits); // (frees them)
    },
    steps,
    1,
  );
  report({ tokens_per_s: T / (ms / 1000), gflops: (6 * nonEmbedding() * T) / (ms * 1e6), ms_per_step: ms });
} else if (mode === 'generate') {
  const B = work.genBatch,
    P = work.genPrompt,
    N = work.genNew;
  const dec = new LlamaDecoder(model, work.kvCache, work.compute);
  const prompts = Array.from({ length: B }, () => tokens(P));
  // the real generation path: device-side greedy sampling, B token ids read per step
  const ms = await medianMs(
    'generate',
    async () => {
      await generate(dec, prompts, { temperature: 0, topK: 0, topP: 1, maxNewTokens: N, eosIds: [], seed: 0, batchSize: B });
    },
    Math.max(1, Math.min(steps, 3)),
    1,
  );
  const decodeFlops = 2 * nonEmbedding() * B * N;
  // gflops counts the generated tokens' FLOPs only (as the earlier tables did); gflops_all the prompts'
  // prefill too (every token the model processed, as model-FLOP utilisation counts them)
  const promptFlops = 2 * nonEmbedding() * B * P;
  report({
    tokens_per_s: (B * N) / (ms / 1000),
    gflops: decodeFlops / (ms * 1e6),
    gflops_all: (decodeFlops + promptFlops) / (ms * 1e6),
    ms_total: ms,
  });
} else if (mode === 'generate-mixed') {
  // mixed answer lengths: 128 prompts of 16-96 tokens, temperature 1 on the near-uniform logits of the
  // random model, 200 of the 8000 ids end an answer: lengths ~geometric (mean ~40, most short, a few
  // reach max_new_tokens 256). 32 slots; both schedules in this process, outputs checked equal.
  const B = 32,
    N = 256;
  const dec = new LlamaDecoder(model, work.kvCache, work.compute);
  const prompts = Array.from({ length: 128 }, () => tokens(rng.int(16, 96)));
  const eosIds = Array.from({ length: 200 }, (_, i) => 3 + i * 39);
  const o = { temperature: 1, topK: 0, topP: 1, maxNewTokens: N, eosIds, seed: 3, batchSize: B };
  const run = async (schedule: 'static' | 'continuous') => {
    const t0 = performance.now();
    const gens = await generate(dec, prompts, { ...o, schedule });
    return { gens, ms: performance.now() - t0 };
  };
  await run('continuous'); // warm-up (allocator, page faults)
  const st = await run('static');
  const co = await run('continuous');
  if (JSON.stringify(st.gens) !== JSON.stringify(co.gens)) throw new Error('continuous and static generations differ');
  const lens = co.gens.map((g) => g.tokens.length).sort((a, b) => a - b);
  const total = lens.reduce((a, b) => a + b, 0);
  report({
    tokens_per_s: total / (co.ms / 1000),
    tokens_per_s_static: total / (st.ms / 1000),
    speedup: st.ms / co.ms,
    gflops: (2 * nonEmbedding() * total) / (co.ms * 1e6),
    tokens: total,
    median_len: lens[lens.length >> 1],
    max_len: lens[lens.length - 1],
  });
} else if (mode === 'spin') {
  const B = work.pairs,
    L = work.len,
    P = work.prompt;
  const makePairs = (n: number) =>
    Array.from({ length: n }, () => {
      const prompt = tokens(P);
      return { real: { prompt, answer: tokens(L - P) }, generated: { prompt, answer: tokens(L - P) } };
    });
  const loop = spinBenchLoop(B);
  // one loop of `n` steps of B pairs each; returns its wall time (the loop's own step logs arrive a
  // step late, so per-step times from them are not reliable for 1-2 steps)
  const run = async (n: number) => {
    const pairs = makePairs(B * n);
    const ref = new Float32Array(2 * pairs.length).map(() => -(L - P) * Math.log(cfg.vocabSize) + rng.normal());
    const obj = spinBenchObjective(model, pairs, ref);
    const t0 = performance.now();
    await runTrainingLoop(model, pairs.length, obj, loop);
    return performance.now() - t0;
  };
  await run(1); // warm-up: allocator, page faults, the optimizer's first allocation
  const ms = (await run(steps)) / steps;
  report({
    steps_per_s: 1000 / ms,
    tokens_per_s: (2 * B * L) / (ms / 1000),
    gflops: (6 * nonEmbedding() * 2 * B * L) / (ms * 1e6),
    ms_per_step: ms,
  });
} else {
  throw new Error(`unknown mode ${mode}`);
}
