// bf16 compute's row-invariant GEMM on tensor cores (native/cuda/gemm_rows_tc.cu) under the emulator:
// matmul, linears and the fused head's forward with computeDtype 'bf16' on cuda-emu. Every WMMA load,
// store and mma runs through the emulator's checks (warp-collective, alignment, leading dimensions,
// bounds, shared-memory races, fragment layouts drawn from the seed), into NaN-poisoned buffers.
// - Values: against a float64 product of the rounded operands (a rounded to bf16 as the cast op rounds,
//   the bf16 weights as stored), relative error (max |got - ref| / max |ref|) <= 1e-5: each 16-wide k
//   step is rounded to f32 once, plus one f32 add per warp in the reduction, so the error is a few f32
//   ulps of the partial sums (measured ~1e-7).
// - Row invariance, bit for bit: a row's output computed alone equals the same row inside batches of
//   M = 7, 16, 33, 64, 100 (two row blocks) at the first, last and a random position.
// - Shapes at the kernel's edges: N not a multiple of the 32-column tile, K not a multiple of 16 (zero
//   padding) or of 8 (element loads of B instead of 16-byte vectors), K past one 512-wide chunk.
// Needs the cmake-js build (build-cmake/Release/spinlm_cuda_emu.node), as test/cuda_emu.test.ts does.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import { generate } from '../src/generate/generate.js';
import { LlamaDecoder } from '../src/model/decoder.js';
import { initLlama } from '../src/model/init.js';
import type { Backend } from '../src/backend/backend.js';
import * as ops from '../src/ops/index.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { cpuReference } from './helpers/backends.js';
import { IGNORE, relErr } from './helpers/loss_ref.js';
import { matmulRef } from './helpers/model_ref.js';
import { randn, withSeed } from './helpers/random.js';
import { tinyConfig } from './helpers/tiny_model.js';
import type { Rng } from '../src/util/rng.js';

const emu = new CudaBackend({ emulated: true, poison: true });
const TOL = 1e-5;
const f32 = (data: Float32Array, shape: number[], be = emu as Backend) => ops.upload(be, { dtype: 'f32', data }, shape);
const bf16 = (data: Uint16Array, shape: number[], be = emu as Backend) => ops.upload(be, { dtype: 'bf16', data }, shape);
const host = async (t: Tensor) => (await ops.read(t)) as Float32Array;
const rounded = (x: Float32Array) => bf16ArrayToF32(f32ArrayToBf16(x));

/** A bf16 weight [n, k] on the emulator and the values it holds. */
function weight(rng: Rng, n: number, k: number) {
  const h = f32ArrayToBf16(randn(rng, n * k, 1 / Math.sqrt(k)));
  return { t: bf16(h, [n, k]) as Tensor, values: bf16ArrayToF32(h) };
}

/** matmul(a, w^T) with bf16 compute into a NaN-poisoned output (every element must be written). */
async function product(a: Float32Array, m: number, w: Tensor, opts: { alpha?: number } = {}) {
  const [n, k] = w.shape;
  const out = ops.empty(emu, 'f32', [m, n]);
  ops.fill(out, NaN);
  ops.matmul(f32(a, [m, k]), w, { transB: true, rowInvariant: true, computeDtype: 'bf16', out, ...opts });
  return host(out);
}

describe('row-invariant bf16 GEMM on tensor cores (cuda-emu)', () => {
  test('float64 on the rounded operands: N, K at the tile, chunk, vector and padding edges; accumulate and alpha', () =>
    withSeed(async (rng) => {
      // [m, n, k]: K % 16 != 0 (padding), K % 8 != 0 (element loads), K past one 512-wide chunk of B
      const shapes = [
        [1, 1, 1],
        [3, 45, 37],
        [17, 33, 16],
        [5, 70, 24],
        [rng.int(1, 64), rng.int(1, 80), rng.int(1, 200)],
        [9, 40, 600],
        [2, 17, rng.int(513, 1100)],
        // K split in 4 (fewer than 128 column blocks of 32: k_split), rows past one 1024-row launch of split K
        [4, 100, 1600],
        [1030, 40, 530],
        // 65 column blocks: no split, two chunks of K in one block
        [3, 2050, 600],
      ];
      for (const [m, n, k] of shapes) {
        const ctx = `m=${m} n=${n} k=${k}`;
        const a = randn(rng, m * k);
        const b = weight(rng, n, k);
        const got = await product(a, m, b.t);
        const want = matmulRef(rounded(a), b.values, m, n, k, false, true);
        const e = relErr(got, want);
        assert.ok(e <= TOL, `${ctx}: relative error ${e}`);
        // a kernel that skipped the rounding of a would be far off
        if (k > 4) assert.ok(relErr(matmulRef(a, b.values, m, n, k, false, true), want) > 1e-4, `${ctx}: a was not rounded`);
        // accumulate: out = alpha a W^T + out
        const base = randn(rng, m * n);
        const acc = f32(base.slice(), [m, n]);
        ops.matmul(f32(a, [m, k]), b.t, { transB: true, computeDtype: 'bf16', out: acc, accumulate: true, alpha: -0.5 });
        const eAcc = relErr(
          await host(acc),
          want.map((x, i) => -0.5 * x + base[i]),
        );
        assert.ok(eAcc <= TOL, `${ctx}: accumulate relative error ${eAcc}`);
      }
    }));

  test('a row alone equals the same row inside batches of 7, 16, 33, 64 and 100 rows at any position, bit for bit', () =>
    withSeed(async (rng) => {
      // K past one chunk of B; n of 2-3 column blocks (K split in two) and of 65 or more (no split: one block walks both chunks)
      // (the second, slow under the emulator, with fewer batches)
      await rowInvariance(rng, rng.int(33, 70), rng.int(530, 700), [7, 16, 33, 64, 100]);
      await rowInvariance(rng, rng.int(2049, 2100), rng.int(513, 560), [33, 100]);
    }));

  async function rowInvariance(rng: Rng, n: number, k: number, sizes: number[]) {
    const b = weight(rng, n, k);
    const row = randn(rng, k);
    const alone = await product(row, 1, b.t);
    for (const m of sizes) {
      for (const pos of new Set([0, m - 1, rng.int(0, m - 1)])) {
        const a = randn(rng, m * k);
        a.set(row, pos * k);
        const got = await product(a, m, b.t);
        assert.deepEqual(got.slice(pos * n, (pos + 1) * n), alone, `m=${m} row ${pos} (n=${n} k=${k})`);
      }
    }
  }

  test('linears: each output equals its own matmul bit for bit (a rounded once for all weights)', () =>
    withSeed(async (rng) => {
      const m = rng.int(1, 40),
        k = rng.int(1, 700);
      const ws = [weight(rng, rng.int(1, 70), k), weight(rng, rng.int(1, 40), k), weight(rng, 32, k)];
      const a = randn(rng, m * k);
      const outs = ops.linears(
        f32(a, [m, k]),
        ws.map((w) => w.t),
        { rowInvariant: true, computeDtype: 'bf16' },
      );
      for (let i = 0; i < ws.length; i++) assert.deepEqual(await host(outs[i]), await product(a, m, ws[i].t), `weight ${i}`);
    }));

  test("the fused head's forward with bf16 compute: the CPU's bf16 head within 1e-5, rows alone equal rows in a batch bit for bit", () =>
    withSeed(async (rng) => {
      const cpu = cpuReference();
      const n = rng.int(20, 70),
        hd = rng.int(20, 90),
        v = rng.int(2049, 2100); // two vocabulary panels
      const hv = randn(rng, n * hd);
      const wb = f32ArrayToBf16(randn(rng, v * hd, 2 / Math.sqrt(hd)));
      const y = Int32Array.from({ length: n }, () => (rng.next() < 0.2 ? IGNORE : rng.int(0, v - 1)));
      const run = async (be: Backend, r0: number, r1: number) => {
        const { logp, lse } = ops.headLogprob(
          f32(hv.slice(r0 * hd, r1 * hd), [r1 - r0, hd], be),
          bf16(wb, [v, hd], be),
          ops.upload(be, { dtype: 'i32', data: y.slice(r0, r1) }, [r1 - r0]),
          { computeDtype: 'bf16' },
        );
        return { logp: await host(logp), lse: await host(lse) };
      };
      const [got, want] = [await run(emu, 0, n), await run(cpu, 0, n)];
      for (const key of ['logp', 'lse'] as const) {
        const e = relErr(got[key], want[key]);
        assert.ok(e <= TOL, `${key}: relative error ${e} against the CPU (n=${n} hd=${hd} v=${v})`);
      }
      // bf16 compute really rounds h here (the f32 head differs by far more than the tolerance)
      const plain = ops.headLogprob(f32(hv, [n, hd]), bf16(wb, [v, hd]), ops.upload(emu, { dtype: 'i32', data: y }, [n]));
      assert.ok(relErr(await host(plain.lse), got.lse) > 1e-6, 'h was not rounded');
      const r = rng.int(0, n - 1);
      const one = await run(emu, r, r + 1);
      assert.deepEqual([one.logp[0], one.lse[0]], [got.logp[r], got.lse[r]], `row ${r} alone (n=${n} hd=${hd} v=${v})`);
    }));

  test('generation with bf16 compute: the same text for each prompt generated alone and inside a batch (sampled and greedy)', () =>
    withSeed(async (rng) => {
      // hidden 72 (K not a multiple of 16), bf16 weights: every linear layer and the head on tensor cores
      const model = initLlama(emu, tinyConfig({ hidden: 72, heads: 4, kvHeads: 2, intermediate: 100, vocab: 50 }), {
        seed: rng.int(0, 1e9),
        std: 0.1,
        randomizeAll: true,
        dtype: 'bf16',
      });
      const dec = new LlamaDecoder(model, 'f32', 'bf16');
      try {
        const prompts = Array.from({ length: 5 }, () => Array.from({ length: rng.int(1, 12) }, () => rng.int(3, 49)));
        for (const temperature of [1, 0]) {
          const o = { temperature, topK: 0, topP: 1, maxNewTokens: 6, eosIds: [2], seed: rng.int(0, 1e6) };
          const batched = await generate(dec, prompts, { ...o, batchSize: 5 });
          const alone = await generate(dec, prompts, { ...o, batchSize: 1 });
          assert.deepEqual(alone, batched, `temperature ${temperature}`);
        }
      } finally {
        model.weights.free();
      }
    }));
});
