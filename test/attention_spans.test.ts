// Attention with spans (AttentionOpts.spans: the one-sequence pair layout and packing, issue 27) on
// every backend against the float64 reference (test/helpers/model_ref.ts attentionRef with spans,
// written from the definition in src/backend/backend.ts): rows packed with pairs [prompt | real |
// generated] (the generated answer sees the prompt and itself, never the real answer) and plain
// sequences back to back, ragged, with padding, GQA, windows across the hidden answer, soft-capping.
// Then the guarantee the pair layout rests on: a query's output and lse are bit for bit the same
// whatever else is packed in the call and wherever its sequence starts. Invalid spans raise the
// device error. Error norm: max |got - ref| / max |ref| (relErr); tolerance 1e-5 (fp32 against float64).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Tensor } from '../src/tensor/tensor.js';
import { relErr } from './helpers/loss_ref.js';
import { attentionBackwardRef, attentionRef } from './helpers/model_ref.js';
import { randn, withSeed } from './helpers/random.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';
import { type Item, packSpans, randomItem } from './helpers/attention_spans.js';

for (const be of await testBackends())
  describe(`attention with spans (pair layout, packing) on backend ${be.name}`, () => {
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
      test(`packed pairs and sequences, ${nh} heads / ${nkv} kv heads: forward and backward against float64, windows, soft-cap`, async () =>
        withSeed(async (rng) => {
          const b = 2,
            hd = [16, 32, 64][rng.int(0, 2)];
          // short items inside one 64-row block, or long ones across several
          const maxLen = rng.next() < 0.5 ? 24 : 120;
          const rows: Item[][] = [[], []];
          for (const items of rows) for (let n = rng.int(1, 4); n > 0; n--) items.push(randomItem(rng, maxLen));
          const used = rows.map((it) => it.reduce((a, x) => a + x.p + x.r + x.g, 0));
          const l = Math.max(...used) + rng.int(0, 5);
          const { spans, mask } = packSpans(rows, l);
          // an EOS-like hole inside a text (keyMask 0 on a real token)
          if (rows[0][0].p > 2) mask[1] = 0;
          const q = randn(rng, b * l * nh * hd),
            k = randn(rng, b * l * nkv * hd),
            v = randn(rng, b * l * nkv * hd);
          const shape = { b, l, nh, nkv, hd };
          const scale = 1 / Math.sqrt(hd);
          const tq = f32(q, [b, l, nh, hd]),
            tk = f32(k, [b, l, nkv, hd]),
            tv = f32(v, [b, l, nkv, hd]),
            tm = i32(mask, [b, l]),
            ts = i32(spans, [b, l, 3]);
          for (const [window, softcap] of [
            [0, 0],
            [rng.int(2, 12), 0],
            [0, 5],
            [rng.int(2, 30), 20],
          ]) {
            const what = `l ${l} window ${window} softcap ${softcap}`;
            const opts = { window, softcap, spans: ts };
            const { out, lse } = ops.attention(tq, tk, tv, tm, opts);
            const ref = attentionRef(q, k, v, mask, shape, scale, window, softcap, spans);
            const got = await host(out);
            check(`${what} out`, got, ref.out);
            // padding rows see no key: lse -inf, output 0
            const gotLse = await host(lse);
            for (let i = 0; i < gotLse.length; i++)
              if (ref.lse[i] === -Infinity) assert.equal(gotLse[i], -Infinity, `${what}: lse[${i}] of a query with no key`);
            check(
              `${what} lse`,
              gotLse.map((x) => (x === -Infinity ? 0 : x)),
              ref.lse.map((x) => (x === -Infinity ? 0 : x)),
            );
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

    test('a pair gives the same bits whatever is packed with it and wherever it starts', async () =>
      withSeed(async (rng) => {
        const nh = 4,
          nkv = 2,
          hd = [32, 64][rng.int(0, 1)];
        const pair: Item = { p: rng.int(20, 90), r: rng.int(5, 40), g: rng.int(5, 40) };
        const n = pair.p + pair.r + pair.g;
        const pq = randn(rng, n * nh * hd),
          pk = randn(rng, n * nkv * hd),
          pv = randn(rng, n * nkv * hd);
        // the pair alone in one row; then after random neighbours (offsets not multiples of any tile), in row 1 of 2
        const layouts: Item[][][] = [
          [[pair]],
          [[randomItem(rng, 60)], [randomItem(rng, 50), randomItem(rng, 30), pair, randomItem(rng, 40)]],
        ];
        let first: { out: Float32Array; lse: Float32Array } | undefined;
        for (const rows of layouts) {
          const b = rows.length;
          const l = Math.max(...rows.map((it) => it.reduce((a, x) => a + x.p + x.r + x.g, 0))) + rng.int(0, 7);
          const { spans, mask, starts } = packSpans(rows, l);
          const row = b - 1,
            at = starts[row][rows[row].indexOf(pair)];
          const q = randn(rng, b * l * nh * hd),
            k = randn(rng, b * l * nkv * hd),
            v = randn(rng, b * l * nkv * hd);
          q.set(pq, (row * l + at) * nh * hd);
          k.set(pk, (row * l + at) * nkv * hd);
          v.set(pv, (row * l + at) * nkv * hd);
          const opts = { window: 0, spans: i32(spans, [b, l, 3]) };
          const { out, lse } = ops.attention(
            f32(q, [b, l, nh, hd]),
            f32(k, [b, l, nkv, hd]),
            f32(v, [b, l, nkv, hd]),
            i32(mask, [b, l]),
            opts,
          );
          const o = (await host(out)).slice((row * l + at) * nh * hd, (row * l + at + n) * nh * hd);
          const lseAll = await host(lse);
          const ls = new Float32Array(nh * n);
          for (let h = 0; h < nh; h++) ls.set(lseAll.subarray((row * nh + h) * l + at, (row * nh + h) * l + at + n), h * n);
          if (!first) first = { out: o, lse: ls };
          else {
            const diff = o.findIndex((x, i) => !Object.is(x, first!.out[i]));
            assert.equal(diff, -1, `out differs at ${diff} (${o[diff]} vs ${first.out[diff]}) when the pair starts at ${at} of row ${row}`);
            const dl = ls.findIndex((x, i) => !Object.is(x, first!.lse[i]));
            assert.equal(dl, -1, `lse differs at ${dl} when the pair starts at ${at} of row ${row}`);
          }
        }
      }));

    test('invalid spans raise the device error, naming spans', async () => {
      const b = 1,
        l = 6,
        nh = 2,
        hd = 8;
      const ones = (n: number) => new Float32Array(n).fill(0.5);
      const q = f32(ones(b * l * nh * hd), [b, l, nh, hd]),
        k = f32(ones(b * l * nh * hd), [b, l, nh, hd]),
        v = f32(ones(b * l * nh * hd), [b, l, nh, hd]),
        m = i32(new Int32Array(l).fill(1), [b, l]);
      const good = Array.from({ length: l }, () => [0, 0, 0]);
      for (const [i, bad] of [
        [3, [4, 4, 4]], // lo > i
        [2, [0, 0, 3]], // hideHi > i
        [4, [2, 1, 3]], // hideLo < lo
        [4, [0, 3, 2]], // hideHi < hideLo
        [1, [-1, 0, 0]], // negative
      ] as const) {
        const s = good.map((x) => [...x]);
        s[i] = [...bad];
        const spans = i32(s.flat(), [b, l, 3]);
        const { out } = ops.attention(q, k, v, m, { spans });
        await assert.rejects(ops.read(out), /spans/, `spans ${bad} at query ${i}`);
        const dout = f32(ones(b * l * nh * hd), [b, l, nh, hd]);
        const lse = ops.zeros(be, 'f32', [b, nh, l]);
        const g = ops.attentionBackward(q, k, v, m, f32(ones(b * l * nh * hd), [b, l, nh, hd]), lse, dout, { spans });
        await assert.rejects(ops.read(g.dq), /spans/, `backward: spans ${bad} at query ${i}`);
      }
      assert.throws(() => ops.attention(q, k, v, m, { spans: i32([0, 0, 0], [1, 1, 3]) }), /spans/);
    });
  });
