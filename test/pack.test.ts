// The lean batch layout (src/spin/pack.ts, issue 27): each pair one sequence [prompt | real | generated]
// with positions restarting after the prompt and attention spans hiding one answer from the other, the
// pairs of a micro-batch back to back in one row. Checked: the layout itself by hand; on every backend,
// the packed log-probs and the SPIN loss's parameter gradients equal today's two padded rows per pair
// (tolerances below; Llama, Mistral's window, Gemma 2's soft-caps and alternating windows); with the
// row-invariant model (model.rowInvariant) a sequence's log-prob is bit for bit the same whatever it is
// packed with and in what batch size; the token budget's runs.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseConfig } from '../src/model/config.js';
import { initLlama } from '../src/model/init.js';
import { freeInput, freeLossRows, uploadBatchLossRows, uploadInput } from '../src/model/input.js';
import type { LlamaModel } from '../src/model/llama.js';
import { collateSpinBatch, type SpinBatch, type TokenizedPair } from '../src/spin/batch.js';
import { freeSpinLossContext, spinLossDlogp, spinLossFromLogprobs, spinLossMetrics } from '../src/spin/loss.js';
import { packedPairTokens, packSequences, packSpinBatch, splitByTokens } from '../src/spin/pack.js';
import { scoreBatch } from '../src/spin/score.js';
import type { Rng } from '../src/util/rng.js';
import { GEMMA2_SMALL } from './helpers/gemma_configs.js';
import { relErr } from './helpers/loss_ref.js';
import { withSeed } from './helpers/random.js';
import { tinyConfig } from './helpers/tiny_model.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';

const EOS = 2;

test('the pair layout by hand: ids, positions restarting after the prompt, spans, the shared loss row, EOS masks', () => {
  // prompt [5 6 7], real [8 9 EOS], generated [10 EOS]; then a pair whose prompts differ (two sequences)
  const pairs: TokenizedPair[] = [
    { real: { prompt: [5, 6, 7], answer: [8, 9, EOS] }, generated: { prompt: [5, 6, 7], answer: [10, EOS] } },
    { real: { prompt: [3, EOS], answer: [4, EOS] }, generated: { prompt: [3], answer: [4, EOS] } },
  ];
  const b = packSpinBatch(pairs, EOS);
  assert.deepEqual([...b.inputIds], [5, 6, 7, 8, 9, EOS, 10, EOS, 3, EOS, 4, EOS, 3, 4, EOS]);
  assert.deepEqual([...b.positions], [0, 1, 2, 3, 4, 5, 3, 4, 0, 1, 2, 3, 0, 1, 2]);
  // an EOS inside a text is not attended to (the official rule), the appended one is
  assert.deepEqual([...b.attentionMask], [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1]);
  const spans = Array.from({ length: b.length }, (_, i) => [...b.spans.subarray(3 * i, 3 * i + 3)]);
  assert.deepEqual(spans.slice(0, 6), Array(6).fill([0, 0, 0]));
  assert.deepEqual(spans.slice(6, 8), Array(2).fill([0, 3, 6])); // the generated answer hides the real one
  assert.deepEqual(spans.slice(8, 12), Array(4).fill([8, 8, 8]));
  assert.deepEqual(spans.slice(12), Array(3).fill([12, 12, 12]));
  // loss rows: real of pair 0 from positions 2, 3, 4; generated of pair 0 from 2 (shared) and 6; pair 1 as two sequences
  assert.deepEqual([...b.loss.rows], [2, 3, 4, 2, 6, 9, 10, 12, 13]);
  assert.deepEqual([...b.loss.targets], [8, 9, EOS, 10, EOS, 4, EOS, 4, EOS]);
  assert.deepEqual([...b.loss.segments], [0, 0, 0, 2, 2, 1, 1, 3, 3]);
  assert.deepEqual([...b.targetCounts], [3, 2, 2, 2]);
  assert.equal(b.seqLength, 6);
  assert.equal(packedPairTokens(pairs[0]), 8);
  assert.equal(packedPairTokens(pairs[1]), 7);
  const s = packSequences([pairs[0].real, pairs[1].generated], EOS);
  assert.deepEqual([...s.loss.rows], [2, 3, 4, 6, 7]);
  assert.deepEqual([...s.loss.segments], [0, 0, 0, 1, 1]);
  // token budget: runs in order, an item over the budget alone
  assert.deepEqual(
    splitByTokens([4, 3, 9, 2, 2, 2], (x) => x, 7),
    [[4, 3], [9], [2, 2, 2]],
  );
  assert.deepEqual(
    splitByTokens([4, 3], (x) => x, 0),
    [[4, 3]],
  );
});

for (const be of await testBackends())
  describe(`the packed pair layout on backend ${be.name}`, () => {
    function randomPair(rng: Rng, vocab: number, maxLen = 9): TokenizedPair {
      const toks = (n: number) => Array.from({ length: n }, () => rng.int(3, vocab - 1));
      const prompt = toks(rng.int(1, maxLen));
      return {
        real: { prompt, answer: [...toks(rng.int(0, maxLen)), EOS] },
        generated: { prompt, answer: [...toks(rng.int(0, maxLen)), EOS] },
      };
    }

    const models: [string, (seed: number) => LlamaModel][] = [
      ['llama', (seed) => initLlama(be, tinyConfig(), { seed, std: 0.2, randomizeAll: true })],
      // a window shorter than the sequences: distances count positions, not the hidden answer
      [
        'mistral, window 5',
        (seed) => initLlama(be, tinyConfig({ modelType: 'mistral', slidingWindow: 5 }), { seed, std: 0.2, randomizeAll: true }),
      ],
      [
        'gemma2 (soft-caps, window 7)',
        (seed) => initLlama(be, parseConfig(GEMMA2_SMALL, 'gemma2 small'), { seed, std: 0.2, randomizeAll: true }),
      ],
    ];

    /** The SPIN loss and its parameter gradients on one batch (fused head, as training runs). */
    async function lossAndGrads(model: LlamaModel, batch: SpinBatch, refLogps: Float32Array) {
      const input = uploadInput(model.backend, batch, model.cfg.vocabSize);
      model.weights.zeroGrad();
      const ref = ops.upload(be, { dtype: 'f32', data: refLogps }, [refLogps.length]);
      const rows = uploadBatchLossRows(be, batch);
      const { logp, state } = model.forwardLogprobs(input, rows, { train: true });
      const ctx = spinLossFromLogprobs(logp, rows.segments!, ref, batch.pairs, { beta: 0.5, lossType: 'sigmoid' });
      const loss = (await spinLossMetrics(ctx)).loss;
      const dlogp = spinLossDlogp(ctx);
      model.backwardLogprobs(state!, dlogp);
      freeSpinLossContext(ctx);
      for (const t of [logp, dlogp, ref]) t.free();
      freeLossRows(rows);
      freeInput(input);
      const grads = new Map<string, Float32Array>();
      for (const [name, g] of model.weights.grads) grads.set(name, (await ops.read(g)).slice());
      return { loss, grads };
    }

    for (const [what, make] of models)
      test(`${what}: packed log-probs, loss and gradients equal two padded rows per pair`, async () =>
        withSeed(async (rng) => {
          const model = make(rng.int(0, 1e9));
          const vocab = model.cfg.vocabSize;
          const pairs = Array.from({ length: 4 }, () => randomPair(rng, vocab));
          const padded = collateSpinBatch(pairs, EOS, 0);
          const packed = packSpinBatch(pairs, EOS);
          assert.ok(packed.length < padded.rows * padded.length, 'the packed row is shorter than the padded rows');
          // log-probs: sums of ~20 terms of ~-5 in f32; the paths differ in summation orders only
          const a = await scoreBatch(model, packed);
          const b = await scoreBatch(model, padded);
          assert.ok(relErr(a, b) <= 1e-5, `log-probs: ${a} vs ${b}`);
          model.weights.enableTraining();
          const ref = new Float32Array(8).map(() => -30 + rng.normal() * 5);
          const lp = await lossAndGrads(model, packed, ref);
          const lq = await lossAndGrads(model, padded, ref);
          assert.ok(Math.abs(lp.loss - lq.loss) <= 1e-5, `loss ${lp.loss} vs ${lq.loss}`);
          for (const [name, g] of lq.grads) {
            const e = relErr(lp.grads.get(name)!, g);
            assert.ok(e <= 1e-4, `${name}: packed vs padded gradient err ${e}`);
          }
          model.weights.free();
        }));

    test('row-invariant model: a sequence log-prob is bit for bit independent of its packing and batch size', async () =>
      withSeed(async (rng) => {
        for (const [what, make] of [models[0], models[2]]) {
          const model = make(rng.int(0, 1e9));
          model.rowInvariant = true;
          const pairs = Array.from({ length: 6 }, () => randomPair(rng, model.cfg.vocabSize, 12));
          const alone = await Promise.all(pairs.map(async (p) => scoreBatch(model, packSpinBatch([p], EOS))));
          for (const order of [
            [0, 1, 2, 3, 4, 5],
            [5, 3, 1, 0, 2, 4],
            [2, 4],
          ]) {
            const s = await scoreBatch(
              model,
              packSpinBatch(
                order.map((i) => pairs[i]),
                EOS,
              ),
            );
            order.forEach((i, k) => {
              assert.ok(
                Object.is(s[k], alone[i][0]),
                `${what}: pair ${i} real at place ${k} of ${order.length}: ${s[k]} vs ${alone[i][0]}`,
              );
              assert.ok(
                Object.is(s[order.length + k], alone[i][1]),
                `${what}: pair ${i} generated at place ${k}: ${s[order.length + k]} vs ${alone[i][1]}`,
              );
            });
          }
          model.weights.free();
        }
      }));
  });
