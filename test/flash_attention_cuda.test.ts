// The tensor-core flash attention forward (native/cuda/flash_fwd.cu: attention with computeDtype 'bf16'
// on CUDA) on the CUDA backends (the emulator, whose WMMA checks throw on a broken rule; the GPU where
// SPINLM_TEST_BACKENDS names cuda), against float64 attention (test/helpers/model_ref.ts, written from
// the Hugging Face equations) on the bf16-ROUNDED q, k, v. Tolerance per output element (b, i, h, c):
//   |out - ref| <= (2^-9 + 2e-5) sum_j P_ij |v_jc| + 1e-6
// (P rounded to bf16 before P V: at most half an ulp, 2^-9 relative, per probability; f32 scores, exp
// and sums: the 2e-5 relative and 1e-6 absolute); lse: |lse - ref| <= 2e-5 (1 + |ref|), -inf exactly
// where a query sees no key (its out is 0). One test pins P's rounding itself (q = 0: every P is
// 1 / n, and out must be sum_j bf16(1 / n) v_j, not the mean of v).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Tensor } from '../src/tensor/tensor.js';
import { bf16ToF32, f32ToBf16 } from '../src/tensor/bf16.js';
import type { Rng } from '../src/util/rng.js';
import { attentionRef, type AttnShape } from './helpers/model_ref.js';
import { packSpans, randomItem, randomSpans } from './helpers/attention_spans.js';
import { randn, withSeed } from './helpers/random.js';
import * as ops from '../src/ops/index.js';
import { cpuReference, testBackends } from './helpers/backends.js';

const rounded = (x: Float32Array) => x.map((y) => bf16ToF32(f32ToBf16(y)));

interface Case {
  shape: AttnShape;
  window?: number;
  softcap?: number;
  mask?: Int32Array;
  spans?: Int32Array;
}

/** q, k, v drawn (std 1: scores of a few units at scale 1 / sqrt(hd)), keyMask all ones unless given. */
function draw(rng: Rng, s: AttnShape) {
  const { b, l, nh, nkv, hd } = s;
  return { q: randn(rng, b * l * nh * hd), k: randn(rng, b * l * nkv * hd), v: randn(rng, b * l * nkv * hd) };
}

const cudaBackends = (await testBackends()).filter((be) => be.name === 'cuda' || be.name === 'cuda-emu');

for (const be of cudaBackends)
  describe(`tensor-core flash attention forward (computeDtype bf16) on ${be.name}`, () => {
    const f32 = (x: Float32Array, shape: number[]) => ops.upload(be, { dtype: 'f32', data: x }, shape);
    const i32 = (x: Int32Array, shape: number[]) => ops.upload(be, { dtype: 'i32', data: x }, shape);
    const host = async (t: Tensor) => (await ops.read(t)) as Float32Array;

    /** Runs the bf16 forward on q, k, v (f32, unrounded: the kernel rounds) and returns out and lse. */
    async function run(c: Case, x: { q: Float32Array; k: Float32Array; v: Float32Array }) {
      const { b, l, nh, nkv, hd } = c.shape;
      const t = [f32(x.q, [b, l, nh, hd]), f32(x.k, [b, l, nkv, hd]), f32(x.v, [b, l, nkv, hd])];
      const tm = i32(c.mask ?? new Int32Array(b * l).fill(1), [b, l]);
      const ts = c.spans ? i32(c.spans, [b, l, 3]) : undefined;
      const r = ops.attention(t[0], t[1], t[2], tm, { window: c.window, softcap: c.softcap, spans: ts, computeDtype: 'bf16' });
      const got = { out: await host(r.out), lse: await host(r.lse) };
      for (const u of [...t, tm, ts, r.out, r.lse]) u?.free();
      return got;
    }

    /** The bf16 forward against float64 attention on the rounded inputs, within the stated tolerance. */
    async function checkCase(what: string, c: Case, x: { q: Float32Array; k: Float32Array; v: Float32Array }) {
      const { b, l, nh, nkv, hd } = c.shape;
      const got = await run(c, x);
      const [q, k, v] = [x.q, x.k, x.v].map(rounded);
      const mask = c.mask ?? new Int32Array(b * l).fill(1);
      const ref = attentionRef(q, k, v, mask, c.shape, 1 / Math.sqrt(hd), c.window ?? 0, c.softcap ?? 0, c.spans);
      let worst = 0;
      for (let bi = 0; bi < b; bi++)
        for (let h = 0; h < nh; h++) {
          const P = ref.probs[bi * nh + h];
          const kvh = Math.floor(h / (nh / nkv));
          for (let i = 0; i < l; i++) {
            const at = (bi * nh + h) * l + i;
            if (ref.lse[at] === -Infinity) assert.equal(got.lse[at], -Infinity, `${what}: lse of query ${i} (head ${h}) that sees no key`);
            else {
              const e = Math.abs(got.lse[at] - ref.lse[at]);
              assert.ok(e <= 2e-5 * (1 + Math.abs(ref.lse[at])), `${what}: lse[${bi},${h},${i}] ${got.lse[at]} vs ${ref.lse[at]}`);
            }
            for (let cc = 0; cc < hd; cc++) {
              let pv = 0;
              for (let j = 0; j <= i; j++) pv += P[i * l + j] * Math.abs(v[((bi * l + j) * nkv + kvh) * hd + cc]);
              const o = ((bi * l + i) * nh + h) * hd + cc;
              const e = Math.abs(got.out[o] - ref.out[o]);
              const tol = (2 ** -8 + 2e-5) * pv + 1e-6;
              assert.ok(e <= tol, `${what}: out[${bi},${i},${h},${cc}] ${got.out[o]} vs ${ref.out[o]} (error ${e} > ${tol})`);
              worst = Math.max(worst, e / tol);
            }
          }
        }
      if (process.env.SPINLM_TEST_VERBOSE) console.log(`${what}: worst out error / tolerance ${worst.toFixed(3)}`);
      return worst;
    }

    test('causal + GQA + keyMask padding (left and right), L not a multiple of 64, hd 64; a query with no key: out 0, lse -inf', async () =>
      withSeed(async (rng) => {
        const shape = { b: 2, l: rng.int(65, 90), nh: 4, nkv: 2, hd: 64 };
        const mask = new Int32Array(shape.b * shape.l).fill(1);
        const left = rng.int(1, 9),
          right = rng.int(1, 9);
        mask.fill(0, 0, left); // row 0: left padding, so its first queries see no key
        mask.fill(0, 2 * shape.l - right); // row 1: right padding
        for (let i = 0; i < 6; i++) mask[shape.l + rng.int(0, shape.l - 1)] = 0; // and holes
        const x = draw(rng, shape);
        await checkCase('causal gqa mask', { shape, mask }, x);
        const got = await run({ shape, mask }, x);
        assert.ok(
          got.out.subarray(0, shape.nh * shape.hd).every((y) => y === 0),
          'out of query 0 (no key) is 0',
        );
        // no mask, L past two query blocks: key tiles every row of a warp sees whole (no per-key checks)
        const s2 = { b: 1, l: rng.int(130, 160), nh: 2, nkv: 1, hd: 32 };
        await checkCase('causal, whole tiles', { shape: s2 }, draw(rng, s2));
      }));

    test('sliding window and soft-cap, hd 128 (and hd 48: a partial fragment class), GQA 2:1', async () =>
      withSeed(async (rng) => {
        const s128 = { b: 1, l: rng.int(66, 80), nh: 2, nkv: 1, hd: 128 };
        await checkCase('window + softcap hd 128', { shape: s128, window: rng.int(5, 40), softcap: 5 }, draw(rng, s128));
        const s48 = { b: 1, l: rng.int(30, 70), nh: 2, nkv: 1, hd: 48 };
        await checkCase('window hd 48', { shape: s48, window: rng.int(2, 20) }, draw(rng, s48));
      }));

    test('spans: packed pairs (hidden real answers), a window, keyMask padding at the end', async () =>
      withSeed(async (rng) => {
        const l = 96;
        // row 2: one pair whose generated tokens 64.. see both ends of key tile 0 and hide the real answer inside it
        const rows = [0, 1, 2].map((row) => {
          if (row === 2) return [{ p: 20, r: 20, g: 52 }];
          const items = [];
          for (let used = 0; ;) {
            const it = randomItem(rng, 40);
            if (used + it.p + it.r + it.g > l - 4) break;
            items.push(it);
            used += it.p + it.r + it.g;
          }
          return items;
        });
        const { spans, mask } = packSpans(rows, l);
        const shape = { b: 3, l, nh: 2, nkv: 1, hd: 64 };
        const x = draw(rng, shape);
        await checkCase('packed pairs', { shape, spans, mask }, x);
        await checkCase('packed pairs, window', { shape, spans, mask, window: rng.int(3, 30), softcap: 20 }, x);
      }));

    test('arbitrary valid spans (lo in any order: the rows of a warp see different tiles), keyMask holes, windows, soft-cap', async () =>
      withSeed(async (rng) => {
        const shape = { b: 2, l: rng.int(80, 110), nh: 2, nkv: 1, hd: 32 };
        const spans = randomSpans(rng, shape.b, shape.l);
        // row 1: the first query of every warp from 64 on sees only itself, the others every earlier key
        for (let i = 64; i < shape.l; i++) spans.set(i % 16 === 0 ? [i, i, i] : [0, 0, 0], 3 * (shape.l + i));
        const mask = new Int32Array(shape.b * shape.l).map(() => (rng.next() < 0.1 ? 0 : 1));
        const x = draw(rng, shape);
        await checkCase('random spans', { shape, spans, mask }, x);
        await checkCase('random spans, window', { shape, spans, mask, window: rng.int(2, 20), softcap: 8 }, x);
      }));

    test('hd 256 (Gemma), small L, nh = nkv', async () =>
      withSeed(async (rng) => {
        const shape = { b: 1, l: rng.int(17, 40), nh: 2, nkv: 2, hd: 256 };
        await checkCase('hd 256', { shape, softcap: 50 }, draw(rng, shape));
      }));

    test('P is rounded to bf16 before P V: q = 0 gives P = 1 / n, out = sum_j bf16(1 / n) v_j', async () =>
      withSeed(async (rng) => {
        const shape = { b: 1, l: 70, nh: 1, nkv: 1, hd: 16 };
        const { l, hd } = shape;
        const x = { q: new Float32Array(l * hd), k: randn(rng, l * hd), v: rounded(randn(rng, l * hd)) };
        const got = await run({ shape }, x);
        let gap = 0;
        for (let i = 0; i < l; i++) {
          const n = i + 1,
            p = bf16ToF32(f32ToBf16(Math.fround(1 / n)));
          for (let c = 0; c < hd; c++) {
            let withP = 0,
              exact = 0;
            for (let j = 0; j <= i; j++) {
              withP += p * x.v[j * hd + c];
              exact += x.v[j * hd + c] / n;
            }
            const e = Math.abs(got.out[i * hd + c] - withP);
            assert.ok(e <= 1e-5 * (1 + Math.abs(withP)), `out[${i},${c}] ${got.out[i * hd + c]} vs sum bf16(1/${n}) v = ${withP}`);
            gap = Math.max(gap, Math.abs(exact - withP) / (1e-5 * (1 + Math.abs(withP))));
          }
          assert.ok(Math.abs(got.lse[i] - Math.log(n)) <= 1e-5 * (1 + Math.log(n)), `lse[${i}]`);
        }
        assert.ok(gap > 10, `the test must tell rounded P from unrounded (gap ${gap})`);
      }));

    test('an invalid span: its row NaN, the error raised, the others right; deterministic run to run', async () =>
      withSeed(async (rng) => {
        const shape = { b: 1, l: 50, nh: 2, nkv: 1, hd: 32 };
        const { l, nh, hd } = shape;
        const spans = new Int32Array(l * 3);
        const bad = rng.int(1, l - 1);
        spans[3 * bad] = bad + 1; // lo > i
        const x = draw(rng, shape);
        const t = [f32(x.q, [1, l, nh, hd]), f32(x.k, [1, l, 1, hd]), f32(x.v, [1, l, 1, hd])];
        const tm = i32(new Int32Array(l).fill(1), [1, l]),
          ts = i32(spans, [1, l, 3]);
        const r = ops.attention(t[0], t[1], t[2], tm, { spans: ts, computeDtype: 'bf16' });
        await assert.rejects(ops.read(r.out), /spans/);
        const o = await host(r.out),
          ls = await host(r.lse);
        for (let i = 0; i < l; i++)
          for (let h = 0; h < nh; h++) {
            const row = o.subarray((i * nh + h) * hd, (i * nh + h + 1) * hd);
            assert.ok(i === bad ? row.every(Number.isNaN) && Number.isNaN(ls[h * l + i]) : row.every(Number.isFinite), `row ${i}`);
          }
        const good = { shape };
        const a = await run(good, x),
          b2 = await run(good, x);
        assert.ok(
          a.out.every((y, i) => Object.is(y, b2.out[i])) && a.lse.every((y, i) => Object.is(y, b2.lse[i])),
          'two runs bit-identical',
        );
        for (const u of [...t, tm, ts, r.out, r.lse]) u.free();
      }));
  });

describe('attention binding: bf16 flag', () => {
  test('the CPU addon refuses it (the CPU backend rounds q, k, v in TypeScript instead)', () => {
    const cpu = cpuReference();
    const z = (n: number) => ops.upload(cpu, { dtype: 'f32', data: new Float32Array(n) }, [n]);
    const m = ops.upload(cpu, { dtype: 'i32', data: new Int32Array(2).fill(1) }, [2]);
    assert.throws(() => cpu.native.attention(z(32), z(32), z(32), m, null, 1, 2, 1, 1, 16, 0.25, 0, 0, z(32), z(2), true), /f32 only/);
  });
});
