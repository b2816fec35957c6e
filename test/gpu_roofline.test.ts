// The counting under docs/cuda.md "Performance model (written before the GPU)" (bench/gpu_roofline.ts):
// parameter counts against a real model's tensors and the 1.1B count docs/memory.md states, visible
// attention pairs of the packed SPIN layout against a brute-force walk of its masks, and the FLOP counts
// of the tables against FlashAttention's formula. Pure arithmetic: no backend beyond the CPU's for the
// parameter count.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { initLlama } from '../src/model/init.js';
import {
  attention,
  causalPairs,
  gemm,
  H100,
  LLAMA_1B,
  LLAMA_7B,
  linearShapes,
  pairLayoutPairs,
  params,
  spinStep,
} from '../bench/gpu_roofline.js';
import { cpuReference } from './helpers/backends.js';
import { withSeed } from './helpers/random.js';
import { tinyConfig } from './helpers/tiny_model.js';

test('parameter counts: a model built from the shape has params(shape).total tensors; 1.1B is docs/memory.md P, 7B is Mistral-7B', () =>
  withSeed((rng) => {
    for (let trial = 0; trial < 3; trial++) {
      const heads = [2, 4][rng.int(0, 1)];
      const kvHeads = heads / [1, 2][rng.int(0, 1)];
      const hd = 8 * rng.int(1, 3);
      const a = { hidden: heads * hd, layers: rng.int(1, 3), heads, kv: kvHeads, hd, inter: 8 * rng.int(2, 9), vocab: rng.int(50, 300) };
      const model = initLlama(
        cpuReference(),
        tinyConfig({ hidden: a.hidden, heads, kvHeads, layers: a.layers, intermediate: a.inter, vocab: a.vocab }),
        { seed: 1 },
      );
      assert.equal(params(a).total, model.weights.count(), JSON.stringify(a));
      model.weights.free();
    }
    assert.equal(params(LLAMA_1B).total, 1_100_048_384);
    assert.equal(params(LLAMA_7B).total, 7_241_732_096); // Mistral-7B-v0.1's published 7.24 B
  }));

test('visible pairs of the packed SPIN layout equal a brute-force walk of its masks', () =>
  withSeed((rng) => {
    for (let trial = 0; trial < 20; trial++) {
      const [pairs, P, A] = [rng.int(1, 3), rng.int(1, 12), rng.int(0, 12)];
      // one pair's row [prompt P | real A | generated A]: query i sees key j <= i of its own pair, and a
      // generated answer's query does not see the real answer
      let n = 0;
      for (let i = 0; i < P + 2 * A; i++) for (let j = 0; j <= i; j++) if (!(i >= P + A && j >= P && j < P + A)) n++;
      assert.equal(pairLayoutPairs(pairs, P, A), pairs * n, `pairs ${pairs} P ${P} A ${A}`);
    }
    assert.equal(causalPairs(3, 5), 3 * 15);
  }));

test("FLOP counts: attention as FlashAttention's benchmark counts it, GEMMs 2MNK, the 1.1B step's 102 TFLOP", () => {
  // FlashAttention (benchmarks/benchmark_flash_attention.py): causal forward 4 * B * H * L^2 * d / 2
  const [B, L, H, d] = [8, 2048, 16, 128];
  const fwd = attention(H100, causalPairs(B, L) - (B * L) / 2, B * L, H, H, d, 0.38);
  assert.equal(fwd.flops, (4 * B * H * L * L * d) / 2);
  assert.equal(attention(H100, 10, 4, 2, 2, 8, 0.3, true).flops, 2.5 * attention(H100, 10, 4, 2, 2, 8, 0.3).flops);
  const down = linearShapes(LLAMA_7B, 8192, '7B').find((s) => s.name.endsWith('down'))!;
  assert.deepEqual([down.n, down.k], [4096, 14336]);
  assert.equal(gemm(H100, down).flops, 2 * 8192 * 4096 * 14336);
  assert.equal(gemm(H100, down).roof, 'compute');
  // trunk 2 x 968.97 M x 3 passes x 15360 tokens + head over 14336 rows x 4 GEMMs + attention
  const step = spinStep(H100, LLAMA_1B, {
    pairs: 8,
    prompt: 128,
    answer: 896,
    recompute: false,
    lora: false,
    act: 4,
    optimBytesPerParam: 20,
  });
  const want = 6 * params(LLAMA_1B).trunk * 15360 + 8 * 14336 * 2048 * 32000 + 22 * 3.5 * 4 * pairLayoutPairs(8, 128, 896) * 32 * 64;
  assert.ok(Math.abs(step.flops - want) / want < 1e-12, `${step.flops} vs ${want}`);
  assert.ok(Math.abs(step.flops / 1e12 - 102.07) < 0.01);
});
