// ops.softcapInPlace (x <- c tanh(x / c), Gemma 2's final-logit soft-cap outside the fused head) on
// every backend against a float64 reference (Math.tanh of the f32 input over the f32 cap). Tolerance:
// |got - ref| <= 1e-6 |ref| per element (relative, so c tanh(x / c) ~ x must hold near 0: magnitudes
// from 1e-8 to 1e3, both signs, plus a few extremes). Special values: +-Infinity -> +-c, NaN stays NaN,
// +-0 -> 0. Argument checks: x f32 (TypeError), c finite and > 0 as an f32 (RangeError).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';
import { withSeed } from './helpers/random.js';

const REL_TOL = 1e-6;
const CAPS = [30, 1, 50, 0.5];

/** Fixed magnitudes (1e-8 .. 1e3 and a few past it), both signs, then `random` log-uniform ones in [1e-8, 1e3]. */
function inputs(c: number, random: number, next: () => number): Float32Array {
  const fixed = [1e-8, 1e-6, 1e-4, 1e-2, 0.1, 0.125, 0.25, 0.5, 1, c / 2, c, 2 * c, 10, 20 * c, 100, 1e3, 1e30, 3.4e38];
  const out = [...fixed, ...fixed.map((v) => -v)];
  for (let i = 0; i < random; i++) out.push((next() < 0.5 ? -1 : 1) * 10 ** (-8 + 11 * next()));
  return Float32Array.from(out);
}

for (const be of await testBackends())
  describe(`softcapInPlace on backend ${be.name}`, () => {
    for (const cap of CAPS)
      test(`c = ${cap}: c tanh(x / c) within ${REL_TOL} relative of float64, |x| from 1e-8 to 1e3`, () =>
        withSeed(async (rng) => {
          const x = inputs(cap, 3000, () => rng.next());
          const t = ops.upload(be, { dtype: 'f32', data: x }, [x.length]);
          ops.softcapInPlace(t, cap);
          const got = await ops.read(t);
          const c = Math.fround(cap);
          for (let i = 0; i < x.length; i++) {
            const ref = c * Math.tanh(x[i] / c);
            const err = Math.abs(got[i] - ref);
            assert.ok(err <= REL_TOL * Math.abs(ref), `x = ${x[i]}: got ${got[i]}, float64 ${ref} (relative error ${err / Math.abs(ref)})`);
          }
          t.free();
        }));

    test('special values: +-Infinity -> +-c, NaN stays NaN, +-0 -> 0; an empty tensor is fine', async () => {
      const x = Float32Array.from([Infinity, -Infinity, NaN, 0, -0]);
      const t = ops.upload(be, { dtype: 'f32', data: x }, [x.length]);
      ops.softcapInPlace(t, 30);
      const got = await ops.read(t);
      assert.equal(got[0], 30);
      assert.equal(got[1], -30);
      assert.ok(Number.isNaN(got[2]), `NaN -> ${got[2]}`);
      assert.equal(Math.abs(got[3]), 0);
      assert.equal(Math.abs(got[4]), 0);
      const e = ops.zeros(be, 'f32', [0, 7]);
      ops.softcapInPlace(e, 30);
      t.free();
    });

    test('a [B, V] logits tensor: each element capped independently (rows of a batch)', () =>
      withSeed(async (rng) => {
        const b = rng.int(1, 5),
          v = rng.int(300, 3000);
        const x = Float32Array.from({ length: b * v }, () => rng.normal() * 40);
        const t = ops.upload(be, { dtype: 'f32', data: x }, [b, v]);
        ops.softcapInPlace(t, 30);
        const got = await ops.read(t);
        for (let i = 0; i < x.length; i++) {
          const ref = 30 * Math.tanh(x[i] / 30);
          assert.ok(Math.abs(got[i] - ref) <= REL_TOL * Math.abs(ref), `element ${i}: got ${got[i]}, float64 ${ref}`);
        }
        t.free();
      }));

    test('argument checks: x f32 (TypeError), c finite and > 0 as an f32 (RangeError)', () => {
      const t = ops.zeros(be, 'f32', [4]);
      for (const c of [0, -1, NaN, Infinity, -Infinity, 1e-50, 1e39]) assert.throws(() => ops.softcapInPlace(t, c), RangeError, `c = ${c}`);
      assert.throws(() => ops.softcapInPlace(t, '30' as never), TypeError);
      const h = ops.zeros(be, 'bf16', [4]);
      assert.throws(() => ops.softcapInPlace(h as never, 30), TypeError);
      t.free();
      h.free();
    });
  });
