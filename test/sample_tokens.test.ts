// sampleTokens on every backend gives, for every seed, exactly the host sampler's tokens
// (src/generate/sampler.ts sampleToken, float64) and advances each row's xoshiro128** state as the
// host Rng does. The cases aim at the device algorithms (native/cuda/sample.cu, docs/cuda.md
// "Sampling"): the radix select and its ties at the k-th value, the ordered compaction, the stable sort
// over many chunks, the float64 sums replayed by a block (binade crossings, rounding ties), masked rows
// and the vocabulary limit. Exact equality: no tolerance.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { describe, test } from 'node:test';
import type { Backend } from '../src/backend/backend.js';
import { type SamplingOptions, sampleToken } from '../src/generate/sampler.js';
import { emulatorPath } from '../src/backend/cuda/native.js';
import * as ops from '../src/ops/index.js';
import { Rng } from '../src/util/rng.js';
import { testBackends } from './helpers/backends.js';
import { withSeed } from './helpers/random.js';

/** Samples `steps` times from rows [b, v] on the backend and compares each token and the final states. */
async function expectHostTokens(
  be: Backend,
  rng: Rng,
  rows: Float32Array,
  b: number,
  v: number,
  o: SamplingOptions,
  what: string,
  opts: { limit?: number; steps?: number; active?: Int32Array } = {},
): Promise<number[]> {
  const limit = opts.limit ?? v;
  const streams = Array.from({ length: b }, (_, k) => new Rng(rng.nextU32()).fork(k));
  const words = new Uint32Array(4 * b);
  streams.forEach((r, k) => words.set(r.getState().s, 4 * k));
  const active = opts.active ?? new Int32Array(b).fill(1);
  const logits = ops.upload(be, { dtype: 'f32', data: rows }, [b, v]);
  const state = ops.upload(be, { dtype: 'i32', data: new Int32Array(words.buffer) }, [b, 4]);
  const activeT = ops.upload(be, { dtype: 'i32', data: active }, [b]);
  const seen: number[] = [];
  try {
    for (let step = 0; step < (opts.steps ?? 2); step++) {
      const got = await ops.read(ops.sampleTokens(logits, state, activeT, o, limit));
      for (let k = 0; k < b; k++) {
        const want = active[k] ? sampleToken(rows.subarray(k * v, k * v + limit), o, streams[k]) : 0;
        assert.equal(got[k], want, `${what}: step ${step} row ${k} (v ${v}, limit ${limit}, ${JSON.stringify(o)})`);
        seen.push(got[k]);
      }
    }
    const after = new Uint32Array((await ops.read(state)).buffer);
    streams.forEach((r, k) => assert.deepEqual(Array.from(after.subarray(4 * k, 4 * k + 4)), r.getState().s, `${what}: state of row ${k}`));
  } finally {
    for (const t of [logits, state, activeT]) t.free();
  }
  return seen;
}

/** One thread's `s = 0; for (x of v) s += x` and the first i where the running sum reaches `bound`. */
function sequentialSums(v: Float64Array, bound: number): [number, number, number] {
  let z = 0;
  for (const x of v) z += x;
  let s = 0;
  for (let i = 0; i < v.length; i++) {
    s += v[i];
    if (!(s < bound)) return [z, i, s];
  }
  return [z, v.length, s];
}

function normalRows(rng: Rng, n: number, scale: number): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal() * scale);
}

// The contract here is bit-exactness with the host's float64 arithmetic: the native backends (CPU, CUDA).
// WebGPU has no float64 (docs/webgpu.md: its f32 probabilities may pick the neighbouring id near a
// boundary); test/generate.test.ts checks its sampler against the host's.
for (const be of (await testBackends()).filter((b) => b.name !== 'webgpu'))
  describe(`sampleTokens on backend ${be.name}: the host sampler's tokens for every seed`, () => {
    test('top_k 0 over a large vocabulary (16384 and 40000): pure temperature, and with top_p', async () =>
      withSeed(async (rng) => {
        for (const [v, o] of [
          [16384, { temperature: 1, topK: 0, topP: 1 }],
          [16384, { temperature: 0.8, topK: 0, topP: 0.95 }],
          [40000, { temperature: 1.3, topK: 0, topP: 1 }],
        ] as const) {
          const b = 2;
          // a peaked row (a few large logits) and a flat one (every token matters to the sum)
          const rows = normalRows(rng, b * v, 1);
          for (let i = 0; i < 20; i++) rows[rng.int(0, v - 1)] += 8;
          await expectHostTokens(be, rng, rows, b, v, o, 'large vocabulary', { steps: 3 });
        }
      }));

    test('top_k 1 is the argmax (ties to the lowest id) and top_k 2 keeps the two best', async () =>
      withSeed(async (rng) => {
        const b = 4,
          v = 700;
        const rows = Float32Array.from({ length: b * v }, () => Math.round(rng.normal() * 2)); // many ties
        await expectHostTokens(be, rng, rows, b, v, { temperature: 1, topK: 1, topP: 1 }, 'top_k 1');
        const two = await expectHostTokens(be, rng, rows, b, v, { temperature: 5, topK: 2, topP: 1 }, 'top_k 2', { steps: 8 });
        for (let i = 0; i < two.length; i++) {
          const k = i % b;
          const row = Array.from(rows.subarray(k * v, (k + 1) * v));
          const order = row.map((_, j) => j).sort((a, c) => row[c] - row[a] || a - c);
          assert.ok(two[i] === order[0] || two[i] === order[1], `top_k 2 drew ${two[i]}, not one of ${order.slice(0, 2)}`);
        }
      }));

    test('large k (1000 of 5000, and k past the candidates), with and without top_p', async () =>
      withSeed(async (rng) => {
        const b = 3,
          v = 5000;
        for (const o of [
          { temperature: 1, topK: 1000, topP: 1 },
          { temperature: 0.7, topK: 1000, topP: 0.9 },
          { temperature: 1, topK: 4999, topP: 1 },
          { temperature: 1, topK: 6000, topP: 0.5 },
        ]) {
          const rows = normalRows(rng, b * v, 2);
          for (let i = 0; i < b * v; i++) if (rng.next() < 0.1) rows[i] = -Infinity;
          await expectHostTokens(be, rng, rows, b, v, o, 'large k');
        }
      }));

    test('top_p alone, from a single token to almost all of them', async () =>
      withSeed(async (rng) => {
        const b = 4,
          v = 3000;
        for (const topP of [0.01, 0.3, 0.9, 0.999]) {
          const rows = normalRows(rng, b * v, [0.3, 3][rng.int(0, 1)]);
          await expectHostTokens(be, rng, rows, b, v, { temperature: 1, topK: 0, topP }, 'top_p');
        }
      }));

    test('ties at the k-th value: equal logits (and -0 with +0) cut by k keep the lower ids', async () =>
      withSeed(async (rng) => {
        const b = 4,
          v = 2000;
        for (const topK of [3, 50, 600, 1000, 0]) {
          // few distinct values: k falls inside a group of equal logits (-0 and +0 are one group)
          const rows = Float32Array.from({ length: b * v }, () => [-0.2, -0, 0, 0.1, 0.3][rng.int(0, 4)]);
          for (const o of [
            { temperature: 1, topK, topP: 1 },
            { temperature: 0.5, topK, topP: 0.6 },
          ])
            await expectHostTokens(be, rng, rows, b, v, o, 'ties at k', { steps: 4 });
        }
        // logits one float32 ulp apart (keys that differ in their lowest bits only)
        const near = Float32Array.from({ length: b * v }, () => Math.fround(1 + rng.int(0, 7) * 2 ** -23));
        for (const topK of [0, 5, 700])
          await expectHostTokens(be, rng, near, b, v, { temperature: 1, topK, topP: 1 }, 'ulps apart', { steps: 4 });
        // every logit equal: probabilities 1/n, sums that cross powers of two at exact integers
        for (const n of [3, 256, 1024, 1000]) {
          const rows = new Float32Array(2 * n).fill(0.25);
          for (const o of [
            { temperature: 1, topK: 0, topP: 1 },
            { temperature: 1, topK: 0, topP: 0.3 },
            { temperature: 1, topK: 0, topP: 0.5 },
            { temperature: 2, topK: Math.max(2, n >> 1), topP: 0.75 },
          ])
            await expectHostTokens(be, rng, rows, 2, n, o, 'all equal', { steps: 4 });
        }
      }));

    test('-inf, NaN and all-masked rows; inactive rows give 0', async () =>
      withSeed(async (rng) => {
        const b = 5,
          v = 1500;
        const rows = normalRows(rng, b * v, 2);
        for (let i = 0; i < v; i++) if (rng.next() < 0.9) rows[i] = -Infinity; // row 0: mostly masked
        for (let i = v; i < 2 * v; i++) rows[i] = i % 3 === 0 ? NaN : i % 3 === 1 ? -Infinity : rows[i]; // row 1
        rows.fill(-Infinity, 2 * v, 3 * v); // row 2: nothing left
        rows.fill(-Infinity, 3 * v, 4 * v - 1); // row 3: the last id alone
        const active = Int32Array.from([1, 1, 1, 1, 0]);
        for (const o of [
          { temperature: 1, topK: 0, topP: 1 },
          { temperature: 0.9, topK: 40, topP: 0.8 },
          { temperature: 1.1, topK: 1000, topP: 1 },
        ]) {
          const got = await expectHostTokens(be, rng, rows, b, v, o, 'masked', { active, steps: 3 });
          for (let i = 0; i < got.length; i += b) {
            assert.equal(got[i + 2], 0, 'an all--inf row gives id 0, as the host argmax of it');
            assert.equal(got[i + 3], v - 1, 'the only finite logit is drawn');
            assert.equal(got[i + 4], 0, 'an inactive row gives 0');
          }
        }
      }));

    test('a vocabulary limit: ids at or past it are never candidates (they hold the largest logits)', async () =>
      withSeed(async (rng) => {
        const b = 3,
          v = 3000;
        for (const [limit, o] of [
          [2500, { temperature: 1, topK: 0, topP: 1 }],
          [1, { temperature: 1, topK: 0, topP: 1 }],
          [2001, { temperature: 0.8, topK: 1500, topP: 0.95 }],
          [777, { temperature: 1.2, topK: 10, topP: 1 }],
        ] as const) {
          const rows = Float32Array.from({ length: b * v }, (_, i) => (i % v >= limit ? 30 + rng.normal() : rng.normal() * 2));
          const got = await expectHostTokens(be, rng, rows, b, v, o, 'limit', { limit });
          assert.ok(
            got.every((t) => t < limit),
            `a token at or past the limit ${limit}`,
          );
        }
      }));

    test('temperatures from 0.02 to 100 over top_k 0, 7 and 300', async () =>
      withSeed(async (rng) => {
        const b = 3,
          v = 1200;
        for (const temperature of [0.02, 0.3, 1, 4, 100])
          for (const topK of [0, 7, 300]) {
            const rows = normalRows(rng, b * v, 3);
            await expectHostTokens(be, rng, rows, b, v, { temperature, topK, topP: [1, 0.9][rng.int(0, 1)] }, 'temperature');
          }
      }));

    if (be.name === 'cuda-emu')
      test('the block-wide replay of a float64 sum has the bits of one thread adding in order (emulator hook)', () =>
        withSeed((rng) => {
          const hook = (createRequire(import.meta.url)(emulatorPath()) as { sampleReplaySum(v: Float64Array, bound: number): Float64Array })
            .sampleReplaySum;
          const kinds: Array<[string, (i: number, n: number) => number]> = [
            ['uniform', () => rng.next()],
            ['descending probabilities', (i, n) => Math.exp(-(8 * i) / n) * (1 + rng.next() * 1e-3)],
            // dyadic values: many adds are exact halfway cases (ties to even depend on the running sum)
            ['dyadic', () => rng.int(0, 1 << 20) * 2 ** -rng.int(18, 75)],
            ['equal 1/n', (_, n) => 1 / n],
            ['tiny and zero', () => [0, 1e-300, 5e-324, 2 ** -60, rng.next()][rng.int(0, 4)]],
            ['ulp-sized', (i) => (i === 0 ? 1 : 2 ** -53 * [1, 2, 3, 0.5, 1.5][rng.int(0, 4)])],
          ];
          for (const [name, gen] of kinds)
            for (const n of [1, 2, 31, 256, 257, 1000, 5000]) {
              const v = Float64Array.from({ length: n }, (_, i) => gen(i, n));
              if (name === 'uniform' && n === 1000) v[rng.int(0, n - 1)] = NaN;
              const total = v.reduce((a, b) => a + b, 0);
              // a bound inside the sum, one equal to an exact running sum, and one past the end
              const at = rng.int(0, n - 1);
              const exact = v.subarray(0, at + 1).reduce((a, b) => a + b, 0);
              for (const bound of [total * rng.next(), exact, total * 2 + 1]) {
                const got = Array.from(hook(v, bound));
                const want = sequentialSums(v, bound);
                assert.ok(
                  got.every((x, i) => Object.is(x, want[i])),
                  `${name} n ${n} bound ${bound}: got [${got}], one thread gives [${want}]`,
                );
              }
            }
        }));
  });
