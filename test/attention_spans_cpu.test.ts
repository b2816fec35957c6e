// The CPU kernels of attention with spans (native/cpu/attention_spans.cc, attention_spans_backward.cc)
// beyond the contract test (test/attention_spans.test.ts):
//   - packing invariance (out and lse bit for bit) with a window and a soft-cap, at head sizes that take
//     each code path of the values kernel (hd a multiple of 32, of 8 only, of neither), a pair long enough
//     to cross several query blocks (48) and key tiles (64), placed at random offsets among neighbours;
//   - a long packed row (several pairs and a plain sequence, a few hundred positions, GQA 6 / 2) forward
//     and backward against the float64 reference (test/helpers/model_ref.ts), tolerance 1e-5 (relErr:
//     max |got - ref| / max |ref|);
//   - every output (out, lse, dq, dk, dv) bit for bit the same on 1 and 2 kernel threads.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import * as ops from '../src/ops/index.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { type Item, packSpans, randomItem } from './helpers/attention_spans.js';
import { relErr } from './helpers/loss_ref.js';
import { attentionBackwardRef, attentionRef } from './helpers/model_ref.js';
import { randn, withSeed } from './helpers/random.js';

const be = new CpuBackend({ poison: true });
const f32 = (x: Float32Array, shape: number[]) => ops.upload(be, { dtype: 'f32', data: x }, shape);
const i32 = (x: Int32Array, shape: number[]) => ops.upload(be, { dtype: 'i32', data: x }, shape);
const host = async (t: Tensor) => (await ops.read(t)) as Float32Array;
const firstDiff = (a: Float32Array, b: Float32Array) => a.findIndex((x, i) => !Object.is(x, b[i]));

describe('CPU attention with spans', () => {
  for (const hd of [128, 24, 12])
    test(`hd ${hd}: a pair's out and lse are the same bits wherever it is packed, with a window and a soft-cap`, async () =>
      withSeed(async (rng) => {
        const nh = 3,
          nkv = 1;
        const pair: Item = { p: rng.int(60, 150), r: rng.int(20, 80), g: rng.int(20, 80) };
        const n = pair.p + pair.r + pair.g;
        const [pq, pk, pv] = [randn(rng, n * nh * hd), randn(rng, n * nkv * hd), randn(rng, n * nkv * hd)];
        const window = rng.int(20, 150),
          softcap = 10;
        const layouts: Item[][] = [
          [pair],
          [randomItem(rng, 80), pair],
          [randomItem(rng, 50), randomItem(rng, 90), pair, randomItem(rng, 30)],
        ];
        let first: { out: Float32Array; lse: Float32Array } | undefined;
        for (const items of layouts) {
          const l = items.reduce((a, x) => a + x.p + x.r + x.g, 0) + rng.int(0, 9);
          const { spans, mask, starts } = packSpans([items], l);
          const at = starts[0][items.indexOf(pair)];
          const [q, k, v] = [randn(rng, l * nh * hd), randn(rng, l * nkv * hd), randn(rng, l * nkv * hd)];
          q.set(pq, at * nh * hd);
          k.set(pk, at * nkv * hd);
          v.set(pv, at * nkv * hd);
          const ts = i32(spans, [1, l, 3]);
          const ins = [f32(q, [1, l, nh, hd]), f32(k, [1, l, nkv, hd]), f32(v, [1, l, nkv, hd]), i32(mask, [1, l])] as const;
          const { out, lse } = ops.attention(...ins, { window, softcap, spans: ts });
          const o = (await host(out)).slice(at * nh * hd, (at + n) * nh * hd);
          const lseAll = await host(lse);
          const ls = new Float32Array(nh * n);
          for (let h = 0; h < nh; h++) ls.set(lseAll.subarray(h * l + at, h * l + at + n), h * n);
          if (!first) first = { out: o, lse: ls };
          else {
            const d = firstDiff(o, first.out);
            assert.equal(d, -1, `out differs at ${d} (${o[d]} vs ${first.out[d]}) when the pair starts at ${at}`);
            assert.equal(firstDiff(ls, first.lse), -1, `lse differs when the pair starts at ${at}`);
          }
          for (const t of [...ins, ts, out, lse]) t.free();
        }
      }));

  test('a long packed row (GQA 6 / 2) against float64, forward and backward; the same bits on 1 and 2 threads', async () =>
    withSeed(async (rng) => {
      const nh = 6,
        nkv = 2,
        hd = 32,
        TOL = 1e-5;
      const items: Item[] = [];
      for (let i = 0; i < 3; i++) items.push({ p: rng.int(40, 120), r: rng.int(10, 60), g: rng.int(10, 60) });
      items.push({ p: rng.int(30, 90), r: rng.int(10, 60), g: 0 });
      const l = items.reduce((a, x) => a + x.p + x.r + x.g, 0) + rng.int(0, 20);
      const { spans, mask } = packSpans([items], l);
      const [q, k, v, dout] = [randn(rng, l * nh * hd), randn(rng, l * nkv * hd), randn(rng, l * nkv * hd), randn(rng, l * nh * hd)];
      const shape = { b: 1, l, nh, nkv, hd },
        scale = 1 / Math.sqrt(hd);
      const window = rng.next() < 0.5 ? 0 : rng.int(16, 100),
        softcap = rng.next() < 0.5 ? 0 : 15;
      const ins = [f32(q, [1, l, nh, hd]), f32(k, [1, l, nkv, hd]), f32(v, [1, l, nkv, hd]), i32(mask, [1, l])] as const;
      const td = f32(dout, [1, l, nh, hd]),
        ts = i32(spans, [1, l, 3]);
      const opts = { window, softcap, spans: ts };
      const threads = be.threads;
      const runs: Float32Array[][] = [];
      try {
        for (const n of [1, 2]) {
          be.threads = n;
          const { out, lse } = ops.attention(...ins, opts);
          const g = ops.attentionBackward(...ins, out, lse, td, opts);
          runs.push(await Promise.all([out, lse, g.dq, g.dk, g.dv].map(host)));
          for (const t of [out, lse, g.dq, g.dk, g.dv]) t.free();
        }
      } finally {
        be.threads = threads;
      }
      const names = ['out', 'lse', 'dq', 'dk', 'dv'];
      runs[1].forEach((x, i) => assert.equal(firstDiff(x, runs[0][i]), -1, `${names[i]}: 1 and 2 threads differ`));
      const what = `l ${l} window ${window} softcap ${softcap}`;
      const ref = attentionRef(q, k, v, mask, shape, scale, window, softcap, spans);
      const rb = attentionBackwardRef(q, k, v, mask, dout, shape, scale, window, softcap, spans);
      const [out, lse, dq, dk, dv] = runs[0];
      const finite = (x: ArrayLike<number>) => Array.from(x, (y) => (y === -Infinity ? 0 : y));
      for (const [name, got, want] of [
        ['out', out, ref.out],
        ['lse', finite(lse), finite(ref.lse)],
        ['dq', dq, rb.dq],
        ['dk', dk, rb.dk],
        ['dv', dv, rb.dv],
      ] as const) {
        const e = relErr(got, want);
        assert.ok(e <= TOL, `${what} ${name}: relative error ${e} > ${TOL}`);
      }
      for (const t of [...ins, td, ts]) t.free();
    }));
});
