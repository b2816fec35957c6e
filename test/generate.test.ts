// Samplers and the batched generation loop: greedy equivalences, HF's top-p set, sampled frequencies
// within chi-square bounds, seed reproducibility across batch sizes, stop rules, input order; and the
// real model's KV-cache greedy decoding equals greedy decoding by full recompute.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { answerPrompts } from '../src/generate/answers.js';
import { type DecoderCache, type DecoderModel, generate, type GenerateOptions } from '../src/generate/generate.js';
import { argmax, candidates, sampleToken } from '../src/generate/sampler.js';
import { LlamaDecoder } from '../src/model/decoder.js';
import { initLlama } from '../src/model/init.js';
import { freeInput, uploadInput } from '../src/model/input.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng } from '../src/util/rng.js';
import { withSeed } from './helpers/random.js';
import { tinyConfig } from './helpers/tiny_model.js';

/** A bigram model: the logits of the next token depend only on the last token (never on the batch). */
class BigramModel implements DecoderModel {
  calls = 0;
  constructor(readonly table: Float32Array, readonly vocabSize: number, readonly maxPositions = 64) {}
  newCache(batch: number): DecoderCache {
    const last = new Int32Array(batch);
    const rows = () => {
      const out = new Float32Array(batch * this.vocabSize);
      for (let b = 0; b < batch; b++) out.set(this.table.subarray(last[b] * this.vocabSize, (last[b] + 1) * this.vocabSize), b * this.vocabSize);
      return out;
    };
    return {
      prefill: async (prompts) => {
        this.calls++;
        prompts.forEach((p, b) => (last[b] = p[p.length - 1]));
        return rows();
      },
      decode: async (tokens, active) => {
        this.calls++;
        tokens.forEach((t, b) => { if (active[b]) last[b] = t; });
        return rows();
      },
      free: () => {},
    };
  }
}

const opts = (o: Partial<GenerateOptions> = {}): GenerateOptions => ({ temperature: 1, topK: 0, topP: 1, maxNewTokens: 12, eosIds: [0], seed: 11, batchSize: 4, ...o });

describe('sampler', () => {
  test('greedy: argmax with ties to the lowest id; top_k = 1 and temperature 0 are greedy', () =>
    withSeed((rng) => {
      assert.equal(argmax([1, 3, 3, 2]), 1);
      for (let k = 0; k < 50; k++) {
        const row = Float32Array.from({ length: 30 }, () => rng.normal() * 3);
        assert.equal(sampleToken(row, { temperature: 0, topK: 0, topP: 1 }, rng), argmax(row));
        assert.equal(sampleToken(row, { temperature: 1.3, topK: 1, topP: 0.9 }, rng), argmax(row));
        assert.equal(sampleToken(row, { temperature: 1e-6, topK: 0, topP: 1 }, rng), argmax(row));
      }
    }));

  test("top-p keeps Hugging Face's set: tokens whose preceding cumulative probability is below p", () => {
    const probs = [0.5, 0.3, 0.15, 0.05];
    const row = probs.map(Math.log);
    assert.deepEqual(candidates(row, { temperature: 1, topK: 0, topP: 0.5 }).ids, [0]);
    assert.deepEqual(candidates(row, { temperature: 1, topK: 0, topP: 0.75 }).ids, [0, 1]);
    assert.deepEqual(candidates(row, { temperature: 1, topK: 0, topP: 0.81 }).ids, [0, 1, 2]);
    assert.deepEqual(candidates(row, { temperature: 1, topK: 2, topP: 1 }).ids, [0, 1]);
    const c = candidates(row, { temperature: 1, topK: 0, topP: 0.81 });
    assert.ok(Math.abs(c.probs[0] - 0.5 / 0.95) < 1e-12);
  });

  test('sampled frequencies follow the distribution (chi-square, p > 1e-6), and temperature sharpens it', () =>
    withSeed((rng) => {
      const probs = [0.4, 0.25, 0.2, 0.1, 0.05];
      const row = probs.map(Math.log);
      const n = 20000;
      for (const t of [1, 0.5]) {
        const counts = new Array(5).fill(0);
        for (let i = 0; i < n; i++) counts[sampleToken(row, { temperature: t, topK: 0, topP: 1 }, rng)]++;
        const w = probs.map((p) => p ** (1 / t));
        const z = w.reduce((a, b) => a + b);
        const chi = counts.reduce((s, c, i) => s + (c - (n * w[i]) / z) ** 2 / ((n * w[i]) / z), 0);
        assert.ok(chi < 33.4, `chi-square ${chi} (4 dof; 33.4 is the 1e-6 critical value) at temperature ${t}: ${counts}`);
      }
    }));
});

describe('generate', () => {
  function bigram(rng: Rng, v = 9) {
    return new BigramModel(Float32Array.from({ length: v * v }, () => rng.normal() * 2), v);
  }

  test('the same seed gives the same outputs for batch sizes 1, 3 and 8, in input order', () =>
    withSeed(async (rng) => {
      const model = bigram(rng);
      const prompts = Array.from({ length: 11 }, () => Array.from({ length: rng.int(1, 6) }, () => rng.int(1, 8)));
      const runs = [];
      for (const batchSize of [1, 3, 8]) runs.push(await generate(model, prompts, opts({ batchSize })));
      assert.deepEqual(runs[1], runs[0]);
      assert.deepEqual(runs[2], runs[0]);
      const again = await generate(model, prompts, opts({ batchSize: 8, seed: 12 }));
      assert.notDeepEqual(again, runs[0], 'another seed gives other samples');
    }));

  test('greedy equals a step-by-step argmax loop; finish reasons eos / stop / length', () =>
    withSeed(async (rng) => {
      const model = bigram(rng);
      const prompts = [[3], [5, 2], [7]];
      const gens = await generate(model, prompts, opts({ temperature: 0, maxNewTokens: 6 }));
      prompts.forEach((p, i) => {
        const want: number[] = [];
        let last = p[p.length - 1];
        let reason = 'length';
        for (let s = 0; s < 6; s++) {
          const next = argmax(model.table.subarray(last * 9, last * 9 + 9));
          if (next === 0) { reason = 'eos'; break; }
          want.push(next);
          last = next;
        }
        assert.deepEqual(gens[i], { tokens: want, finishReason: reason });
      });
      // a stop sequence made of the first two greedy tokens of prompt 0, when there are two
      const first = gens[0].tokens.slice(0, 2);
      if (first.length === 2) {
        const [g] = await generate(model, [prompts[0]], opts({ temperature: 0, stopSequences: [first] }));
        assert.deepEqual(g, { tokens: [], finishReason: 'stop' });
      }
      const short = await generate(model, [[1, 2, 3, 4]], opts({ maxNewTokens: 5, eosIds: [], temperature: 1 }));
      assert.equal(short[0].tokens.length, 5);
      assert.equal(short[0].finishReason, 'length');
      await assert.rejects(generate(model, [[1]], opts({ topP: 0 })), /top_p/);
    }));

  test('the model position limit is respected', () =>
    withSeed(async (rng) => {
      const model = new BigramModel(bigram(rng).table, 9, 8);
      const [g] = await generate(model, [[1, 2, 3, 4, 5]], opts({ eosIds: [], maxNewTokens: 50 }));
      assert.equal(g.tokens.length, 3);
    }));

  test('the real model: KV-cache greedy generation equals greedy by full recompute', () =>
    withSeed(async (rng) => {
      const be = new CpuBackend();
      const model = initLlama(be, tinyConfig({ vocab: 50 }), { seed: rng.int(0, 1e9), std: 0.3, randomizeAll: true });
      const prompts = [[5, 6, 7], [9], [11, 12, 13, 14, 15]];
      const gens = await generate(new LlamaDecoder(model), prompts, opts({ temperature: 0, maxNewTokens: 8, eosIds: [2], batchSize: 3 }));
      for (const [i, p] of prompts.entries()) {
        const seq = [...p];
        const want: number[] = [];
        for (let s = 0; s < 8; s++) {
          const L = seq.length;
          const input = uploadInput(be, { rows: 1, length: L, inputIds: Int32Array.from(seq), positions: Int32Array.from({ length: L }, (_, j) => j), attentionMask: new Int32Array(L).fill(1) });
          const { logits } = model.forward(input);
          const next = argmax((await be.read(logits)).subarray((L - 1) * 50, L * 50));
          logits.free();
          freeInput(input);
          if (next === 2) break;
          want.push(next);
          seq.push(next);
        }
        assert.deepEqual(gens[i].tokens, want, `prompt ${i}`);
      }
      model.weights.free();
    }));
});

test('answers are journaled: a run killed after a batch resumes to the same answers without redoing finished prompts', () =>
  withSeed(async (rng) => {
    const dir = mkdtempSync(join(tmpdir(), 'spinlm-answers-'));
    try {
      const model = new BigramModel(Float32Array.from({ length: 81 }, () => rng.normal() * 2), 9);
      // characters '1'..'8' are tokens 1..8; token 0 is EOS
      const tok = { eosId: 0, encode: (s: string) => [...s].map(Number), decode: (ids: readonly number[]) => ` ${ids.join('')} ` };
      const prompts = Array.from({ length: 10 }, () => Array.from({ length: rng.int(1, 4) }, () => rng.int(1, 8)).join(''));
      const o = { temperature: 1, topK: 0, topP: 1, maxNewTokens: 6, seed: 5, batchSize: 3 };
      const straight = await answerPrompts(model, tok, prompts, o);
      assert.ok(straight.every((a) => a === a.trim()), 'answers are stripped');
      const journal = join(dir, 'answers.partial');
      let batches = 0;
      await assert.rejects(answerPrompts(model, tok, prompts, { ...o, journal, onProgress: () => { if (++batches === 2) throw new Error('killed'); } }), /killed/);
      model.calls = 0;
      const resumed = await answerPrompts(model, tok, prompts, { ...o, journal });
      assert.deepEqual(resumed, straight);
      const fresh = new BigramModel(model.table, 9);
      await answerPrompts(fresh, tok, prompts, o);
      assert.ok(model.calls < fresh.calls, `resumed run made ${model.calls} model calls, a fresh one ${fresh.calls}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }));
