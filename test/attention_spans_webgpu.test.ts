// WebGPU's SPANS variant of attention (src/backend/webgpu/attention.wgsl) beyond the contract test
// (test/attention_spans.test.ts): the paths its tile skipping takes. (1) Spans that describe plain
// causal attention (lo 0, nothing hidden) give the causal kernels' results bit for bit, with and without
// a window: the SPANS variant walks each query's keys with the same arithmetic in the same order.
// (2) Arbitrary valid spans (lo not increasing along the row, hidden ranges longer than several key
// tiles, queries late in the row that see keys from its start) against the float64 reference
// (test/helpers/model_ref.ts, written from AttentionOpts.spans): the dK/dV pass must find every query
// that sees a key block, however far away, and the forward must skip only tiles no query sees. Error
// norm relErr (max |got - ref| / max |ref|), tolerance 1e-5 (fp32 against float64). (3) Packing
// invariance (out and lse bit for bit) with a window and a soft-cap, a pair across several query blocks.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Tensor } from '../src/tensor/tensor.js';
import type { Rng } from '../src/util/rng.js';
import { relErr } from './helpers/loss_ref.js';
import { attentionBackwardRef, attentionRef } from './helpers/model_ref.js';
import { randn, withSeed } from './helpers/random.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';
import { type Item, packSpans, randomItem } from './helpers/attention_spans.js';

/** Random valid spans for row positions [from, to): lo <= hideLo <= hideHi <= i, a third of them hiding a long range. */
function randomSpans(rng: Rng, spans: Int32Array, row: number, l: number, from: number, to: number): void {
  for (let i = from; i < to; i++) {
    const lo = rng.next() < 0.3 ? 0 : rng.int(0, i);
    const hlo = rng.int(lo, i);
    const hhi = rng.next() < 0.3 ? rng.int(hlo, i) : hlo;
    spans.set([lo, hlo, hhi], (row * l + i) * 3);
  }
}

for (const be of (await testBackends()).filter((x) => x.name === 'webgpu'))
  describe(`attention spans: the tile-skipping paths of backend ${be.name}`, () => {
    const f32 = (x: Float32Array, shape: number[]) => ops.upload(be, { dtype: 'f32', data: x }, shape);
    const i32 = (x: Int32Array, shape: number[]) => ops.upload(be, { dtype: 'i32', data: x }, shape);
    const host = async (t: Tensor) => (await ops.read(t)) as Float32Array;
    const sameBits = (what: string, got: Float32Array, want: Float32Array) => {
      const d = got.findIndex((x, i) => !Object.is(x, want[i]));
      assert.equal(d, -1, `${what} differs at ${d}: ${got[d]} vs ${want[d]}`);
    };

    test('causal spans (lo 0, nothing hidden) give the causal results bit for bit, with and without a window', async () =>
      withSeed(async (rng) => {
        const b = 2,
          nh = 4,
          nkv = 2,
          hd = [16, 64][rng.int(0, 1)],
          l = rng.int(130, 200);
        const q = f32(randn(rng, b * l * nh * hd), [b, l, nh, hd]),
          k = f32(randn(rng, b * l * nkv * hd), [b, l, nkv, hd]),
          v = f32(randn(rng, b * l * nkv * hd), [b, l, nkv, hd]),
          dout = f32(randn(rng, b * l * nh * hd), [b, l, nh, hd]);
        const mask = new Int32Array(b * l).fill(1);
        for (let i = l - rng.int(0, 20); i < l; i++) mask[l + i] = 0; // row 1 padded at the end
        const m = i32(mask, [b, l]);
        const spans = i32(new Int32Array(b * l * 3), [b, l, 3]);
        for (const [window, softcap] of [
          [0, 0],
          [rng.int(1, 90), 0],
          [rng.int(1, 90), 30],
        ]) {
          const what = `l ${l} hd ${hd} window ${window} softcap ${softcap}`;
          const plain = ops.attention(q, k, v, m, { window, softcap });
          const withSpans = ops.attention(q, k, v, m, { window, softcap, spans });
          sameBits(`${what} out`, await host(withSpans.out), await host(plain.out));
          sameBits(`${what} lse`, await host(withSpans.lse), await host(plain.lse));
          const g0 = ops.attentionBackward(q, k, v, m, plain.out, plain.lse, dout, { window, softcap });
          const g1 = ops.attentionBackward(q, k, v, m, plain.out, plain.lse, dout, { window, softcap, spans });
          for (const x of ['dq', 'dk', 'dv'] as const) sameBits(`${what} ${x}`, await host(g1[x]), await host(g0[x]));
        }
      }));

    test('a pair gives the same bits wherever it is packed, with a window and a soft-cap', async () =>
      withSeed(async (rng) => {
        const nh = 3,
          nkv = 1,
          hd = [128, 24, 12][rng.int(0, 2)];
        const pair: Item = { p: rng.int(60, 150), r: rng.int(20, 80), g: rng.int(20, 80) };
        const n = pair.p + pair.r + pair.g;
        const [pq, pk, pv] = [randn(rng, n * nh * hd), randn(rng, n * nkv * hd), randn(rng, n * nkv * hd)];
        const window = rng.int(20, 150),
          softcap = 10;
        const layouts: Item[][][] = [[[pair]], [[randomItem(rng, 40)], [randomItem(rng, 90), pair, randomItem(rng, 30)]]];
        let first: { out: Float32Array; lse: Float32Array } | undefined;
        for (const rows of layouts) {
          const b = rows.length;
          const l = Math.max(...rows.map((it) => it.reduce((a, x) => a + x.p + x.r + x.g, 0))) + rng.int(0, 7);
          const { spans, mask, starts } = packSpans(rows, l);
          const row = b - 1,
            at = starts[row][rows[row].indexOf(pair)];
          const [q, k, v] = [randn(rng, b * l * nh * hd), randn(rng, b * l * nkv * hd), randn(rng, b * l * nkv * hd)];
          q.set(pq, (row * l + at) * nh * hd);
          k.set(pk, (row * l + at) * nkv * hd);
          v.set(pv, (row * l + at) * nkv * hd);
          const { out, lse } = ops.attention(f32(q, [b, l, nh, hd]), f32(k, [b, l, nkv, hd]), f32(v, [b, l, nkv, hd]), i32(mask, [b, l]), {
            window,
            softcap,
            spans: i32(spans, [b, l, 3]),
          });
          const o = (await host(out)).slice((row * l + at) * nh * hd, (row * l + at + n) * nh * hd);
          const lseAll = await host(lse);
          const ls = new Float32Array(nh * n);
          for (let h = 0; h < nh; h++) ls.set(lseAll.subarray((row * nh + h) * l + at, (row * nh + h) * l + at + n), h * n);
          if (!first) first = { out: o, lse: ls };
          else {
            sameBits(`hd ${hd} window ${window}: out of the pair at ${at} of row ${row}`, o, first.out);
            sameBits(`hd ${hd} window ${window}: lse of the pair at ${at} of row ${row}`, ls, first.lse);
          }
        }
      }));

    test('arbitrary valid spans: far keys, long hidden ranges, lo not increasing; forward and backward against float64', async () =>
      withSeed(async (rng) => {
        const b = 2,
          nh = 4,
          nkv = 2,
          hd = [16, 32][rng.int(0, 1)],
          p = rng.int(10, 40),
          r = rng.int(90, 140),
          g = rng.int(130, 180),
          l = p + r + g + rng.int(20, 60);
        // row 0: a pair whose real answer (hidden from its generated answer) spans several key tiles and
        // whose generated answer fills whole 64-query blocks (which skip the hidden tiles), then random
        // spans; row 1: random spans throughout
        const spans = new Int32Array(b * l * 3);
        for (let i = 0; i < p + r + g; i++) spans.set(i < p + r ? [0, 0, 0] : [0, p, p + r], i * 3);
        randomSpans(rng, spans, 0, l, p + r + g, l);
        randomSpans(rng, spans, 1, l, 0, l);
        const mask = new Int32Array(b * l).fill(1);
        for (let n = 0; n < 10; n++) mask[rng.int(0, b * l - 1)] = 0;
        const qh = randn(rng, b * l * nh * hd),
          kh = randn(rng, b * l * nkv * hd),
          vh = randn(rng, b * l * nkv * hd);
        const shape = { b, l, nh, nkv, hd },
          scale = 1 / Math.sqrt(hd);
        const q = f32(qh, [b, l, nh, hd]),
          k = f32(kh, [b, l, nkv, hd]),
          v = f32(vh, [b, l, nkv, hd]),
          m = i32(mask, [b, l]),
          s = i32(spans, [b, l, 3]);
        const TOL = 1e-5;
        for (const [window, softcap] of [
          [0, 0],
          [rng.int(2, 60), 0],
          [rng.int(2, 60), 20],
        ]) {
          const what = `l ${l} hd ${hd} window ${window} softcap ${softcap}`;
          const { out, lse } = ops.attention(q, k, v, m, { window, softcap, spans: s });
          const ref = attentionRef(qh, kh, vh, mask, shape, scale, window, softcap, spans);
          const e = relErr(await host(out), ref.out);
          assert.ok(e <= TOL, `${what} out: relative error ${e} > ${TOL}`);
          const gotLse = await host(lse);
          for (let i = 0; i < gotLse.length; i++)
            if (ref.lse[i] === -Infinity) assert.equal(gotLse[i], -Infinity, `${what}: lse[${i}] of a query with no key`);
          const el = relErr(
            gotLse.map((x) => (x === -Infinity ? 0 : x)),
            ref.lse.map((x) => (x === -Infinity ? 0 : x)),
          );
          assert.ok(el <= TOL, `${what} lse: relative error ${el} > ${TOL}`);
          const dh = randn(rng, b * l * nh * hd);
          const gr = ops.attentionBackward(q, k, v, m, out, lse, f32(dh, [b, l, nh, hd]), { window, softcap, spans: s });
          const rb = attentionBackwardRef(qh, kh, vh, mask, dh, shape, scale, window, softcap, spans);
          for (const x of ['dq', 'dk', 'dv'] as const) {
            const ex = relErr(await host(gr[x]), rb[x]);
            assert.ok(ex <= TOL, `${what} ${x}: relative error ${ex} > ${TOL}`);
          }
        }
      }));
  });
