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
import { testBackends } from './helpers/backends.js';

for (const be of testBackends()) describe(`on backend ${be.name}`, () => {

/** Logits of the last position of one sequence, by a full forward pass. */
async function fullLogits(model: LlamaModel, ids: number[]): Promise<Float32Array> {
  const L = ids.length;
  const input = uploadInput(be, { rows: 1, length: L, inputIds: Int32Array.from(ids), positions: Int32Array.from({ length: L }, (_, i) => i), attentionMask: new Int32Array(L).fill(1) }, model.cfg.vocabSize);
  const { logits } = model.forward(input);
  const all = await ops.read(logits);
  logits.free();
  freeInput(input);
  const V = model.cfg.vocabSize;
  return all.slice((L - 1) * V, L * V);
}

for (const opts of [{}, { modelType: 'qwen2' as const, kvHeads: 1, tie: true, ropeScaling: 2 }]) {
  test(`prefill + decode equal full recompute (ragged prompts, a finished row) ${JSON.stringify(opts)}`, async () =>
    withSeed(async (rng) => {
      const model = initLlama(be, tinyConfig(opts), { seed: rng.int(0, 1e9), std: 0.2, randomizeAll: true });
      const dec = new LlamaDecoder(model);
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
          assert.ok(e <= 1e-5, `step ${step} row ${b}: relative error ${e}`);
        }
        const next = Int32Array.from({ length: 3 }, () => rng.int(3, V - 1));
        const active = Uint8Array.from([1, step < 2 ? 1 : 0, 1]);
        next.forEach((t, b) => { if (active[b]) seqs[b].push(t); });
        const tokens = ops.upload(be, { dtype: 'i32', data: next }, [3]);
        logits = cache.decode(tokens, active);
        tokens.free();
      }
      assert.deepEqual(Array.from(cache.lengths), seqs.map((s) => s.length));
      cache.free();
      model.weights.free();
    }));
}
});
