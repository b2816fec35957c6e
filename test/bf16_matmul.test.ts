// computeDtype 'bf16' GEMMs in every form (docs/ops.md "bf16 compute"): matmul with each transA /
// transB combination, a and b each f32 or bf16, alpha, accumulate into out; linears with an f32 or
// bf16 x and mixed weights. The reference is float64 on the operands rounded to bf16 (round to nearest
// even, src/tensor/bf16.ts: a bf16 upload is already rounded). The products of bf16 values are exact
// in f32, so the only error is the f32 summation: per element
//   |got - ref| <= (k + 2) 2^-24 (|alpha| sum_l |a_il b_lj| + |c_ij|)
// (k - 1 roundings of the sum, one of alpha's product, one of accumulate's add; docs/numerics.md).
// The operands are built so that rounding them changes the product far beyond that bound: each value
// is a bf16 value plus a quarter of its ulp (so it rounds back to it), signs per row of a and per column
// of b (the terms of a dot product share one sign and the offsets add up): a kernel that skipped the
// rounding of a or of b would be off by ~2^-10 of sum |a b|. The test checks this margin on the host.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as ops from '../src/ops/index.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { Tensor } from '../src/tensor/tensor.js';
import type { Rng } from '../src/util/rng.js';
import { testBackends } from './helpers/backends.js';
import { withSeed } from './helpers/random.js';

const U = 2 ** -24;
const rounded = (x: Float32Array) => bf16ArrayToF32(f32ArrayToBf16(x));

/**
 * rows x cols values (row-major) on the bf16 grid plus a quarter ulp (|v| in [0.5, 2)), with sign
 * sign(r, c): each rounds back to its grid value and rounding lowers every magnitude.
 */
function offGrid(rng: Rng, rows: number, cols: number, sign: (r: number, c: number) => number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) {
      const g = rounded(Float32Array.of(0.5 + 1.5 * rng.next()))[0];
      const ulp = g >= 1 ? 2 ** -7 : 2 ** -8;
      out[r * cols + c] = sign(r, c) * (g + ulp / 4);
    }
  return out;
}

/** float64 alpha op(a) op(b) + c (c absent: 0) and the per-element bound above. */
function gemmRef(
  a: Float32Array,
  b: Float32Array,
  ta: boolean,
  tb: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  c?: Float32Array,
) {
  const want = new Float64Array(m * n),
    bound = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0,
        abs = 0;
      for (let l = 0; l < k; l++) {
        const p = (ta ? a[l * m + i] : a[i * k + l]) * (tb ? b[j * k + l] : b[l * n + j]);
        s += p;
        abs += Math.abs(p);
      }
      const ci = c ? c[i * n + j] : 0;
      want[i * n + j] = alpha * s + ci;
      bound[i * n + j] = (k + 2) * U * (Math.abs(alpha) * abs + Math.abs(ci));
    }
  return { want, bound };
}

/** The first element outside its bound, or null. */
function outside(got: ArrayLike<number>, want: ArrayLike<number>, bound: ArrayLike<number>): string | null {
  for (let i = 0; i < want.length; i++)
    if (!(Math.abs(got[i] - want[i]) <= bound[i])) return `element ${i}: got ${got[i]}, want ${want[i]} +- ${bound[i]}`;
  return null;
}

for (const be of await testBackends())
  describe(`bf16 compute GEMMs on ${be.name}`, () => {
    const host = async (t: Tensor) => (await ops.read(t)) as Float32Array;
    /** x uploaded as `dtype` (bf16: rounded), and the values the reference takes (rounded to bf16). */
    const upload = (x: Float32Array, shape: number[], dtype: 'f32' | 'bf16') =>
      dtype === 'f32'
        ? (ops.upload(be, { dtype: 'f32', data: x }, shape) as Tensor)
        : (ops.upload(be, { dtype: 'bf16', data: f32ArrayToBf16(x) }, shape) as Tensor);

    test('matmul: every transA / transB, a and b f32 or bf16, alpha, accumulate: float64 on the rounded operands', () =>
      withSeed(async (rng) => {
        for (let form = 0; form < 16; form++) {
          const ta = (form & 1) === 1,
            tb = (form & 2) === 2,
            adt = form & 4 ? 'bf16' : 'f32',
            bdt = form & 8 ? 'bf16' : 'f32';
          const m = rng.int(1, 40),
            n = rng.int(1, 40),
            k = rng.int(1, 160);
          const rowSign = Array.from({ length: m }, () => (rng.next() < 0.5 ? -1 : 1));
          const colSign = Array.from({ length: n }, () => (rng.next() < 0.5 ? -1 : 1));
          // a's element (i, l) is stored at [i, l] or, transposed, at [l, i]; its sign is row i's
          const a = ta ? offGrid(rng, k, m, (_l, i) => rowSign[i]) : offGrid(rng, m, k, (i) => rowSign[i]);
          const b = tb ? offGrid(rng, n, k, (j) => colSign[j]) : offGrid(rng, k, n, (_l, j) => colSign[j]);
          const alpha = rng.next() < 0.5 ? 1 : 0.25 + rng.next();
          const accumulate = rng.next() < 0.5;
          const c0 = Float32Array.from({ length: m * n }, () => rng.normal());
          const ref = gemmRef(rounded(a), rounded(b), ta, tb, m, n, k, alpha, accumulate ? c0 : undefined);
          const tag = `transA=${ta} transB=${tb} a ${adt} b ${bdt} m=${m} n=${n} k=${k} alpha=${alpha} accumulate=${accumulate}`;
          // the margin: without rounding a (or b) the product leaves the bound
          const aOnly = gemmRef(a, rounded(b), ta, tb, m, n, k, alpha, accumulate ? c0 : undefined);
          const bOnly = gemmRef(rounded(a), b, ta, tb, m, n, k, alpha, accumulate ? c0 : undefined);
          assert.ok(outside(aOnly.want, ref.want, ref.bound), `${tag}: unrounded a would pass`);
          assert.ok(outside(bOnly.want, ref.want, ref.bound), `${tag}: unrounded b would pass`);

          const out = ops.upload(be, { dtype: 'f32', data: accumulate ? c0 : new Float32Array(m * n).fill(NaN) }, [m, n]);
          const shapeA = ta ? [k, m] : [m, k],
            shapeB = tb ? [n, k] : [k, n];
          const opts = { transA: ta, transB: tb, alpha, out, accumulate, computeDtype: 'bf16' } as const;
          ops.matmul(upload(a, shapeA, adt), upload(b, shapeB, bdt), opts);
          const bad = outside(await host(out), ref.want, ref.bound);
          assert.equal(bad, null, `${tag}: ${bad}`);
          if (!accumulate) {
            // a fresh output too, and the f32 compute of the same operands is not the bf16 product
            const y = await host(
              ops.matmul(upload(a, shapeA, adt), upload(b, shapeB, bdt), { transA: ta, transB: tb, alpha, computeDtype: 'bf16' }),
            );
            assert.equal(outside(y, ref.want, ref.bound), null, `${tag} (new output)`);
            if (adt === 'f32' && bdt === 'f32')
              assert.ok(
                outside(
                  await host(ops.matmul(upload(a, shapeA, 'f32'), upload(b, shapeB, 'f32'), { transA: ta, transB: tb, alpha })),
                  ref.want,
                  ref.bound,
                ),
              );
          }
        }
      }));

    test('linears: an f32 or bf16 x, f32 and bf16 weights, each output its bf16 matmul', () =>
      withSeed(async (rng) => {
        for (const xdt of ['f32', 'bf16'] as const)
          for (const rowInvariant of [false, true]) {
            const m = rng.int(1, 30),
              k = rng.int(1, 120);
            const ns = [rng.int(1, 30), rng.int(1, 30)];
            const sign = Array.from({ length: m }, () => (rng.next() < 0.5 ? -1 : 1));
            const x = offGrid(rng, m, k, (i) => sign[i]);
            const ws = ns.map((n) => offGrid(rng, n, k, () => 1));
            const outs = ops.linears(
              upload(x, [m, k], xdt),
              ws.map((w, i) => upload(w, [ns[i], k], i === 0 ? 'f32' : 'bf16')),
              { rowInvariant, computeDtype: 'bf16' },
            );
            for (let i = 0; i < ns.length; i++) {
              const ref = gemmRef(rounded(x), rounded(ws[i]), false, true, m, ns[i], k, 1);
              const bad = outside(await host(outs[i]), ref.want, ref.bound);
              assert.equal(bad, null, `linears x ${xdt} rowInvariant=${rowInvariant} output ${i} (m=${m} n=${ns[i]} k=${k}): ${bad}`);
            }
          }
      }));

    test('a bf16 a needs computeDtype bf16', () => {
      const x16 = ops.upload(be, { dtype: 'bf16', data: new Uint16Array(4) }, [2, 2]);
      assert.throws(() => ops.matmul(x16, x16), /a must have dtype f32,/);
      assert.throws(() => ops.matmul(x16, x16, { computeDtype: 'f32' }), /a must have dtype f32,/);
    });
  });
