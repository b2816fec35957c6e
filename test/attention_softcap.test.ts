// Attention-logit soft-capping (AttentionOpts.softcap, Gemma 2's attn_logit_softcapping) of every
// backend against the float64 reference (test/helpers/model_ref.ts attentionRef with a softcap, written
// from Hugging Face's eager attention: scores = scale q.k; scores = tanh(scores / c) * c; then the
// causal / window / key mask; softmax; weighted sum of V; the backward by the chain rule, itself checked
// here against central finite differences of the forward), and against PyTorch 1.13 autograd
// (test/oracle/model_ops_torch.py). Forward, backward and decode over an f32 or bf16 KV cache; with
// and without a sliding window; GQA; head dims 8, 64, 128 (decode) and 256 (Gemma's); caps that bite
// (q and k scaled up so that |scores| reach several times c) and caps that do not (|scores| << c).
// Error norm: max |got - ref| / max |ref| (relErr). Tolerances: 1e-5 (fp32 against float64, as
// test/attention_window.test.ts) where the cap does not bite; 3e-5 where it bites (scores of ~10 to 40
// carry fp32 rounding of ~1e-6 into the tanh, and the kernels' tanh is itself fp32).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { relErr } from './helpers/loss_ref.js';
import { type AttnShape, attentionBackwardRef, attentionRef } from './helpers/model_ref.js';
import { runPython } from './helpers/python.js';
import { randn, withSeed } from './helpers/random.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';

const TOL = 1e-5,
  TOL_BITE = 3e-5;

/** The largest |scale q.k| over visible (causal, unmasked) pairs: how far the scores reach past the cap. */
function maxScore(q: Float32Array, k: Float32Array, mask: Int32Array, s: AttnShape, scale: number): number {
  const { b, l, nh, nkv, hd } = s;
  let m = 0;
  for (let bi = 0; bi < b; bi++)
    for (let h = 0; h < nh; h++)
      for (let i = 0; i < l; i++)
        for (let j = 0; j <= i; j++) {
          if (!mask[bi * l + j]) continue;
          let d = 0;
          const kvh = Math.floor(h / (nh / nkv));
          for (let c = 0; c < hd; c++) d += q[((bi * l + i) * nh + h) * hd + c] * k[((bi * l + j) * nkv + kvh) * hd + c];
          m = Math.max(m, Math.abs(d * scale));
        }
  return m;
}

/** Row 0: no padding; row 1: right padding; row 2: left padding and a hole. */
function paddingMask(b: number, l: number): Int32Array {
  const mask = new Int32Array(b * l).fill(1);
  for (let j = l - 3; j < l; j++) mask[l + j] = 0;
  if (b > 2) for (const j of [0, 1, 4]) mask[2 * l + j] = 0;
  return mask;
}

test('the float64 reference backward with a soft-cap equals central finite differences of its forward', () =>
  withSeed((rng) => {
    const s = { b: 2, l: 5, nh: 2, nkv: 1, hd: 3 };
    const q = randn(rng, s.b * s.l * s.nh * s.hd, 2),
      k = randn(rng, s.b * s.l * s.nkv * s.hd, 2),
      v = randn(rng, s.b * s.l * s.nkv * s.hd),
      dout = randn(rng, q.length);
    const mask = paddingMask(s.b, s.l);
    const scale = 0.7,
      c = 1.5; // |scores| up to ~5: the cap bites
    assert.ok(maxScore(q, k, mask, s, scale) > 2 * c, 'the cap bites');
    for (const window of [0, 2]) {
      const an = attentionBackwardRef(q, k, v, mask, dout, s, scale, window, c);
      const loss = (qq: ArrayLike<number>, kk: ArrayLike<number>, vv: ArrayLike<number>) =>
        attentionRef(qq, kk, vv, mask, s, scale, window, c).out.reduce((a, o, i) => a + o * dout[i], 0);
      const h = 1e-5;
      for (const [name, x, g] of [
        ['dq', q, an.dq],
        ['dk', k, an.dk],
        ['dv', v, an.dv],
      ] as const) {
        const fd = new Float64Array(x.length);
        const xx = Float64Array.from(x);
        for (let i = 0; i < x.length; i++) {
          const args = (d: number) => {
            xx[i] = x[i] + d;
            const r = name === 'dq' ? loss(xx, k, v) : name === 'dk' ? loss(q, xx, v) : loss(q, k, xx);
            xx[i] = x[i];
            return r;
          };
          fd[i] = (args(h) - args(-h)) / (2 * h);
        }
        const e = relErr(g, fd);
        assert.ok(e <= 1e-7, `window ${window} ${name}: reference vs finite differences ${e} > 1e-7`);
      }
    }
  }));

for (const be of await testBackends())
  describe(`attention soft-capping on backend ${be.name}`, () => {
    const f32 = (x: Float32Array, shape: number[]) => ops.upload(be, { dtype: 'f32', data: x }, shape);
    const i32 = (x: Int32Array | number[], shape: number[]) => ops.upload(be, { dtype: 'i32', data: Int32Array.from(x) }, shape);
    const host = async (t: Tensor) => (await ops.read(t)) as Float32Array;
    function check(name: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: number) {
      assert.ok(Array.prototype.every.call(got, Number.isFinite), `${name}: no NaN or Inf`);
      const e = relErr(got, want);
      assert.ok(e <= tol, `${name}: relative error ${e} > ${tol}`);
    }

    for (const [nh, nkv] of [
      [4, 4],
      [4, 2],
    ])
      test(`forward and backward, ${nh} heads / ${nkv} kv heads, hd 8 / 64 / 256, caps that bite and not, windows, padding`, async () =>
        withSeed(async (rng) => {
          for (const hd of [8, 64, 256]) {
            // lengths inside one 64-row query block and across two
            const b = 3,
              l = rng.next() < 0.5 ? rng.int(5, 37) : rng.int(65, 90);
            const mask = paddingMask(b, l);
            const shape = { b, l, nh, nkv, hd };
            const scale = 1 / Math.sqrt(hd);
            for (const bite of [true, false]) {
              // bite: q, k ~ 3 N(0, 1), so scale q.k ~ 9 N(0, 1), against c in [3, 6]; else c = 50 (Gemma 2's)
              // against scores ~ N(0, 1)
              const amp = bite ? 3 : 1,
                softcap = bite ? 3 + 3 * rng.next() : 50;
              const q = randn(rng, b * l * nh * hd, amp),
                k = randn(rng, b * l * nkv * hd, amp),
                v = randn(rng, b * l * nkv * hd),
                dout = randn(rng, b * l * nh * hd);
              const top = maxScore(q, k, mask, shape, scale);
              if (bite) assert.ok(top > 3 * softcap, `the cap bites: max |score| ${top} > 3 x ${softcap}`);
              else assert.ok(top < softcap / 4, `the cap does not bite: max |score| ${top} < ${softcap} / 4`);
              const tol = bite ? TOL_BITE : TOL;
              const tq = f32(q, [b, l, nh, hd]),
                tk = f32(k, [b, l, nkv, hd]),
                tv = f32(v, [b, l, nkv, hd]),
                tm = i32(mask, [b, l]),
                td = f32(dout, [b, l, nh, hd]);
              for (const window of [0, rng.int(2, l - 2)]) {
                const what = `hd ${hd} l ${l} softcap ${softcap.toFixed(3)} window ${window}`;
                const opts = { window, softcap };
                const { out, lse } = ops.attention(tq, tk, tv, tm, opts);
                const ref = attentionRef(q, k, v, mask, shape, scale, window, softcap);
                check(`${what} out`, await host(out), ref.out, tol);
                // lse is -inf for a query with no visible key (row 2's first two)
                const gotLse = await host(lse);
                assert.ok(relErr(gotLse, ref.lse) <= tol, `${what} lse: relative error ${relErr(gotLse, ref.lse)} > ${tol}`);
                const g = ops.attentionBackward(tq, tk, tv, tm, out, lse, td, opts);
                const rb = attentionBackwardRef(q, k, v, mask, dout, shape, scale, window, softcap);
                check(`${what} dq`, await host(g.dq), rb.dq, tol);
                check(`${what} dk`, await host(g.dk), rb.dk, tol);
                check(`${what} dv`, await host(g.dv), rb.dv, tol);
                for (const t of [out, lse, g.dq, g.dk, g.dv]) t.free();
              }
              for (const t of [tq, tk, tv, tm, td]) t.free();
            }
          }
        }));

    for (const cdt of ['f32', 'bf16'] as const)
      test(`decode over a ${cdt} KV cache with a soft-cap (and a window or none) equals the last row of capped attention`, async () =>
        withSeed(async (rng) => {
          // hd 8, 64 and 128 (the CPU kernel's register-blocked paths) and 256; GQA groups 1 to 4
          for (const hd of [8, 64, 128, 256]) {
            const [nh, nkv] = [
              [4, 2],
              [4, 4],
              [6, 2],
              [8, 2],
            ][rng.int(0, 3)];
            const b = 3,
              l = rng.int(6, 20),
              lmax = 24;
            const bite = rng.next() < 0.5;
            const amp = bite ? 3 : 1,
              softcap = bite ? 3 + 3 * rng.next() : 50;
            const q = randn(rng, b * l * nh * hd, amp),
              k = randn(rng, b * l * nkv * hd, amp),
              v = randn(rng, b * l * nkv * hd);
            const held = (x: Float32Array) => (cdt === 'bf16' ? bf16ArrayToF32(f32ArrayToBf16(x)) : x);
            const mask = new Int32Array(b * l).fill(1);
            mask[l + l - 4] = 0; // a masked key of row 1 (its query is position l - 3)
            // ragged lengths: row 0 all l positions, row 1 l - 2, row 2 none (output 0)
            const lens = [l, l - 2, 0];
            const window = rng.next() < 0.5 ? 0 : rng.int(2, l - 1);
            const kc = ops.empty(be, cdt, [b * nkv * lmax, hd]),
              vc = ops.empty(be, cdt, [b * nkv * lmax, hd]);
            const rows: number[] = [],
              src: number[] = [];
            for (let bi = 0; bi < b; bi++)
              for (let t = 0; t < lens[bi]; t++)
                for (let h = 0; h < nkv; h++) {
                  rows.push((bi * nkv + h) * lmax + t);
                  src.push((bi * l + t) * nkv + h);
                }
            const pick = (x: Float32Array) => {
              const o = new Float32Array(src.length * hd);
              src.forEach((r, i) => o.set(x.subarray(r * hd, (r + 1) * hd), i * hd));
              return o;
            };
            // positions past each length poisoned with NaN: a kernel that reads them fails
            ops.fill(kc, NaN);
            ops.fill(vc, NaN);
            ops.scatterRows(f32(pick(k), [rows.length, hd]), i32(rows, [rows.length]), kc);
            ops.scatterRows(f32(pick(v), [rows.length, hd]), i32(rows, [rows.length]), vc);
            const cacheMask = new Int32Array(b * lmax).fill(1);
            cacheMask[lmax + l - 4] = 0;
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
                { window, softcap },
              ),
            );
            const ref = attentionRef(q, held(k), held(v), mask, { b, l, nh, nkv, hd }, 1 / Math.sqrt(hd), window, softcap);
            const want = new Float64Array(b * nh * hd);
            for (let bi = 0; bi < 2; bi++) want.set(ref.out.subarray(at(bi), at(bi) + nh * hd), bi * nh * hd);
            check(
              `decode hd ${hd} ${nh}/${nkv} heads l ${l} window ${window} softcap ${softcap.toFixed(3)}`,
              got,
              want,
              bite ? TOL_BITE : TOL,
            );
            assert.ok(
              got.subarray(2 * nh * hd).every((x) => x === 0),
              'a sequence of length 0 gives exact zeros',
            );
            for (const t of [kc, vc]) t.free();
          }
        }));

    test('softcap 0 is no cap: the same bits as no softcap option', async () =>
      withSeed(async (rng) => {
        const b = 2,
          l = 19,
          nh = 4,
          nkv = 2,
          hd = 16;
        const tq = f32(randn(rng, b * l * nh * hd), [b, l, nh, hd]),
          tk = f32(randn(rng, b * l * nkv * hd), [b, l, nkv, hd]),
          tv = f32(randn(rng, b * l * nkv * hd), [b, l, nkv, hd]),
          tm = i32(paddingMask(b, l), [b, l]),
          td = f32(randn(rng, b * l * nh * hd), [b, l, nh, hd]);
        const a = ops.attention(tq, tk, tv, tm, { window: 7 }),
          z = ops.attention(tq, tk, tv, tm, { window: 7, softcap: 0 });
        assert.deepEqual(await host(z.out), await host(a.out));
        assert.deepEqual(await host(z.lse), await host(a.lse));
        const ga = ops.attentionBackward(tq, tk, tv, tm, a.out, a.lse, td, { window: 7 }),
          gz = ops.attentionBackward(tq, tk, tv, tm, a.out, a.lse, td, { window: 7, softcap: 0 });
        for (const key of ['dq', 'dk', 'dv'] as const) assert.deepEqual(await host(gz[key]), await host(ga[key]), key);
      }));

    test('attention with a soft-cap and a window matches PyTorch 1.13 autograd', async () =>
      withSeed(async (rng) => {
        const b = 2,
          l = 23,
          nh = 4,
          nkv = 2,
          hd = 32,
          scale = 0.125,
          softcap = 4,
          window = 9;
        const q = randn(rng, b * l * nh * hd, 3),
          k = randn(rng, b * l * nkv * hd, 3),
          v = randn(rng, b * l * nkv * hd),
          dout = randn(rng, b * l * nh * hd);
        const mask = paddingMask(b, l);
        const dir = mkdtempSync(join(tmpdir(), 'spinlm-softcap-'));
        try {
          const put = (name: string, x: Float32Array | Int32Array) => writeFileSync(join(dir, `${name}.bin`), x);
          for (const [name, x] of [
            ['a.q', q],
            ['a.k', k],
            ['a.v', v],
            ['a.mask', mask],
            ['a.dout', dout],
          ] as const)
            put(name, x);
          const spec = {
            ops: [
              {
                name: 'a',
                op: 'attention',
                shapes: { q: [b, l, nh, hd], k: [b, l, nkv, hd], v: [b, l, nkv, hd], mask: [b, l] },
                params: { scale, softcap, window },
              },
            ],
          };
          writeFileSync(join(dir, 'spec.json'), JSON.stringify(spec));
          runPython(new URL('./oracle/model_ops_torch.py', import.meta.url).pathname, [dir]);
          const read = (name: string) => new Float32Array(readFileSync(join(dir, `${name}.bin`)).buffer.slice(0));
          const opts = { scale, softcap, window };
          const tq = f32(q, [b, l, nh, hd]),
            tk = f32(k, [b, l, nkv, hd]),
            tv = f32(v, [b, l, nkv, hd]),
            tm = i32(mask, [b, l]);
          const { out, lse } = ops.attention(tq, tk, tv, tm, opts);
          check('out vs torch', await host(out), read('a.y'), TOL_BITE);
          const g = ops.attentionBackward(tq, tk, tv, tm, out, lse, f32(dout, [b, l, nh, hd]), opts);
          check('dq vs torch', await host(g.dq), read('a.dq'), TOL_BITE);
          check('dk vs torch', await host(g.dk), read('a.dk'), TOL_BITE);
          check('dv vs torch', await host(g.dv), read('a.dv'), TOL_BITE);
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }));

    test('a softcap must be 0 or finite and positive (as an f32)', () => {
      const q = ops.zeros(be, 'f32', [1, 4, 2, 8]),
        k = ops.zeros(be, 'f32', [1, 4, 1, 8]),
        m = i32([1, 1, 1, 1], [1, 4]);
      for (const softcap of [-1, NaN, Infinity, -Infinity, 1e-50, 1e39])
        assert.throws(
          () => ops.attention(q, k, k, m, { softcap }),
          (e: Error) => e instanceof RangeError && /softcap/.test(e.message),
          String(softcap),
        );
      const kc = ops.zeros(be, 'f32', [1, 1, 4, 8]);
      assert.throws(
        () => ops.attentionDecode(ops.zeros(be, 'f32', [1, 2, 8]), kc, kc, i32([2], [1]), undefined, { softcap: -2 }),
        RangeError,
      );
    });
  });
