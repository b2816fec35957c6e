// Samplers and the batched generation loop: greedy equivalences, HF's top-p set, sampled frequencies
// within chi-square bounds, seed reproducibility across batch sizes, stop rules, input order; and the
// real model's KV-cache greedy decoding equals greedy decoding by full recompute.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Backend } from '../src/backend/backend.js';
import { answerPrompts } from '../src/generate/answers.js';
import { type DecoderCache, type DecoderModel, generate, type GenerateOptions } from '../src/generate/generate.js';
import { argmax, candidates, sampleToken } from '../src/generate/sampler.js';
import { LlamaDecoder } from '../src/model/decoder.js';
import { initLlama } from '../src/model/init.js';
import { freeInput, uploadInput } from '../src/model/input.js';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng } from '../src/util/rng.js';
import { withSeed } from './helpers/random.js';
import { tinyConfig } from './helpers/tiny_model.js';
import * as ops from '../src/ops/index.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { emulated, testBackends } from './helpers/backends.js';

/**
 * A bigram model: the logits of the next token depend only on the last token (never on the batch).
 * On the device its logits are rows of the table gathered by the last tokens (an embedding lookup).
 */
class BigramModel implements DecoderModel {
  calls = 0;
  decodes = 0;
  /** Prompts fed to prefill so far. */
  prefilled = 0;
  /** Without prefillSlots its caches force the static schedule. */
  slotted = true;
  private readonly tableT: Tensor<'f32'>;
  constructor(
    readonly backend: Backend,
    readonly table: Float32Array,
    readonly vocabSize: number,
    readonly maxPositions = 64,
  ) {
    this.tableT = ops.upload(backend, { dtype: 'f32', data: table }, [vocabSize, vocabSize]);
  }
  newCache(): DecoderCache {
    const prefill = (prompts: readonly (readonly number[])[]) => {
      this.calls++;
      this.prefilled += prompts.length;
      const last = ops.upload(this.backend, { dtype: 'i32', data: Int32Array.from(prompts, (p) => p[p.length - 1]) }, [prompts.length]);
      const out = ops.embedding(last, this.tableT);
      last.free();
      return out;
    };
    return {
      prefill,
      // inactive rows are never sampled, so their logits need not stay the same
      decode: (tokens) => {
        this.calls++;
        this.decodes++;
        return ops.embedding(tokens, this.tableT);
      },
      ...(this.slotted ? { prefillSlots: (_slots: readonly number[], prompts: readonly (readonly number[])[]) => prefill(prompts) } : {}),
      free: () => {},
    };
  }
}

const opts = (o: Partial<GenerateOptions> = {}): GenerateOptions => ({
  temperature: 1,
  topK: 0,
  topP: 1,
  maxNewTokens: 12,
  eosIds: [0],
  seed: 11,
  batchSize: 4,
  ...o,
});

describe('sampler', () => {
  test('greedy: argmax with ties to the lowest id; top_k = 1 and temperature 0 are greedy', async () =>
    withSeed(async (rng) => {
      assert.equal(argmax([1, 3, 3, 2]), 1);
      for (let k = 0; k < 50; k++) {
        const row = Float32Array.from({ length: 30 }, () => rng.normal() * 3);
        assert.equal(sampleToken(row, { temperature: 0, topK: 0, topP: 1 }, rng), argmax(row));
        assert.equal(sampleToken(row, { temperature: 1.3, topK: 1, topP: 0.9 }, rng), argmax(row));
        assert.equal(sampleToken(row, { temperature: 1e-6, topK: 0, topP: 1 }, rng), argmax(row));
      }
    }));

  test("top-p keeps Hugging Face's set: tokens whose preceding cumulative probability is below p", async () => {
    const probs = [0.5, 0.3, 0.15, 0.05];
    const row = probs.map(Math.log);
    assert.deepEqual(candidates(row, { temperature: 1, topK: 0, topP: 0.5 }).ids, [0]);
    assert.deepEqual(candidates(row, { temperature: 1, topK: 0, topP: 0.75 }).ids, [0, 1]);
    assert.deepEqual(candidates(row, { temperature: 1, topK: 0, topP: 0.81 }).ids, [0, 1, 2]);
    assert.deepEqual(candidates(row, { temperature: 1, topK: 2, topP: 1 }).ids, [0, 1]);
    const c = candidates(row, { temperature: 1, topK: 0, topP: 0.81 });
    assert.ok(Math.abs(c.probs[0] - 0.5 / 0.95) < 1e-12);
  });

  test('sampled frequencies follow the distribution (chi-square, p > 1e-6), and temperature sharpens it', async () =>
    withSeed(async (rng) => {
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

for (const be of await testBackends())
  describe(`generate on backend ${be.name}`, () => {
    function bigram(rng: Rng, v = 9) {
      return new BigramModel(
        be,
        Float32Array.from({ length: v * v }, () => rng.normal() * 2),
        v,
      );
    }

    test('device sampling equals the host sampler row by row, with the same RNG streams (many options)', async () =>
      withSeed(async (rng) => {
        for (let trial = 0; trial < 30; trial++) {
          const b = rng.int(1, 9),
            v = rng.int(1, 300);
          const o = {
            temperature: [0, 0.7, 1, 1.5][rng.int(0, 3)],
            topK: [0, 1, 5, 1000][rng.int(0, 3)],
            topP: [1, 0.9, 0.3][rng.int(0, 2)],
          };
          const rows = Float32Array.from({ length: b * v }, () => rng.normal() * [0.5, 4][rng.int(0, 1)]);
          for (let i = 0; i < b * v; i++) if (rng.next() < 0.05) rows[i] = -Infinity; // masked logits
          for (let i = 0; i < b * v; i++) if (rng.next() < 0.05) rows[i] = rows[i - (i % v)]; // ties
          const streams = Array.from({ length: b }, (_, k) => new Rng(rng.nextU32()).fork(k));
          const words = new Uint32Array(4 * b);
          streams.forEach((r, k) => words.set(r.getState().s, 4 * k));
          const active = Int32Array.from({ length: b }, () => (rng.next() < 0.8 ? 1 : 0));
          const logits = ops.upload(be, { dtype: 'f32', data: rows }, [b, v]);
          const state = ops.upload(be, { dtype: 'i32', data: new Int32Array(words.buffer) }, [b, 4]);
          const activeT = ops.upload(be, { dtype: 'i32', data: active }, [b]);
          for (let step = 0; step < 3; step++) {
            const got = await ops.read(ops.sampleTokens(logits, state, activeT, o));
            for (let k = 0; k < b; k++) {
              const want = active[k] ? sampleToken(rows.subarray(k * v, (k + 1) * v), o, streams[k]) : 0;
              assert.equal(got[k], want, `trial ${trial} step ${step} row ${k} (v ${v}, ${JSON.stringify(o)})`);
            }
          }
          // the device states advanced exactly as the host streams did
          const after = new Uint32Array((await ops.read(state)).buffer);
          streams.forEach((r, k) => assert.deepEqual(Array.from(after.subarray(4 * k, 4 * k + 4)), r.getState().s, `state of row ${k}`));
        }
      }));

    test('a vocabulary limit: only ids below it are sampled, greedy too, as the host sampler over the row cut there', async () =>
      withSeed(async (rng) => {
        for (let trial = 0; trial < 30; trial++) {
          const b = rng.int(1, 9),
            v = rng.int(2, 300),
            limit = rng.int(1, v - 1);
          const o = {
            temperature: [0, 0.7, 1, 1.5][rng.int(0, 3)],
            topK: [0, 1, 5, 1000][rng.int(0, 3)],
            topP: [1, 0.9, 0.3][rng.int(0, 2)],
          };
          // the ids past the limit (a padded vocabulary) have the largest logits: an unmasked sampler picks them
          const rows = Float32Array.from({ length: b * v }, (_, i) => (i % v >= limit ? 20 + rng.normal() : rng.normal() * 2));
          for (let i = 0; i < b * v; i++) if (i % v < limit && rng.next() < 0.05) rows[i] = -Infinity;
          const streams = Array.from({ length: b }, (_, k) => new Rng(rng.nextU32()).fork(k));
          const words = new Uint32Array(4 * b);
          streams.forEach((r, k) => words.set(r.getState().s, 4 * k));
          const active = Int32Array.from({ length: b }, () => (rng.next() < 0.8 ? 1 : 0));
          const logits = ops.upload(be, { dtype: 'f32', data: rows }, [b, v]);
          const state = ops.upload(be, { dtype: 'i32', data: new Int32Array(words.buffer) }, [b, 4]);
          const activeT = ops.upload(be, { dtype: 'i32', data: active }, [b]);
          for (let step = 0; step < 2; step++) {
            const got = await ops.read(ops.sampleTokens(logits, state, activeT, o, limit));
            for (let k = 0; k < b; k++) {
              const want = active[k] ? sampleToken(rows.subarray(k * v, k * v + limit), o, streams[k]) : 0;
              assert.equal(got[k], want, `trial ${trial} step ${step} row ${k} (v ${v}, limit ${limit}, ${JSON.stringify(o)})`);
            }
          }
          if (trial === 0) {
            assert.throws(() => ops.sampleTokens(logits, state, activeT, o, 0), /limit must be an integer in \[1, /);
            assert.throws(() => ops.sampleTokens(logits, state, activeT, o, v + 1), /limit must be an integer in \[1, /);
          }
          for (const t of [logits, state, activeT]) t.free();
        }
      }));

    test('generation never samples at or past vocabLimit, nor an excluded id (a padded vocabulary, a tokenizer with gaps)', async () =>
      withSeed(async (rng) => {
        const V = 12,
          limit = 9,
          gap = 4;
        // every row prefers the padding (9..11) and the gap id: masked, the best of the rest wins
        const table = Float32Array.from({ length: V * V }, (_, i) => (i % V >= limit || i % V === gap ? 8 : 0) + rng.normal());
        const model = new BigramModel(be, table, V);
        const prompts = Array.from({ length: 7 }, () => Array.from({ length: rng.int(1, 4) }, () => rng.int(1, V - 1)));
        for (const schedule of ['static', 'continuous'] as const)
          for (const temperature of [0, 1]) {
            const o = opts({ temperature, schedule, vocabLimit: limit, excludedIds: [gap, 10], eosIds: [], maxNewTokens: 10 });
            const gens = await generate(model, prompts, o);
            for (const g of gens)
              assert.ok(
                g.tokens.every((t) => t < limit && t !== gap),
                `${schedule} T=${temperature}: ${g.tokens}`,
              );
            if (temperature === 0)
              prompts.forEach((p, i) => {
                let last = p[p.length - 1];
                for (const t of gens[i].tokens) {
                  const row = Array.from(table.subarray(last * V, last * V + limit), (x, j) => (j === gap ? -Infinity : x));
                  assert.equal(t, argmax(row));
                  last = t;
                }
              });
          }
        // answerPrompts takes the limit and the gaps from the tokenizer
        const tok = {
          eosId: 0,
          vocabSize: limit,
          gapIds: [gap],
          encode: (s: string) => [...s].map(Number),
          decode: (ids: readonly number[]) => {
            if (ids.some((t) => t >= limit || t === gap)) throw new Error(`decode: ${ids} holds an id the tokenizer lacks`);
            return ids.join('');
          },
        };
        const answers = await answerPrompts(model, tok, ['12', '5', '87'], {
          temperature: 1,
          topK: 0,
          topP: 1,
          maxNewTokens: 8,
          seed: 3,
          batchSize: 2,
        });
        assert.equal(answers.length, 3);
        await assert.rejects(generate(model, prompts, opts({ vocabLimit: 0 })), /vocabLimit must be a positive integer/);
        await assert.rejects(
          generate(model, prompts, opts({ vocabLimit: 2, excludedIds: [0, 1] })),
          /leave no id below the vocabulary limit 2/,
        );
      }));

    test('the same seed gives the same outputs for batch sizes 1, 3 and 8, in input order', async () =>
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

    test("continuous batching gives the static schedule's outputs (many seeds, batch sizes, lengths, options) and refills slots", async () =>
      withSeed(async (rng) => {
        for (let trial = 0; trial < 40; trial++) {
          const model = bigram(rng, rng.int(3, 12));
          const v = model.vocabSize;
          const prompts = Array.from({ length: rng.int(1, 25) }, () => Array.from({ length: rng.int(1, 9) }, () => rng.int(1, v - 1)));
          const o = opts({
            seed: rng.int(0, 1e6),
            batchSize: rng.int(1, 9),
            maxNewTokens: rng.int(1, 40),
            temperature: [0, 0.7, 1, 1.5][rng.int(0, 3)],
            topK: [0, 1, 3][rng.int(0, 2)],
            topP: [1, 0.8][rng.int(0, 1)],
            eosIds: rng.next() < 0.2 ? [] : [0],
            stopSequences: rng.next() < 0.3 ? [[rng.int(1, v - 1), rng.int(1, v - 1)]] : undefined,
          });
          const want = await generate(model, prompts, { ...o, schedule: 'static' });
          const got = await generate(model, prompts, o);
          assert.deepEqual(got, want, `trial ${trial}: ${JSON.stringify({ ...o, n: prompts.length })}`);
        }
        // a chain 1 -> 2 -> ... -> 8 -> EOS: a prompt ending in t gets 8 - t tokens. One long answer
        // among short ones: the static schedule decodes each pair to its longest answer, continuous
        // batching refills the slot of each short one at once.
        const chain = new Float32Array(81).fill(-5);
        for (let t = 1; t < 8; t++) chain[t * 9 + t + 1] = 5;
        chain[8 * 9] = 5;
        const prompts = [[1], [7], [1], [7], [7], [7], [7], [7]];
        const steps = async (schedule: 'static' | 'continuous') => {
          const m = new BigramModel(be, chain, 9);
          const gens = await generate(m, prompts, opts({ temperature: 0, batchSize: 2, schedule }));
          return { gens, decodes: m.decodes };
        };
        const st = await steps('static'),
          co = await steps('continuous');
        assert.deepEqual(co.gens, st.gens);
        assert.deepEqual(co.gens[0].tokens, [2, 3, 4, 5, 6, 7, 8]);
        assert.ok(co.decodes < st.decodes, `continuous made ${co.decodes} decode calls, static ${st.decodes}`);
        // a model without prefillSlots falls back to the static schedule
        const plain = new BigramModel(be, chain, 9);
        plain.slotted = false;
        assert.deepEqual(await generate(plain, prompts, opts({ temperature: 0, batchSize: 2 })), st.gens);
        assert.equal(plain.decodes, st.decodes);
        await assert.rejects(generate(plain, prompts, opts({ schedule: 'eager' as 'static' })), /schedule must be/);
      }));

    test('greedy equals a step-by-step argmax loop; finish reasons eos / stop / length', async () =>
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
            if (next === 0) {
              reason = 'eos';
              break;
            }
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

    test('the model position limit is respected, per prompt, in both schedules', async () =>
      withSeed(async (rng) => {
        const model = new BigramModel(be, bigram(rng).table, 9, 8);
        for (const schedule of ['static', 'continuous'] as const) {
          const [g] = await generate(model, [[1, 2, 3, 4, 5]], opts({ eosIds: [], maxNewTokens: 50, schedule }));
          assert.equal(g.tokens.length, 3);
          // a short prompt batched with a long one gets its own room (8 - 2 positions), not the long one's
          const gens = await generate(
            model,
            [
              [1, 2],
              [1, 2, 3, 4, 5, 6],
            ],
            opts({ eosIds: [], maxNewTokens: 50, batchSize: 2, schedule }),
          );
          assert.deepEqual(
            gens.map((x) => x.tokens.length),
            [6, 2],
            schedule,
          );
        }
      }));

    test('the real model: continuous batching and other batch sizes give the static outputs (greedy and sampled, mixed lengths, many seeds)', async () =>
      withSeed(async (rng) => {
        // wide enough that BLAS would take size-dependent paths (a batched prefill through BLAS fails here).
        // The emulator (no BLAS: its GEMM is the 32 x 32 tiled kernel) runs a narrower model, shorter
        // prompts and fewer trials: still several GEMM tiles, several 16-query and 32-key attention tiles,
        // greedy and sampled trials (this test took 595 s of the emulator's 1054 s model stage)
        const emu = emulated(be);
        const vocab = 40;
        const width = emu ? { hidden: 128, intermediate: 192 } : { hidden: 256, intermediate: 384 };
        const model = initLlama(be, tinyConfig({ vocab, ...width, heads: 4, kvHeads: 2 }), {
          seed: rng.int(0, 1e9),
          std: 0.1,
          randomizeAll: true,
        });
        const dec = new LlamaDecoder(model);
        try {
          for (let trial = 0; trial < (emu ? 3 : 8); trial++) {
            const prompts = Array.from({ length: rng.int(3, emu ? 8 : 14) }, () =>
              Array.from({ length: rng.int(1, emu ? 36 : 90) }, () => rng.int(3, vocab - 1)),
            );
            // a few EOS ids among 40 tokens: answers from 1 token to max_new_tokens
            const eosIds = Array.from({ length: rng.int(1, 3) }, () => rng.int(3, vocab - 1));
            const o = opts({
              seed: rng.int(0, 1e6),
              batchSize: rng.int(1, 6),
              maxNewTokens: rng.int(4, emu ? 10 : 24),
              eosIds,
              temperature: trial % 2 ? 0 : [0.8, 1.2][rng.int(0, 1)],
              topK: [0, 7][rng.int(0, 1)],
              topP: [1, 0.9][rng.int(0, 1)],
            });
            const want = await generate(dec, prompts, { ...o, schedule: 'static' });
            const got = await generate(dec, prompts, o);
            assert.deepEqual(got, want, `trial ${trial}: ${JSON.stringify({ ...o, lengths: prompts.map((p) => p.length) })}`);
            // and another batch size (other row counts in every prefill and decode step)
            const batchSize = rng.int(1, 9);
            const other = await generate(dec, prompts, { ...o, batchSize });
            assert.deepEqual(other, want, `trial ${trial}: batch size ${batchSize} vs ${o.batchSize}`);
          }
        } finally {
          model.weights.free();
        }
      }));

    test('the real model: KV-cache greedy generation equals greedy by full recompute', async () =>
      withSeed(async (rng) => {
        const model = initLlama(be, tinyConfig({ vocab: 50 }), { seed: rng.int(0, 1e9), std: 0.3, randomizeAll: true });
        const prompts = [[5, 6, 7], [9], [11, 12, 13, 14, 15]];
        const gens = await generate(new LlamaDecoder(model), prompts, opts({ temperature: 0, maxNewTokens: 8, eosIds: [2], batchSize: 3 }));
        for (const [i, p] of prompts.entries()) {
          const seq = [...p];
          const want: number[] = [];
          for (let s = 0; s < 8; s++) {
            const L = seq.length;
            const input = uploadInput(
              be,
              {
                rows: 1,
                length: L,
                inputIds: Int32Array.from(seq),
                positions: Int32Array.from({ length: L }, (_, j) => j),
                attentionMask: new Int32Array(L).fill(1),
              },
              50,
            );
            const { logits } = model.forward(input);
            const next = argmax((await ops.read(logits)).subarray((L - 1) * 50, L * 50));
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

    test('answers are journaled: a run killed after a batch resumes to the same answers without redoing finished prompts', async () =>
      withSeed(async (rng) => {
        const dir = mkdtempSync(join(tmpdir(), 'spinlm-answers-'));
        try {
          const model = new BigramModel(
            be,
            Float32Array.from({ length: 81 }, () => rng.normal() * 2),
            9,
          );
          // characters '1'..'8' are tokens 1..8; token 0 is EOS
          const tok = { eosId: 0, encode: (s: string) => [...s].map(Number), decode: (ids: readonly number[]) => ` ${ids.join('')} ` };
          const prompts = Array.from({ length: 10 }, () => Array.from({ length: rng.int(1, 4) }, () => rng.int(1, 8)).join(''));
          const o = { temperature: 1, topK: 0, topP: 1, maxNewTokens: 6, seed: 5, batchSize: 3 };
          const straight = await answerPrompts(model, tok, prompts, o);
          assert.ok(
            straight.every((a) => a === a.trim()),
            'answers are stripped',
          );
          const journal = join(dir, 'answers.partial');
          let batches = 0;
          await assert.rejects(
            answerPrompts(model, tok, prompts, {
              ...o,
              journal,
              onProgress: () => {
                if (++batches === 2) throw new Error('killed');
              },
            }),
            /killed/,
          );
          // the resumed run prefills exactly the prompts the journal does not hold (the number of model
          // calls is no measure: with continuous batching the longest answer sets it)
          // (the first line is the journal's fingerprint, not an answer)
          const journaled = readFileSync(journal, 'utf8').trim().split('\n').length - 1;
          assert.ok(journaled >= 2 && journaled < prompts.length, `${journaled} answers journaled before the kill`);
          model.prefilled = 0;
          const resumed = await answerPrompts(model, tok, prompts, { ...o, journal });
          assert.deepEqual(resumed, straight);
          assert.equal(model.prefilled, prompts.length - journaled, 'finished prompts are not generated again');
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }));
  });
