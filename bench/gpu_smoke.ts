// The GPU kit's step (a), and the program its sanitizer steps (d) run: every Backend op once, on tiny
// shapes, through the library's own paths (two SPIN steps with RMSProp, one with AdamW, sampled and
// greedy generation with a bf16 KV cache and bf16 compute), each op's call counted. With
// SPINLM_CUDA_SYNC=1 the CUDA runtime synchronizes after every op and names the kernel that faulted.
// Prints one line per stage and the ops the run did not reach (the op list: native/op_list.h), then
// `smoke: N ops reached, M not reached`; exits 1 on any error.
// Usage: node --import tsx bench/gpu_smoke.ts [--backend cuda|cuda-emu|cpu] [--jsonl FILE]
import { appendFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { Backend } from '../src/backend/backend.js';
import { NATIVE_OPS } from '../src/backend/native/op_list.js';
import { generate } from '../src/generate/generate.js';
import { parseConfig } from '../src/model/config.js';
import { LlamaDecoder } from '../src/model/decoder.js';
import { initLlama } from '../src/model/init.js';
import { runTrainingLoop } from '../src/spin/train_loop.js';
import * as ops from '../src/ops/index.js';
import { Rng } from '../src/util/rng.js';
import { kitBackend } from './kit_backend.js';
import { spinBenchLoop, spinBenchObjective } from './model_probe_work.js';
import { GEMMA2_SMALL } from '../test/helpers/gemma_configs.js';

const { values: args } = parseArgs({ options: { backend: { type: 'string', default: 'cuda' }, jsonl: { type: 'string' } } });

/** The Backend methods of the one op list (native/op_list.h, generated into src/backend/native/op_list.ts). */
const backendOps = (): string[] => [...new Set(NATIVE_OPS.map((o) => o.method as string))];

/** Counts calls of each op method on this backend instance (wrapped on the instance, `this` unchanged). */
function countCalls(be: Backend, names: string[]): Map<string, number> {
  const counts = new Map(names.map((n) => [n, 0]));
  const target = be as unknown as Record<string, (...a: unknown[]) => unknown>;
  for (const n of names) {
    const orig = target[n];
    if (typeof orig !== 'function') continue;
    target[n] = function (this: unknown, ...a: unknown[]) {
      counts.set(n, (counts.get(n) ?? 0) + 1);
      return orig.apply(be, a);
    };
  }
  return counts;
}

const be = await kitBackend(String(args.backend));
// the emulator runs each CUDA thread as a fiber: its dry run takes the smallest shapes that still reach every op
const emu = args.backend === 'cuda-emu';
const names = backendOps();
const counts = countCalls(be, names);
const rng = new Rng(3);
const t0 = performance.now();
const stages: [string, number][] = [];
const stage = async (name: string, fn: () => Promise<unknown>) => {
  const s = performance.now();
  await fn();
  await ops.read(ops.zeros(be, 'f32', [1])); // drains the stream and raises any device error of the stage
  stages.push([name, performance.now() - s]);
  console.log(`ok   ${name} (${(performance.now() - s).toFixed(0)} ms)`);
};

// Qwen2-style: q/k/v biases (addBias, biasBackward), GQA, untied head; bf16 weights (casts, bf16 paths).
const cfg = parseConfig(
  {
    model_type: 'qwen2',
    hidden_size: emu ? 32 : 128,
    intermediate_size: emu ? 48 : 192,
    num_hidden_layers: emu ? 1 : 2,
    num_attention_heads: emu ? 2 : 4,
    num_key_value_heads: emu ? 1 : 2,
    vocab_size: emu ? 64 : 300,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-6,
    tie_word_embeddings: false,
    eos_token_id: 2,
  },
  'smoke config',
);
const model = initLlama(be, cfg, { seed: 1, dtype: 'bf16', std: 0.05 });
const tokens = (k: number) => Array.from({ length: k }, () => rng.int(3, cfg.vocabSize - 1));
const pairs = Array.from({ length: emu ? 4 : 8 }, () => {
  const prompt = tokens(rng.int(2, emu ? 6 : 20));
  return { real: { prompt, answer: tokens(rng.int(1, emu ? 4 : 12)) }, generated: { prompt, answer: tokens(rng.int(1, emu ? 4 : 12)) } };
});
const ref = Float32Array.from({ length: 2 * pairs.length }, () => -40 + rng.normal());
let failed = false;
try {
  await stage('SPIN steps, RMSProp (forward, loss, backward, clipping, optimizer)', () =>
    runTrainingLoop(model, pairs.length, spinBenchObjective(model, pairs, ref), spinBenchLoop(emu ? 2 : 4), {}),
  );
  await stage('SPIN step, AdamW', () =>
    runTrainingLoop(
      model,
      4,
      spinBenchObjective(model, pairs.slice(0, 4), ref.slice(0, 8)),
      { ...spinBenchLoop(4), optim: { type: 'adamw' } },
      {},
    ),
  );
  const prompts = Array.from({ length: emu ? 3 : 5 }, () => tokens(rng.int(2, emu ? 5 : 9)));
  await stage('generation, greedy, bf16 KV cache, bf16 compute', () =>
    generate(new LlamaDecoder(model, 'bf16', 'bf16'), prompts, {
      temperature: 0,
      topK: 0,
      topP: 1,
      maxNewTokens: 6,
      eosIds: [2],
      seed: 0,
      batchSize: 3,
    }),
  );
  await stage('generation, sampled (top-k, top-p), f32 KV cache', () =>
    generate(new LlamaDecoder(model, 'f32'), prompts, {
      temperature: 0.8,
      topK: 20,
      topP: 0.9,
      maxNewTokens: 6,
      eosIds: [2],
      seed: 5,
      batchSize: 2,
    }),
  );
  // Gemma 2: soft-capped attention and logits (attention, decode, the fused head, softcapInPlace),
  // (1 + w) and sandwich norms, GeGLU; one local and one global layer
  const gemma = initLlama(be, parseConfig({ ...GEMMA2_SMALL, vocab_size: cfg.vocabSize }, 'smoke gemma2'), {
    seed: 2,
    dtype: 'bf16',
    std: 0.05,
  });
  await stage('gemma2: SPIN step, then sampled generation', async () => {
    await runTrainingLoop(gemma, 4, spinBenchObjective(gemma, pairs.slice(0, 4), ref.slice(0, 8)), spinBenchLoop(2), {});
    await generate(new LlamaDecoder(gemma), prompts, {
      temperature: 0.8,
      topK: 0,
      topP: 1,
      maxNewTokens: 4,
      eosIds: [2],
      seed: 3,
      batchSize: 2,
    });
  });
  await stage('the unfused loss from logits (logprobGather and its backward: spinLossForward for library users)', async () => {
    const logits = ops.upload(be, { dtype: 'f32', data: Float32Array.from({ length: 6 * 50 }, () => rng.normal()) }, [6, 50]);
    const targets = ops.upload(be, { dtype: 'i32', data: Int32Array.from([1, 2, -100, 3, 4, 5]) }, [6]);
    const { logp, lse } = ops.logprobGather(logits, targets);
    const dlogits = ops.logprobGatherBackward(logits, targets, lse, logp, { dtype: 'f32' });
    await ops.read(dlogits);
    for (const t of [logits, targets, logp, lse, dlogits]) t.free();
  });
  await stage('scaleInPlace (gradient accumulation averaging)', async () => {
    const x = ops.upload(be, { dtype: 'f32', data: Float32Array.from({ length: 1000 }, () => rng.normal()) }, [1000]);
    ops.scaleInPlace(x, 0.5);
    await ops.read(x);
    x.free();
  });
} catch (err) {
  failed = true;
  console.log(`FAIL ${(err as Error).message.split('\n').slice(0, 6).join(' | ')}`);
}
const reached = names.filter((n) => (counts.get(n) ?? 0) > 0);
const missed = names.filter((n) => (counts.get(n) ?? 0) === 0);
console.log(`ops reached: ${reached.map((n) => `${n} x${counts.get(n)}`).join(', ')}`);
if (missed.length) console.log(`ops not reached by this run: ${missed.join(', ')}`);
if (args.jsonl)
  appendFileSync(
    String(args.jsonl),
    JSON.stringify({ step: 'smoke', backend: be.name, ok: !failed, reached: reached.length, missed, stages, ms: performance.now() - t0 }) +
      '\n',
  );
console.log(`smoke: ${reached.length} ops reached, ${missed.length} not reached${failed ? ', FAILED' : ''}`);
process.exit(failed ? 1 : 0);
