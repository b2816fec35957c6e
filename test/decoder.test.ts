// KV-cache generation path: prefill + decode logits equal a full recompute of the same sequences.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { LlamaDecoder } from '../src/model/decoder.js';
import { initLlama } from '../src/model/init.js';
import { freeInput, uploadInput } from '../src/model/input.js';
import type { LlamaModel } from '../src/model/llama.js';
import { relErr } from './helpers/loss_ref.js';
import { withSeed } from './helpers/random.js';
import { tinyConfig } from './helpers/tiny_model.js';
import * as ops from '../src/ops/index.js';
import { emulated, testBackends } from './helpers/backends.js';

for (const be of await testBackends())
  describe(`on backend ${be.name}`, () => {
    /** Logits of the last position of one sequence, by a full forward pass. */
    async function fullLogits(model: LlamaModel, ids: number[], computeDtype: 'f32' | 'bf16' = 'f32'): Promise<Float32Array> {
      const L = ids.length;
      const input = uploadInput(
        be,
        {
          rows: 1,
          length: L,
          inputIds: Int32Array.from(ids),
          positions: Int32Array.from({ length: L }, (_, i) => i),
          attentionMask: new Int32Array(L).fill(1),
        },
        model.cfg.vocabSize,
      );
      const { logits } = model.forward(input, { computeDtype });
      const all = await ops.read(logits);
      logits.free();
      freeInput(input);
      const V = model.cfg.vocabSize;
      return all.slice((L - 1) * V, L * V);
    }

    // bf16 cache: the keys and values each decode step reads are rounded (relative error <= 2^-9 each),
    // which moved the logits by 0.65-0.94% of their range in 10 runs here; the op tests check the rounding exactly
    for (const [opts, cdt, tol] of [
      [{}, 'f32', 1e-5],
      [{ modelType: 'qwen2' as const, kvHeads: 1, tie: true, ropeScaling: 2 }, 'f32', 1e-5],
      [{}, 'bf16', 3e-2],
      // sliding windows shorter than the sequences (up to 14 tokens): mistral on every layer, qwen2 on
      // layer 1 only (max_window_layers 1)
      [{ modelType: 'mistral' as const, slidingWindow: 4 }, 'f32', 1e-5],
      [{ modelType: 'qwen2' as const, slidingWindow: 3, maxWindowLayers: 1 }, 'f32', 1e-5],
    ] as const) {
      test(`prefill + decode equal full recompute (ragged prompts, a finished row, ${cdt} cache) ${JSON.stringify(opts)}`, async () =>
        withSeed(async (rng) => {
          const model = initLlama(be, tinyConfig(opts), { seed: rng.int(0, 1e9), std: 0.2, randomizeAll: true });
          const dec = new LlamaDecoder(model, cdt);
          assert.equal(dec.cacheDtype, cdt);
          // 'auto' (the default) follows the parameters, as vLLM's kv_cache_dtype auto does
          assert.equal(new LlamaDecoder(model).cacheDtype, 'f32');
          const bfModel = initLlama(be, tinyConfig(opts), { seed: 1, dtype: 'bf16' });
          assert.equal(new LlamaDecoder(bfModel).cacheDtype, 'bf16');
          bfModel.weights.free();
          let worst = 0;
          const V = model.cfg.vocabSize;
          const prompts = [5, 1, 9].map((n) => Array.from({ length: n }, () => rng.int(3, V - 1)));
          const cache = dec.newCache(3, 16);
          const seqs = prompts.map((p) => [...p]);
          let logits = cache.prefill(prompts);
          for (let step = 0; step < 5; step++) {
            const host = await ops.read(logits);
            logits.free();
            for (let b = 0; b < 3; b++) {
              if (step > 2 && b === 1) continue; // row 1 finished after 3 steps
              const want = await fullLogits(model, seqs[b]);
              const e = relErr(host.subarray(b * V, (b + 1) * V), want);
              worst = Math.max(worst, e);
              assert.ok(e <= tol, `step ${step} row ${b}: relative error ${e}`);
            }
            const next = Int32Array.from({ length: 3 }, () => rng.int(3, V - 1));
            const active = Uint8Array.from([1, step < 2 ? 1 : 0, 1]);
            next.forEach((t, b) => {
              if (active[b]) seqs[b].push(t);
            });
            const tokens = ops.upload(be, { dtype: 'i32', data: next }, [3]);
            logits = cache.decode(tokens, active);
            tokens.free();
          }
          assert.deepEqual(
            Array.from(cache.lengths),
            seqs.map((s) => s.length),
          );
          // a bf16 cache really rounds: its logits are not those of an f32 cache
          if (cdt === 'bf16') assert.ok(worst > 1e-6, `bf16 cache: logits within ${worst} of the f32 recompute`);
          if (process.env.SPINLM_TEST_VERBOSE) console.log(`${cdt} cache: worst relative error ${worst}`);
          cache.free();
          model.weights.free();
        }));
    }

    // bf16 compute: the decoder and the full forward round the same linear layers' inputs, but their
    // attention sums in different orders, so an input near a bf16 rounding boundary can round the other
    // way (a 2^-8 relative step in that one value)
    test('prefill + decode with bf16 compute equal a full recompute with bf16 compute, and differ from f32 compute', async () =>
      withSeed(async (rng) => {
        const model = initLlama(be, tinyConfig({}), { seed: rng.int(0, 1e9), std: 0.2, randomizeAll: true, dtype: 'bf16' });
        assert.throws(
          () => new LlamaDecoder(initLlama(be, tinyConfig({}), { seed: 1 }), 'auto', 'bf16'),
          /computeDtype 'bf16' needs bf16 parameters; this model's are f32/,
        );
        const dec = new LlamaDecoder(model, 'f32', 'bf16');
        const V = model.cfg.vocabSize;
        const prompts = [6, 2, 9].map((n) => Array.from({ length: n }, () => rng.int(3, V - 1)));
        const cache = dec.newCache(3, 16);
        const seqs = prompts.map((p) => [...p]);
        let logits = cache.prefill(prompts);
        let worst = 0,
          fromF32 = 0;
        for (let step = 0; step < 4; step++) {
          const host = await ops.read(logits);
          logits.free();
          for (let b = 0; b < 3; b++) {
            const got = host.subarray(b * V, (b + 1) * V);
            const e = relErr(got, await fullLogits(model, seqs[b], 'bf16'));
            worst = Math.max(worst, e);
            assert.ok(e <= 1e-2, `step ${step} row ${b}: relative error ${e} against the bf16-compute recompute`);
            fromF32 = Math.max(fromF32, relErr(got, await fullLogits(model, seqs[b], 'f32')));
          }
          const next = Int32Array.from({ length: 3 }, () => rng.int(3, V - 1));
          next.forEach((t, b) => seqs[b].push(t));
          const tokens = ops.upload(be, { dtype: 'i32', data: next }, [3]);
          logits = cache.decode(tokens, Uint8Array.from([1, 1, 1]));
          tokens.free();
        }
        logits.free();
        // bf16 compute really rounds: its logits move away from f32 compute's by more than they differ
        // from the recompute in the same arithmetic
        assert.ok(fromF32 > 1e-4 && fromF32 > worst, `bf16 compute vs f32 compute ${fromF32}, vs its recompute ${worst}`);
        if (process.env.SPINLM_TEST_VERBOSE) console.log(`bf16 compute: vs recompute ${worst}, vs f32 compute ${fromF32}`);
        cache.free();
        model.weights.free();
      }));

    for (const [cdt, compute] of [
      ['f32', 'f32'],
      ['bf16', 'f32'],
      ['bf16', 'bf16'],
    ] as const)
      test(`a prompt prefilled into any slot, alone or with others, gives bit-identical logits and cache (batch invariance, ${cdt} cache, ${compute} compute)`, async () =>
        withSeed(async (rng) => {
          // wide and long enough that BLAS and the attention's query blocks take size-dependent paths; the
          // emulator (no BLAS: a 32 x 32 tiled GEMM; 16-query, 32-key attention tiles) runs half the width
          // and prompts up to 70 tokens: still several tiles each way (115 s -> a fraction on the emulator)
          const emu = emulated(be);
          const maxLen = emu ? 70 : 150;
          const width = emu ? { hidden: 128, intermediate: 192 } : { hidden: 256, intermediate: 384 };
          const model = initLlama(be, tinyConfig({ vocab: 300, ...width, heads: 4, kvHeads: 2 }), {
            seed: rng.int(0, 1e9),
            std: 0.05,
            randomizeAll: true,
            dtype: compute === 'bf16' ? 'bf16' : 'f32',
          });
          const dec = new LlamaDecoder(model, cdt, compute);
          const V = model.cfg.vocabSize;
          try {
            for (let trial = 0; trial < 3; trial++) {
              const R = rng.int(2, 6);
              // lengths often repeat (a run of equal lengths shares one attention call), sorted in trial 0
              const pool = [rng.int(1, maxLen), rng.int(1, maxLen)];
              const lengths = Array.from({ length: R }, () => (rng.next() < 0.6 ? pool[rng.int(0, 1)] : rng.int(1, maxLen)));
              if (trial === 0) lengths.sort((a, b) => a - b);
              const prompts = lengths.map((n) => Array.from({ length: n }, () => rng.int(3, V - 1)));
              const cache = dec.newCache(R + 1, maxLen + 10);
              const slots = Array.from({ length: R }, (_, r) => (r + 1) % (R + 1));
              const together = await ops.read(cache.prefillSlots(slots, prompts));
              // one decode step of all slots after the batched prefill
              const next = Int32Array.from({ length: R + 1 }, () => rng.int(3, V - 1));
              const tokens = ops.upload(be, { dtype: 'i32', data: next }, [R + 1]);
              const active = Uint8Array.from({ length: R + 1 }, (_, s) => (slots.includes(s) ? 1 : 0));
              const stepAll = await ops.read(cache.decode(tokens, active));
              for (let r = 0; r < R; r++) {
                const solo = dec.newCache(R + 1, maxLen + 10);
                const alone = await ops.read(solo.prefillSlots([slots[r]], [prompts[r]]));
                assert.deepEqual(
                  alone,
                  together.slice(r * V, (r + 1) * V),
                  `trial ${trial}: prompt ${r} (${prompts[r].length} tokens) alone vs with ${R - 1} others`,
                );
                const only = Uint8Array.from({ length: R + 1 }, (_, s) => (s === slots[r] ? 1 : 0));
                const stepOne = await ops.read(solo.decode(tokens, only));
                const s = slots[r];
                assert.deepEqual(
                  stepOne.slice(s * V, (s + 1) * V),
                  stepAll.slice(s * V, (s + 1) * V),
                  `trial ${trial}: decode after prompt ${r}`,
                );
                solo.free();
              }
              tokens.free();
              cache.free();
            }
          } finally {
            model.weights.free();
          }
        }));
  });
