// Sliding-window attention (AttentionOpts.window) of every backend against the float64 reference
// (test/helpers/model_ref.ts attentionRef with a window: query i sees key j iff j <= i, i - j < window
// and the key is not masked, Hugging Face's sliding_window_overlay). Forward, backward and decode over a
// KV cache; windows smaller than, equal to and larger than the length; GQA; padding masks.
// Error norm: max |got - ref| / max |ref| (relErr); tolerance 1e-5 (fp32 against float64, as
// test/model_ops.test.ts).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { relErr } from './helpers/loss_ref.js';
import { attentionBackwardRef, attentionRef } from './helpers/model_ref.js';
import { randn, withSeed } from './helpers/random.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';

for (const be of await testBackends())
  describe(`sliding-window attention on backend ${be.name}`, () => {
    const TOL = 1e-5;
    const f32 = (x: Float32Array, shape: number[]) => ops.upload(be, { dtype: 'f32', data: x }, shape);
    const i32 = (x: Int32Array | number[], shape: number[]) => ops.upload(be, { dtype: 'i32', data: Int32Array.from(x) }, shape);
    const host = async (t: Tensor) => (await ops.read(t)) as Float32Array;
    function check(name: string, got: ArrayLike<number>, want: ArrayLike<number>) {
      const e = relErr(got, want);
      assert.ok(e <= TOL, `${name}: relative error ${e} > ${TOL}`);
    }

    for (const [nh, nkv] of [
      [4, 4],
      [4, 2],
      [6, 1],
    ])
      test(`forward and backward, ${nh} heads / ${nkv} kv heads, windows below, at and above the length, padding masks`, async () =>
        withSeed(async (rng) => {
          // lengths inside one 64-row query block and across several
          const b = 3,
            l = rng.next() < 0.5 ? rng.int(5, 37) : rng.int(65, 150),
            hd = [16, 32][rng.int(0, 1)];
          const q = randn(rng, b * l * nh * hd),
            k = randn(rng, b * l * nkv * hd),
            v = randn(rng, b * l * nkv * hd);
          // row 0: no padding; row 1: right padding; row 2: left padding + a hole
          const mask = new Int32Array(b * l).fill(1);
          for (let j = l - 3; j < l; j++) mask[l + j] = 0;
          mask[2 * l] = 0;
          mask[2 * l + 1] = 0;
          mask[2 * l + 4] = 0;
          const shape = { b, l, nh, nkv, hd };
          const scale = 1 / Math.sqrt(hd);
          const tq = f32(q, [b, l, nh, hd]),
            tk = f32(k, [b, l, nkv, hd]),
            tv = f32(v, [b, l, nkv, hd]),
            tm = i32(mask, [b, l]);
          // 1 (each query sees itself only), 2, a random one below l, l - 1, l, l + 5
          for (const window of [1, 2, rng.int(3, l - 2), l - 1, l, l + 5]) {
            const what = `l ${l} window ${window}`;
            const { out, lse } = ops.attention(tq, tk, tv, tm, { window });
            const ref = attentionRef(q, k, v, mask, shape, scale, window);
            const got = await host(out);
            assert.ok(got.every(Number.isFinite), `${what}: no NaN or Inf in the output`);
            check(`${what} out`, got, ref.out);
            check(`${what} lse`, await host(lse), ref.lse);
            const dout = randn(rng, b * l * nh * hd);
            const g = ops.attentionBackward(tq, tk, tv, tm, out, lse, f32(dout, [b, l, nh, hd]), { window });
            const rb = attentionBackwardRef(q, k, v, mask, dout, shape, scale, window);
            if (window === 1) {
              // each query's softmax is one 1: dS = dO . V_i - dO . O_i = 0, so dq and dk are 0 up to
              // f32 rounding (relative to the O(1) inputs: an absolute bound)
              for (const [name, t] of [
                ['dq', g.dq],
                ['dk', g.dk],
              ] as const) {
                const m = (await host(t)).reduce((a, x) => Math.max(a, Math.abs(x)), 0);
                assert.ok(m <= TOL, `${what} ${name}: max |${name}| ${m} > ${TOL}`);
              }
            } else {
              check(`${what} dq`, await host(g.dq), rb.dq);
              check(`${what} dk`, await host(g.dk), rb.dk);
            }
            check(`${what} dv`, await host(g.dv), rb.dv);
            for (const t of [out, lse, g.dq, g.dk, g.dv]) t.free();
          }
          // window 1: each query sees itself only, so a masked position sees no key
          const { out } = ops.attention(tq, tk, tv, tm, { window: 1 });
          const got = await host(out);
          const at = (i: number) => got.subarray((2 * l + i) * nh * hd, (2 * l + i + 1) * nh * hd);
          assert.ok(
            at(4).every((x) => x === 0),
            'window 1: a masked position sees no key, its output is 0',
          );
        }));

    for (const cdt of ['f32', 'bf16'] as const)
      test(`decode over a ${cdt} KV cache with a window equals the last row of windowed attention`, async () =>
        withSeed(async (rng) => {
          // hd random, 64 and 128 (the CPU kernel's register-blocked paths); GQA groups 1 to 4
          for (const hd of [2 * rng.int(1, 40), 64, 128]) {
            const [nh, nkv] = [
              [4, 2],
              [4, 4],
              [6, 2],
              [8, 2],
            ][rng.int(0, 3)];
            const b = 3,
              l = rng.int(6, 20),
              lmax = 24;
            const q = randn(rng, b * l * nh * hd),
              k = randn(rng, b * l * nkv * hd),
              v = randn(rng, b * l * nkv * hd);
            const held = (x: Float32Array) => (cdt === 'bf16' ? bf16ArrayToF32(f32ArrayToBf16(x)) : x);
            const mask = new Int32Array(b * l).fill(1);
            mask[l + l - 4] = 0; // a masked key inside row 1's window (its query is position l - 3)
            // caches [b, nkv, lmax, hd] through scatterRows, as generation writes them; rows past each
            // length and before each window poisoned with NaN: a kernel that reads them fails
            const kc = ops.empty(be, cdt, [b * nkv * lmax, hd]),
              vc = ops.empty(be, cdt, [b * nkv * lmax, hd]);
            // ragged lengths: row 0 all l positions, row 1 l - 2 (its query is position l - 3), row 2
            // none (output 0); a window below l, or up to 3 past it
            const lens = [l, l - 2, 0];
            const window = rng.next() < 0.75 ? rng.int(1, l - 1) : rng.int(l, l + 3);
            const rows: number[] = [],
              src: number[] = [];
            for (let bi = 0; bi < b; bi++)
              for (let t = Math.max(0, lens[bi] - window); t < lens[bi]; t++)
                for (let h = 0; h < nkv; h++) {
                  rows.push((bi * nkv + h) * lmax + t);
                  src.push((bi * l + t) * nkv + h);
                }
            const pick = (x: Float32Array) => {
              const o = new Float32Array(src.length * hd);
              src.forEach((r, i) => o.set(x.subarray(r * hd, (r + 1) * hd), i * hd));
              return o;
            };
            ops.fill(kc, NaN);
            ops.fill(vc, NaN);
            ops.scatterRows(f32(pick(k), [rows.length, hd]), i32(rows, [rows.length]), kc);
            ops.scatterRows(f32(pick(v), [rows.length, hd]), i32(rows, [rows.length]), vc);
            const cacheMask = new Int32Array(b * lmax).fill(1);
            cacheMask[lmax + l - 4] = 0;
            // each row's query: q at its position lens[b] - 1
            const at = (bi: number) => (bi * l + Math.max(0, lens[bi] - 1)) * nh * hd;
            const lastQ = new Float32Array(b * nh * hd);
            for (let bi = 0; bi < b; bi++) lastQ.set(q.subarray(at(bi), at(bi) + nh * hd), bi * nh * hd);
            const got = await host(
              ops.attentionDecode(
                f32(lastQ, [b, nh, hd]),
                kc.reshape([b, nkv, lmax, hd]),
                vc.reshape([b, nkv, lmax, hd]),
                i32(lens, [b]),
                i32(cacheMask, [b, lmax]),
                { window },
              ),
            );
            const ref = attentionRef(q, held(k), held(v), mask, { b, l, nh, nkv, hd }, 1 / Math.sqrt(hd), window);
            const want = new Float64Array(b * nh * hd);
            for (let bi = 0; bi < 2; bi++) want.set(ref.out.subarray(at(bi), at(bi) + nh * hd), bi * nh * hd);
            check(`decode hd ${hd} l ${l} window ${window}`, got, want);
            assert.ok(
              got.subarray(2 * nh * hd).every((x) => x === 0),
              'a sequence of length 0 gives exact zeros',
            );
            for (const t of [kc, vc]) t.free();
          }
        }));

    test('a window must be 0 or a positive integer', () => {
      const q = ops.zeros(be, 'f32', [1, 4, 2, 8]),
        k = ops.zeros(be, 'f32', [1, 4, 1, 8]),
        m = i32([1, 1, 1, 1], [1, 4]);
      for (const window of [-1, 1.5, NaN]) assert.throws(() => ops.attention(q, k, k, m, { window }), /window/);
    });
  });
