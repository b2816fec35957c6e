// The tensor-core attention backward (native/cuda/flash_bwd.cu: attentionBackward with computeDtype
// 'bf16' on the CUDA backends; the emulator runs its WMMA with CUDA's rules checked and random fragment
// layouts) against float64 (test/helpers/model_ref.ts attentionBackwardRef on the bf16-rounded q, k, v,
// dout, with out and lse of the float64 forward on the same rounded inputs). Two checks per gradient:
// - a bound per element: |got - ref| <= 2^-8 a + 2^-14 (a + b) + 1e-6 max|ref|, where a is the sum of the
//   element's |terms| (P |dO| for dv, scale |dS| |K| or |Q| for dq and dk) and b the scale of dS before
//   the cancellation in dP - D (flash_backward_ref.ts). 2^-8 is bf16's unit roundoff (7 stored mantissa
//   bits, round to nearest even), paid once per P or dS value; 2^-14 covers the f32 sums (hd <= 256 and
//   L <= 300 terms: at most 300 * 2^-24 < 2^-15 relative) and out / lse given in f32. A dropped mask or
//   soft-cap derivative misses this by orders of magnitude.
// - rounding as a tensor-core kernel rounds: the float64 reference that rounds P and dS to bf16 before
//   their products (as the kernel must) is nearer to the result than the one that does not, for at least
//   90% of the elements where the two differ (measured: 99 to 100%; what is left are f32 sums, and the
//   rare P or dS that lands on the other side of a bf16 rounding boundary in f32 than in float64, which
//   makes a relative RMS distance too noisy a measure). A kernel that rounds P or dS otherwise (toward
//   zero, or not at all: the f32 kernel of the hd 40 fallback) or computes D from the unrounded dout is
//   nearer the rounding reference for about half the elements or fewer.
// Also: bit-identical results on a second run (fixed order, no atomics), every mask (causal, GQA, keyMask
// padding, window, soft-cap, spans: packed pairs), L not a multiple of 64, hd 64, 128, 48 and 256 (two
// column blocks, tiles of 32), an invalid span (NaN dq row, the error), and the forward's own out / lse.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Tensor } from '../src/tensor/tensor.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { Rng } from '../src/util/rng.js';
import { packSpans, randomItem } from './helpers/attention_spans.js';
import { flashBackwardRef } from './helpers/flash_backward_ref.js';
import { attentionBackwardRef, attentionRef, type AttnShape } from './helpers/model_ref.js';
import { randn, withSeed } from './helpers/random.js';
import * as ops from '../src/ops/index.js';
import { cpuReference, testBackends } from './helpers/backends.js';

const U = 2 ** -8;
const F = 2 ** -14;
const NEARER = 0.9;

const rounded = (x: Float32Array) => bf16ArrayToF32(f32ArrayToBf16(x));
const maxAbs = (x: ArrayLike<number>) => Array.from(x).reduce((m, y) => Math.max(m, Math.abs(y)), 0);

/**
 * Every element within the bound; returns the worst |err| / bound. `fb`: b's coefficient, F when out
 * and lse are float64's; U + F when they come from a tensor-core forward, whose out carries P's bf16
 * rounding (<= 2^-8 of sum_j P |v_j| per element) into D = dO . O, and so into dS through b's dO O term.
 */
function withinBound(name: string, got: Float32Array, ref: ArrayLike<number>, a: ArrayLike<number>, b: ArrayLike<number>, fb = F): number {
  const floor = 1e-6 * maxAbs(ref);
  let worst = 0;
  for (let e = 0; e < got.length; e++) {
    const bound = U * a[e] + F * a[e] + fb * b[e] + floor;
    const err = Math.abs(got[e] - ref[e]);
    assert.ok(err <= bound, `${name}[${e}]: got ${got[e]}, float64 ${ref[e]}: error ${err} > bound ${bound}`);
    worst = Math.max(worst, err / bound);
  }
  return worst;
}

/** The fraction of the elements where the two references differ that are nearer `near` than `far`. */
function nearer(got: Float32Array, near: ArrayLike<number>, far: ArrayLike<number>): number {
  let n = 0,
    hits = 0;
  for (let e = 0; e < got.length; e++) {
    if (near[e] === far[e]) continue;
    n++;
    if (Math.abs(got[e] - near[e]) < Math.abs(got[e] - far[e])) hits++;
  }
  return n ? hits / n : 1;
}

interface Case {
  s: AttnShape;
  window: number;
  softcap: number;
  spans?: Int32Array;
  mask: Int32Array;
}

const cudaBackends = (await testBackends()).filter((be) => be.name === 'cuda' || be.name === 'cuda-emu');

test("the CPU addon's attentionBackward refuses its bf16 flag (no kernel: bf16_compute.ts rounds the inputs instead)", () => {
  const cpu = cpuReference();
  const [b, l, nh, hd] = [1, 4, 1, 16];
  const t = () => ops.upload(cpu, { dtype: 'f32', data: new Float32Array(b * l * nh * hd) }, [b, l, nh, hd]);
  const mask = ops.upload(cpu, { dtype: 'i32', data: new Int32Array(l).fill(1) }, [b, l]);
  const lse = ops.upload(cpu, { dtype: 'f32', data: new Float32Array(l) }, [b, nh, l]);
  const args = [t(), t(), t(), mask, null, t(), lse, t(), b, l, nh, nh, hd, 0.25, 0, 0, t(), t(), t()] as const;
  assert.throws(() => cpu.native.attentionBackward(...args, true), /bf16 is not a kernel of this device/);
  cpu.native.attentionBackward(...args, false);
});

for (const be of cudaBackends)
  describe(`tensor-core attention backward (bf16) on ${be.name}`, () => {
    const f32 = (x: ArrayLike<number>, shape: number[]) => ops.upload(be, { dtype: 'f32', data: Float32Array.from(x) }, shape);
    const i32 = (x: Int32Array, shape: number[]) => ops.upload(be, { dtype: 'i32', data: x }, shape);
    const host = async (t: Tensor) => (await ops.read(t)) as Float32Array;

    /**
     * Runs the bf16 backward twice on random inputs (out and lse: the float64 forward's on the rounded
     * inputs, or with `ownForward` the backend's bf16 forward) and checks it; returns the worst bound ratio.
     */
    async function check(rng: Rng, c: Case, what: string, ownForward = false) {
      const { s, window, softcap, spans, mask } = c;
      const { b, l, nh, nkv, hd } = s;
      const scale = 1 / Math.sqrt(hd);
      const q = randn(rng, b * l * nh * hd),
        k = randn(rng, b * l * nkv * hd),
        v = randn(rng, b * l * nkv * hd),
        dout = randn(rng, b * l * nh * hd);
      const [qr, kr, vr, dr] = [q, k, v, dout].map(rounded);
      const qs = [b, l, nh, hd],
        ks = [b, l, nkv, hd];
      const tq = f32(q, qs),
        tk = f32(k, ks),
        tv = f32(v, ks),
        td = f32(dout, qs),
        tm = i32(mask, [b, l]),
        ts = spans ? i32(spans, [b, l, 3]) : undefined;
      const opts = { window, softcap, spans: ts, computeDtype: 'bf16' as const };
      const fwd = attentionRef(qr, kr, vr, mask, s, scale, window, softcap, spans);
      let out: Tensor<'f32'>, lse: Tensor<'f32'>;
      if (ownForward) ({ out, lse } = ops.attention(tq, tk, tv, tm, opts));
      else [out, lse] = [f32(fwd.out, qs), f32(fwd.lse, [b, nh, l])];
      const given = { out: await host(out), lse: await host(lse) };
      const g1 = ops.attentionBackward(tq, tk, tv, tm, out, lse, td, opts);
      const g2 = ops.attentionBackward(tq, tk, tv, tm, out, lse, td, opts);
      const plain = attentionBackwardRef(qr, kr, vr, mask, dr, s, scale, window, softcap, spans);
      const fr = flashBackwardRef({ q: qr, k: kr, v: vr, dout: dr, ...given }, mask, s, scale, window, softcap, spans);
      let worst = 0;
      for (const n of ['dq', 'dk', 'dv'] as const) {
        const got = await host(g1[n]);
        const again = await host(g2[n]);
        const d = got.findIndex((x, i) => !Object.is(x, again[i]));
        assert.equal(d, -1, `${what} ${n}: a second run differs at ${d} (${got[d]} vs ${again[d]})`);
        const fb = ownForward && hd % 16 === 0 ? U + F : F; // the tensor-core forward's out: P rounded
        worst = Math.max(worst, withinBound(`${what} ${n}`, got, plain[n], fr.a[n], fr.b[n], fb));
        const near = nearer(got, fr.rounded[n], plain[n]);
        if (process.env.FLASH_DEBUG) console.log(`${what} ${n}: nearer the rounding reference for ${near}, bound ratio ${worst}`);
        // the fallback (hd not a multiple of 16) runs the f32 kernel: P and dS not rounded
        if (hd % 16 === 0) assert.ok(near >= NEARER, `${what} ${n}: nearer float64 with P and dS rounded to bf16 for only ${near}`);
        else assert.ok(near < 0.6, `${what} ${n}: the f32 fallback rounds no P or dS, yet is nearer the rounding reference for ${near}`);
      }
      for (const t of [tq, tk, tv, td, tm, out, lse, g1.dq, g1.dk, g1.dv, g2.dq, g2.dk, g2.dv]) t.free();
      ts?.free();
      return worst;
    }

    /** L in (lo, hi), never a multiple of 64. */
    const length = (rng: Rng, lo: number, hi: number) => {
      const l = rng.int(lo, hi);
      return l % 64 === 0 ? l + 1 : l;
    };

    test('causal, GQA, keyMask padding (left, right, holes), L not a multiple of 64, hd 64', async () =>
      withSeed(async (rng) => {
        const l = length(rng, 66, 120),
          [nh, nkv] = [
            [4, 2],
            [4, 1],
            [2, 2],
          ][rng.int(0, 2)];
        const mask = new Int32Array(2 * l).fill(1);
        for (let i = 0; i < rng.int(1, 10); i++) mask[i] = 0; // row 0: left padding
        for (let i = l - rng.int(1, 20); i < l; i++) mask[l + i] = 0; // row 1: right padding
        for (let n = 0; n < 4; n++) mask[rng.int(0, 2 * l - 1)] = 0;
        await check(rng, { s: { b: 2, l, nh, nkv, hd: 64 }, window: 0, softcap: 0, mask }, `l ${l} nh ${nh} nkv ${nkv}`);
      }));

    test('hd 128: sliding window and soft-cap (the 1 - tanh^2 factor)', async () =>
      withSeed(async (rng) => {
        const l = length(rng, 70, 110);
        const window = rng.int(5, 40),
          softcap = 1 + 2 * rng.next();
        const mask = new Int32Array(l).fill(1);
        mask[rng.int(0, l - 1)] = 0;
        await check(rng, { s: { b: 1, l, nh: 2, nkv: 1, hd: 128 }, window, softcap, mask }, `l ${l} window ${window} softcap ${softcap}`);
      }));

    test('spans: packed pairs and sequences (GQA, a window and soft-cap at random)', async () =>
      withSeed(async (rng) => {
        const l = length(rng, 90, 130);
        const rows = [0, 1].map(() => {
          const items = [];
          for (let used = 0; ;) {
            const it = randomItem(rng, 40);
            if (used + it.p + it.r + it.g > l - rng.int(0, 6)) break;
            items.push(it);
            used += it.p + it.r + it.g;
          }
          return items;
        });
        const { spans, mask } = packSpans(rows, l);
        const window = rng.next() < 0.5 ? 0 : rng.int(4, 30),
          softcap = rng.next() < 0.5 ? 0 : 3;
        const what = `l ${l} items ${rows.map((r) => r.length)} window ${window} softcap ${softcap}`;
        await check(rng, { s: { b: 2, l, nh: 4, nkv: 2, hd: 64 }, window, softcap, spans, mask }, what);
      }));

    test('hd 256 (two column blocks, tiles of 32) and hd 48, small L', async () =>
      withSeed(async (rng) => {
        for (const hd of [256, 48]) {
          const l = length(rng, 20, 40);
          const mask = new Int32Array(l).fill(1);
          await check(rng, { s: { b: 1, l, nh: 2, nkv: 1, hd }, window: 0, softcap: hd === 48 ? 5 : 0, mask }, `hd ${hd} l ${l}`);
        }
      }));

    test("out and lse of the backend's own bf16 forward; hd 40 (not a multiple of 16) rounds and runs the f32 kernel", async () =>
      withSeed(async (rng) => {
        for (const hd of [64, 40]) {
          const l = length(rng, 30, 80);
          const mask = new Int32Array(l).fill(1);
          await check(rng, { s: { b: 1, l, nh: 2, nkv: 1, hd }, window: 0, softcap: 0, mask }, `own forward hd ${hd} l ${l}`, true);
        }
      }));

    test('an invalid span: its dq row NaN and the spans error; the other rows, dk and dv as float64', async () =>
      withSeed(async (rng) => {
        const l = 50,
          nh = 2,
          hd = 32,
          bad = rng.int(1, l - 1);
        const spans = new Int32Array(l * 3);
        spans[3 * bad] = bad + 1; // lo > i
        const mask = new Int32Array(l).fill(1);
        const shape = [1, l, nh, hd];
        const [q, k, v, dout] = [0, 1, 2, 3].map(() => rounded(randn(rng, l * nh * hd)));
        // the float64 references see the bad query with valid spans and a zero dout (it adds nothing to
        // dk, dv); the kernel must skip it whatever dout is (its lse is NaN, as the forward leaves it)
        const d0 = dout.slice();
        d0.fill(0, bad * nh * hd, (bad + 1) * nh * hd);
        const good = spans.slice();
        good[3 * bad] = 0;
        const s = { b: 1, l, nh, nkv: nh, hd },
          scale = 1 / Math.sqrt(hd);
        const fwd = attentionRef(q, k, v, mask, s, scale, 0, 0, good);
        const lse = Float64Array.from(fwd.lse);
        for (let h = 0; h < nh; h++) lse[h * l + bad] = NaN;
        const g = ops.attentionBackward(
          f32(q, shape),
          f32(k, shape),
          f32(v, shape),
          i32(mask, [1, l]),
          f32(fwd.out, shape),
          f32(lse, [1, nh, l]),
          f32(dout, shape),
          { spans: i32(spans, [1, l, 3]), computeDtype: 'bf16' },
        );
        await assert.rejects(ops.read(g.dq), /spans/);
        const plain = attentionBackwardRef(q, k, v, mask, d0, s, scale, 0, 0, good);
        const fr = flashBackwardRef({ q, k, v, dout: d0, out: fwd.out, lse }, mask, s, scale, 0, 0, good);
        const dq = await host(g.dq);
        for (let i = 0; i < l; i++) {
          const row = dq.subarray(i * nh * hd, (i + 1) * nh * hd);
          assert.ok(i === bad ? row.every(Number.isNaN) : row.every(Number.isFinite), `dq row ${i}`);
          if (i === bad) dq.fill(0, i * nh * hd, (i + 1) * nh * hd); // the references: 0 (no dout)
        }
        for (const n of ['dq', 'dk', 'dv'] as const) {
          const got = n === 'dq' ? dq : await host(g[n]);
          withinBound(n, got, plain[n], fr.a[n], fr.b[n]);
          assert.ok(nearer(got, fr.rounded[n], plain[n]) >= NEARER, `${n}: nearer the rounding reference for too few elements`);
        }
      }));
  });
