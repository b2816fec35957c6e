// bf16 <-> f32 conversion: exhaustive over all 65536 bf16 patterns, and f32 -> bf16 rounding against
// an independent float64 computation of round-to-nearest-even, in TypeScript and in the native code
// (scalar cast and the 16-lane vector store used by the bf16 kernels).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { bf16ToF32, f32ToBf16 } from '../src/tensor/bf16.js';
import { randn, withSeed } from './helpers/random.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';

const isNanBits = (h: number) => (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;

/** Value of a bf16 pattern from its fields, in float64 (independent of the bit-cast trick). */
function bf16Value(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 7) & 0xff;
  const man = h & 0x7f;
  if (exp === 0xff) return man ? NaN : sign * Infinity;
  if (exp === 0) return sign * man * 2 ** -133; // subnormal: man/128 * 2^-126
  return sign * (1 + man / 128) * 2 ** (exp - 127);
}

/** Round a float32 value to bf16 by choosing the nearer of the two neighbouring bf16 values (ties: even mantissa). */
function roundRef(x: number): number {
  if (Number.isNaN(x)) return -1;
  const f32bits = new Uint32Array(new Float32Array([x]).buffer)[0];
  const down = f32bits >>> 16; // truncation toward zero
  const up = down + 1;
  const vd = bf16Value(down);
  // Past the largest finite bf16, IEEE rounding measures distance to 2^128 (where Inf "sits").
  const vu = (up & 0x7fff) === 0x7f80 ? Math.sign(x) * 2 ** 128 : bf16Value(up);
  const dd = Math.abs(x - vd),
    du = Math.abs(vu - x);
  if (!Number.isFinite(x)) return down;
  if (dd < du) return down;
  if (du < dd) return up;
  return down & 1 ? up : down;
}

test('every bf16 pattern: bf16 -> f32 is exact and f32 -> bf16 gives it back (NaN stays NaN, made quiet)', async () => {
  for (let h = 0; h < 65536; h++) {
    const x = bf16ToF32(h);
    if (isNanBits(h)) {
      assert.ok(Number.isNaN(x));
      assert.equal(f32ToBf16(x) & 0xffff, h | 0x40, `NaN ${h.toString(16)}`);
      continue;
    }
    assert.ok(Object.is(x, bf16Value(h)), `value of ${h.toString(16)}: ${x} vs ${bf16Value(h)}`);
    assert.equal(f32ToBf16(x), h, `round trip of ${h.toString(16)}`);
  }
  assert.equal(f32ToBf16(Infinity), 0x7f80);
  assert.equal(f32ToBf16(-Infinity), 0xff80);
  assert.equal(f32ToBf16(3.4e38), 0x7f80, 'past the largest bf16 rounds to +Inf');
});

for (const be of await testBackends())
  describe(`device conversions on backend ${be.name}`, () => {
    test('native cast agrees with TypeScript on all 65536 patterns, both directions', async () => {
      const all = new Uint16Array(65536).map((_, i) => i);
      const t = ops.upload(be, { dtype: 'bf16', data: all }, [65536]);
      const f = await ops.read(ops.cast(t, 'f32'));
      const back = await ops.read(ops.cast(ops.cast(t, 'f32'), 'bf16'));
      for (let h = 0; h < 65536; h++) {
        assert.ok(Object.is(f[h], Math.fround(bf16ToF32(h))) || (Number.isNaN(f[h]) && isNanBits(h)), `f32 of ${h.toString(16)}`);
        assert.equal(back[h], f32ToBf16(bf16ToF32(h)), `round trip of ${h.toString(16)}`);
      }
    });

    test('f32 -> bf16 rounds to nearest even: random values, exact ties and near-ties (TS and native)', async () =>
      withSeed(async (rng) => {
        const n = 200000;
        const bits = new Uint32Array(n);
        for (let i = 0; i < n; i++) {
          const r = rng.nextU32();
          // a third exact ties (low 16 bits 0x8000), a third near-ties, a third anything
          bits[i] = i % 3 === 0 ? (r & 0xffff0000) | 0x8000 : i % 3 === 1 ? (r & 0xffff0000) | (0x7ffe + (r & 3)) : r;
        }
        const values = new Float32Array(bits.buffer);
        const native = await ops.read(ops.cast(ops.upload(be, { dtype: 'f32', data: values }, [n]), 'bf16'));
        for (let i = 0; i < n; i++) {
          const x = values[i];
          const want = roundRef(x);
          const ts = f32ToBf16(x);
          if (want < 0) {
            assert.ok(isNanBits(ts) && isNanBits(native[i]), `NaN ${bits[i].toString(16)} must stay NaN`);
            continue;
          }
          assert.equal(ts, want, `TS rounding of bits ${bits[i].toString(16)}`);
          assert.equal(native[i], want, `native rounding of bits ${bits[i].toString(16)}`);
        }
      }));

    test('the vector bf16 store of the kernels rounds exactly like the scalar conversion', async () =>
      withSeed(async (rng) => {
        const n = 23,
          v = 1001;
        const z = ops.upload(be, { dtype: 'f32', data: randn(rng, n * v, 3) }, [n, v]);
        const y = ops.upload(be, { dtype: 'i32', data: new Int32Array(n).map(() => rng.int(0, v - 1)) }, [n]);
        const { lse } = ops.logprobGather(z, y);
        const d = ops.upload(be, { dtype: 'f32', data: randn(rng, n) }, [n]);
        const f32 = await ops.read(ops.logprobGatherBackward(z, y, lse, d, { dtype: 'f32' }));
        const b16 = await ops.read(ops.logprobGatherBackward(z, y, lse, d, { dtype: 'bf16' }));
        for (let i = 0; i < f32.length; i++) assert.equal(b16[i], f32ToBf16(f32[i]), `element ${i}`);
      }));
  });
