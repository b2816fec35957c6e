// One spinlm GPU measurement in a fresh process (bench/gpu.bench.ts runs it); prints one JSON line.
// Usage: node --import tsx bench/gpu_probe.ts loss|spin|generate [steps]
//   loss:     device-to-device copy bandwidth of the logits buffer, then logprobGather bf16 N = 8192 x
//             V = 128256 (reads the logits once) and its in-place backward (reads and writes them)
//   spin:     SPIN steps (forward, loss, backward, RMSprop) of a 1.1B Llama-shaped model with random
//             bf16 weights, 8 pairs x 1024 tokens, compute SPIN_TRAIN below -> tokens/s and peak device memory
//   generate: 32 prompts x 128 tokens, 256 new tokens each, greedy, KV cache, bf16 compute -> generated
//             tokens/s (timed once, after a warm-up generation of 8 tokens)
// Without a usable CUDA device it prints {"skipped": why} and exits 0.
// SPINLM_KIT_BACKEND=cuda-emu with SPINLM_KIT_SIZE=tiny runs the same code at tiny shapes on the emulator
// (the GPU kit's dry run: the plumbing, not a performance measure).
import type { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import { cudaStatus } from '../src/backend/cuda/cuda_backend.js';
import { generate } from '../src/generate/generate.js';
import { parseConfig } from '../src/model/config.js';
import { LlamaDecoder } from '../src/model/decoder.js';
import { initLlama } from '../src/model/init.js';
import { runTrainingLoop } from '../src/spin/train_loop.js';
import * as ops from '../src/ops/index.js';
import { Rng } from '../src/util/rng.js';
import { kitBackend, timeMs as timeOn } from './kit_backend.js';
import { spinBenchLoop, spinBenchObjective } from './model_probe_work.js';

const mode = process.argv[2];
const steps = Number(process.argv[3] ?? 3);
const backendName = process.env.SPINLM_KIT_BACKEND ?? 'cuda';
const tiny = process.env.SPINLM_KIT_SIZE === 'tiny';
const status = cudaStatus();
if (backendName === 'cuda' && !status.available) {
  console.log(JSON.stringify({ skipped: `no GPU: ${status.reason}` }));
  process.exit(0);
}
const be = (await kitBackend(backendName)) as CudaBackend;
const rng = new Rng(7);
const timeMs = (fn: () => unknown, iters: number) => timeOn(be, fn, iters);
const peaks = () => {
  const d = be.native.info();
  return { peak_allocated_bytes: d.peakAllocatedBytes, peak_reserved_bytes: d.peakReservedBytes, gemm: d.gemm, device: d.name };
};
// TinyLlama-1.1B's shape: hidden 2048, 22 layers, 32 heads, 4 kv heads, intermediate 5632, vocab 32000.
const LLAMA_1B_FULL = {
  model_type: 'llama',
  hidden_size: 2048,
  intermediate_size: 5632,
  num_hidden_layers: 22,
  num_attention_heads: 32,
  num_key_value_heads: 4,
  rms_norm_eps: 1e-5,
  vocab_size: 32000,
  max_position_embeddings: 2048,
  tie_word_embeddings: false,
  eos_token_id: 2,
};
// The SPIN step's arithmetic, merged into the loop config: bf16 mixed precision (LoopConfig.computeDtype,
// `--compute_dtype`; docs/numerics.md "Mixed precision"), what PyTorch's side runs under autocast. The
// row's "compute" is the model's own computeDtype read during the step, so it never claims what did not run.
const SPIN_TRAIN: { computeDtype: 'bf16' | 'f32' } = { computeDtype: 'bf16' };
const LLAMA_1B = tiny
  ? {
      ...LLAMA_1B_FULL,
      hidden_size: 64,
      intermediate_size: 96,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      vocab_size: 300,
    }
  : LLAMA_1B_FULL;

if (mode === 'loss') {
  const n = tiny ? 128 : 8192,
    v = tiny ? 1000 : 128256,
    bytes = n * v * 2;
  // Random rows: 64 uploaded, then copied over the whole buffer (rows are 256-byte aligned views).
  const logits = ops.empty(be, 'bf16', [n, v]);
  const seed = ops.cast(
    ops.upload(be, { dtype: 'f32', data: Float32Array.from({ length: 64 * v }, () => 3 * rng.normal()) }, [64, v]),
    'bf16',
  );
  for (let r = 0; r < n; r += 64) be.cast(seed, logits.view(r * v, [64, v]));
  const targets = ops.upload(be, { dtype: 'i32', data: Int32Array.from({ length: n }, () => rng.int(0, v - 1)) }, [n]);
  const copy = ops.empty(be, 'bf16', [n, v]);
  const copyMs = await timeMs(() => be.cast(logits, copy), 10);
  copy.free();
  let lse: ReturnType<typeof ops.logprobGather>['lse'] | undefined;
  const fwdMs = await timeMs(() => {
    const r = ops.logprobGather(logits, targets);
    r.logp.free();
    lse?.free();
    lse = r.lse;
  }, 10);
  const dlogp = ops.upload(be, { dtype: 'f32', data: Float32Array.from({ length: n }, () => rng.normal()) }, [n]);
  const bwdMs = await timeMs(() => ops.logprobGatherBackward(logits, targets, lse!, dlogp, { out: logits }), 10);
  const copyGBs = (2 * bytes) / (copyMs * 1e6);
  console.log(
    JSON.stringify({
      n,
      v,
      logits_bytes: bytes,
      copy_ms: copyMs,
      copy_rw_gbs: copyGBs,
      gather_ms: fwdMs,
      gather_gbs: bytes / (fwdMs * 1e6),
      gather_of_copy: bytes / (fwdMs * 1e6) / copyGBs,
      backward_ms: bwdMs,
      backward_rw_gbs: (2 * bytes) / (bwdMs * 1e6),
      backward_of_copy: (2 * bytes) / (bwdMs * 1e6) / copyGBs,
      ...peaks(),
    }),
  );
} else if (mode === 'spin') {
  const cfg = parseConfig(LLAMA_1B, 'bench config');
  const model = initLlama(be, cfg, { seed: 1, dtype: 'bf16' });
  const B = tiny ? 2 : 8,
    L = tiny ? 32 : 1024,
    P = tiny ? 8 : 128;
  const tokens = (k: number) => Array.from({ length: k }, () => rng.int(3, cfg.vocabSize - 1));
  const pairs = Array.from({ length: B * (steps + 1) }, () => {
    const prompt = tokens(P);
    return { real: { prompt, answer: tokens(L - P) }, generated: { prompt, answer: tokens(L - P) } };
  });
  const ref = new Float32Array(2 * pairs.length).map(() => -9000 + rng.normal());
  const obj = spinBenchObjective(model, pairs, ref);
  const times: number[] = [];
  let last = performance.now();
  let compute = 'f32';
  await runTrainingLoop(
    model,
    pairs.length,
    obj,
    { ...spinBenchLoop(B), ...SPIN_TRAIN },
    {
      onStep: () => {
        compute = String((model as { computeDtype?: string }).computeDtype ?? 'f32');
        const now = performance.now();
        times.push(now - last);
        last = now;
      },
    },
  );
  const sorted = times.slice(1).sort((a, b) => a - b);
  const ms = sorted[Math.floor(sorted.length / 2)];
  console.log(
    JSON.stringify({
      params: model.weights.count(),
      compute,
      ms_per_step: ms,
      tokens_per_s: (2 * B * L) / (ms / 1000),
      ...peaks(),
    }),
  );
} else if (mode === 'generate') {
  const cfg = parseConfig(LLAMA_1B, 'bench config');
  const model = initLlama(be, cfg, { seed: 1, dtype: 'bf16' });
  const B = tiny ? 4 : 32,
    P = tiny ? 8 : 128,
    N = tiny ? 8 : 256;
  const prompts = Array.from({ length: B }, () => Array.from({ length: P }, () => rng.int(3, cfg.vocabSize - 1)));
  const dec = new LlamaDecoder(model, 'auto', 'bf16');
  const run = (n: number) =>
    generate(dec, prompts, { temperature: 0, topK: 0, topP: 1, maxNewTokens: n, eosIds: [], seed: 0, batchSize: B });
  await run(tiny ? 2 : 8); // warm-up
  await be.takeErrors();
  const t0 = performance.now();
  await run(N);
  await be.takeErrors();
  const ms = performance.now() - t0;
  console.log(JSON.stringify({ compute: 'bf16', ms_total: ms, tokens_per_s: (B * N) / (ms / 1000), ...peaks() }));
} else {
  console.error(`gpu_probe: unknown mode ${String(mode)} (loss, spin or generate)`);
  process.exit(2);
}
