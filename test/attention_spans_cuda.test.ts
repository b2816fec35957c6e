// The CUDA attention kernels with spans (native/cuda/attention.cu, attention_spans.cuh), beyond the
// contract test (test/attention_spans.test.ts), on the CUDA backends (the emulator; the GPU where
// SPINLM_TEST_BACKENDS names cuda): arbitrary valid spans rather than packed pairs (lo not increasing
// along the row, hidden ranges anywhere: a 16-query block holds many lo groups, and the dk/dv kernel's
// query-tile bounds must hold for any spans) against the float64 reference; bit-identical results for a
// sequence with no spans and the same sequence packed after many tiny items with spans (and for a pair
// with a window and soft-cap); an invalid span makes only its own row NaN. Error norm: max |got - ref| /
// max |ref| (relErr), tolerance 1e-5 (fp32 against float64).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Tensor } from '../src/tensor/tensor.js';
import type { Rng } from '../src/util/rng.js';
import { relErr } from './helpers/loss_ref.js';
import { attentionBackwardRef, attentionRef } from './helpers/model_ref.js';
import { randn, withSeed } from './helpers/random.js';
import { randomSpans } from './helpers/attention_spans.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';

const TOL = 1e-5;

function check(name: string, got: ArrayLike<number>, want: ArrayLike<number>) {
  const e = relErr(got, want);
  assert.ok(e <= TOL, `${name}: relative error ${e} > ${TOL}`);
}

const cudaBackends = (await testBackends()).filter((be) => be.name === 'cuda' || be.name === 'cuda-emu');

for (const be of cudaBackends)
  describe(`CUDA attention kernels with spans on ${be.name}`, () => {
    const f32 = (x: Float32Array, shape: number[]) => ops.upload(be, { dtype: 'f32', data: x }, shape);
    const i32 = (x: Int32Array, shape: number[]) => ops.upload(be, { dtype: 'i32', data: x }, shape);
    const host = async (t: Tensor) => (await ops.read(t)) as Float32Array;

    test('arbitrary valid spans (lo in any order along the row): forward and backward against float64, windows, soft-cap', async () =>
      withSeed(async (rng) => {
        const b = 2,
          nh = 2,
          nkv = rng.int(1, 2),
          hd = [8, 16, 40][rng.int(0, 2)],
          l = rng.int(80, 110);
        const spans = randomSpans(rng, b, l);
        const mask = new Int32Array(b * l).map(() => (rng.next() < 0.1 ? 0 : 1));
        const q = randn(rng, b * l * nh * hd),
          k = randn(rng, b * l * nkv * hd),
          v = randn(rng, b * l * nkv * hd);
        const shape = { b, l, nh, nkv, hd },
          scale = 1 / Math.sqrt(hd);
        const tq = f32(q, [b, l, nh, hd]),
          tk = f32(k, [b, l, nkv, hd]),
          tv = f32(v, [b, l, nkv, hd]),
          tm = i32(mask, [b, l]),
          ts = i32(spans, [b, l, 3]);
        // windows from 2: with window 1 every query sees at most one key and the exact dq is 0
        for (const [window, softcap] of [
          [0, 0],
          [rng.int(2, 20), 0],
          [rng.int(2, 20), 8],
        ]) {
          const what = `l ${l} hd ${hd} nkv ${nkv} window ${window} softcap ${softcap}`;
          const opts = { window, softcap, spans: ts };
          const { out, lse } = ops.attention(tq, tk, tv, tm, opts);
          const ref = attentionRef(q, k, v, mask, shape, scale, window, softcap, spans);
          check(`${what} out`, await host(out), ref.out);
          const gotLse = await host(lse);
          for (let i = 0; i < gotLse.length; i++)
            if (ref.lse[i] === -Infinity) assert.equal(gotLse[i], -Infinity, `${what}: lse[${i}] of a query with no key`);
          const finite = (x: ArrayLike<number>) => Array.from(x, (y) => (y === -Infinity ? 0 : y));
          check(`${what} lse`, finite(gotLse), finite(ref.lse));
          const dout = randn(rng, b * l * nh * hd);
          const g = ops.attentionBackward(tq, tk, tv, tm, out, lse, f32(dout, [b, l, nh, hd]), opts);
          const rb = attentionBackwardRef(q, k, v, mask, dout, shape, scale, window, softcap, spans);
          check(`${what} dq`, await host(g.dq), rb.dq);
          check(`${what} dk`, await host(g.dk), rb.dk);
          check(`${what} dv`, await host(g.dv), rb.dv);
          for (const t of [out, lse, g.dq, g.dk, g.dv]) t.free();
        }
        for (const t of [tq, tk, tv, tm, ts]) t.free();
      }));

    /** out and lse of `n` tokens at offset `at` of row 0 (of b rows of length l), q/k/v of those tokens given. */
    async function run(
      rng: Rng,
      seq: { q: Float32Array; k: Float32Array; v: Float32Array },
      n: number,
      at: number,
      l: number,
      spans: Int32Array | undefined,
      dims: { nh: number; nkv: number; hd: number; window: number; softcap: number },
    ) {
      const { nh, nkv, hd, window, softcap } = dims;
      const q = randn(rng, l * nh * hd),
        k = randn(rng, l * nkv * hd),
        v = randn(rng, l * nkv * hd);
      q.set(seq.q, at * nh * hd);
      k.set(seq.k, at * nkv * hd);
      v.set(seq.v, at * nkv * hd);
      const mask = new Int32Array(l).fill(1);
      const ts = spans ? i32(spans, [1, l, 3]) : undefined;
      const { out, lse } = ops.attention(f32(q, [1, l, nh, hd]), f32(k, [1, l, nkv, hd]), f32(v, [1, l, nkv, hd]), i32(mask, [1, l]), {
        window,
        softcap,
        spans: ts,
      });
      const o = (await host(out)).slice(at * nh * hd, (at + n) * nh * hd);
      const all = await host(lse);
      const ls = new Float32Array(nh * n);
      for (let h = 0; h < nh; h++) ls.set(all.subarray(h * l + at, h * l + at + n), h * n);
      return { o, ls };
    }

    function sameBits(what: string, a: { o: Float32Array; ls: Float32Array }, b: { o: Float32Array; ls: Float32Array }) {
      const d = a.o.findIndex((x, i) => !Object.is(x, b.o[i]));
      assert.equal(d, -1, `${what}: out differs at ${d} (${a.o[d]} vs ${b.o[d]})`);
      const e = a.ls.findIndex((x, i) => !Object.is(x, b.ls[i]));
      assert.equal(e, -1, `${what}: lse differs at ${e} (${a.ls[e]} vs ${b.ls[e]})`);
    }

    test('bit-identical: a sequence alone without spans and packed after many tiny items; a pair alone and packed, windows and soft-cap', async () =>
      withSeed(async (rng) => {
        const nh = 2,
          nkv = 1,
          hd = [16, 32][rng.int(0, 1)];
        const dims = { nh, nkv, hd, window: rng.next() < 0.5 ? 0 : rng.int(3, 40), softcap: rng.next() < 0.5 ? 0 : 6 };
        // tiny items (1 to 3 tokens, each its own lo) before the sequence: its first query blocks hold many lo groups
        const before: number[] = [];
        for (let o = 0, n = rng.int(5, 20); n > 0; n--) before.push((o += rng.int(1, 3)));
        const at = before[before.length - 1];
        const spansAfterTiny = (l: number, set: (i: number, at: number) => [number, number, number]) => {
          const s = new Int32Array(l * 3);
          let start = 0;
          for (const end of before) {
            for (let i = start; i < end; i++) s.set([start, start, start], 3 * i);
            start = end;
          }
          for (let i = at; i < l; i++) s.set(set(i, at), 3 * i);
          return s;
        };
        // a plain sequence: no spans at offset 0; lo = its start, nothing hidden, after the tiny items
        const n = rng.int(20, 70);
        const seq = { q: randn(rng, n * nh * hd), k: randn(rng, n * nkv * hd), v: randn(rng, n * nkv * hd) };
        const alone = await run(rng, seq, n, 0, n + rng.int(0, 5), undefined, dims);
        const lp = at + n + rng.int(0, 5);
        const packed = await run(
          rng,
          seq,
          n,
          at,
          lp,
          spansAfterTiny(lp, (i, a) => (i < a + n ? [a, a, a] : [i, i, i])),
          dims,
        );
        sameBits(`sequence of ${n} at ${at} (window ${dims.window}, softcap ${dims.softcap})`, packed, alone);
        // a pair [p | r | g]: alone in its row vs after the tiny items
        const p = rng.int(5, 30),
          r = rng.int(3, 20),
          g = rng.int(3, 20),
          m = p + r + g;
        const pair = { q: randn(rng, m * nh * hd), k: randn(rng, m * nkv * hd), v: randn(rng, m * nkv * hd) };
        const pairSpan = (i: number, a: number): [number, number, number] =>
          i >= a + m ? [i, i, i] : i < a + p + r ? [a, a, a] : [a, a + p, a + p + r];
        const l1 = m + rng.int(0, 5);
        const s1 = new Int32Array(l1 * 3);
        for (let i = 0; i < l1; i++) s1.set(pairSpan(i, 0), 3 * i);
        const pairAlone = await run(rng, pair, m, 0, l1, s1, dims);
        const l2 = at + m + rng.int(0, 5);
        const pairPacked = await run(rng, pair, m, at, l2, spansAfterTiny(l2, pairSpan), dims);
        sameBits(`pair ${p}/${r}/${g} at ${at} (window ${dims.window}, softcap ${dims.softcap})`, pairPacked, pairAlone);
      }));

    test('an invalid span makes only its own query row NaN (forward out and lse, backward dq)', async () =>
      withSeed(async (rng) => {
        const l = 40,
          nh = 2,
          hd = 8,
          bad = rng.int(1, l - 1);
        const spans = new Int32Array(l * 3);
        spans[3 * bad] = bad + 1; // lo > i
        const mask = new Int32Array(l).fill(1);
        const q = randn(rng, l * nh * hd),
          k = randn(rng, l * nh * hd),
          v = randn(rng, l * nh * hd);
        const tq = f32(q, [1, l, nh, hd]),
          tk = f32(k, [1, l, nh, hd]),
          tv = f32(v, [1, l, nh, hd]),
          tm = i32(mask, [1, l]),
          ts = i32(spans, [1, l, 3]);
        const { out, lse } = ops.attention(tq, tk, tv, tm, { spans: ts });
        await assert.rejects(ops.read(out), /spans/);
        // the error word is taken: the values read now
        const o = await host(out),
          ls = await host(lse);
        const good = spans.slice();
        good[3 * bad] = 0;
        const ref = attentionRef(q, k, v, mask, { b: 1, l, nh, nkv: nh, hd }, 1 / Math.sqrt(hd), 0, 0, good);
        for (let i = 0; i < l; i++)
          for (let h = 0; h < nh; h++) {
            const row = o.subarray((i * nh + h) * hd, (i * nh + h + 1) * hd);
            if (i === bad) {
              assert.ok(row.every(Number.isNaN), `out row ${i} head ${h}: ${row}`);
              assert.ok(Number.isNaN(ls[h * l + i]), `lse ${i} head ${h}`);
            } else {
              check(`out row ${i} head ${h}`, row, ref.out.subarray((i * nh + h) * hd, (i * nh + h + 1) * hd));
            }
          }
        const g = ops.attentionBackward(tq, tk, tv, tm, out, lse, f32(randn(rng, l * nh * hd), [1, l, nh, hd]), { spans: ts });
        await assert.rejects(ops.read(g.dq), /spans/);
        const dq = await host(g.dq);
        for (let i = 0; i < l; i++) {
          const row = dq.subarray(i * nh * hd, (i + 1) * nh * hd);
          assert.ok(i === bad ? row.every(Number.isNaN) : row.every(Number.isFinite), `dq row ${i}`);
        }
      }));
  });
