// Attention with spans (issue 27) against today's layout on the same SPIN pairs, the CPU kernels alone:
//   padded: each pair as two rows [prompt | answer] (real, generated) of prompt + answer positions, causal
//           (the prompt twice), 2 * pairs rows;
//   packed: the pairs back to back in ONE row as [prompt | real | generated] with spans (the generated
//           answer sees the prompt and itself, not the real answer), no padding.
// Forward and backward medians in ms over --iters runs (after one warm-up; the two layouts alternate
// run by run), per head size.
// Usage: node --import tsx bench/attention_spans.bench.ts [--pairs 8] [--prompt 512] [--answer 256]
//        [--heads 16] [--kv 16] [--hd 64,128] [--iters 3] [--window 0]
import { parseArgs } from 'node:util';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import * as ops from '../src/ops/index.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { Rng } from '../src/util/rng.js';
import { table } from './harness.js';

const { values: args } = parseArgs({
  options: {
    pairs: { type: 'string', default: '8' },
    prompt: { type: 'string', default: '512' },
    answer: { type: 'string', default: '256' },
    heads: { type: 'string', default: '16' },
    kv: { type: 'string', default: '16' },
    hd: { type: 'string', default: '64,128' },
    iters: { type: 'string', default: '3' },
    window: { type: 'string', default: '0' },
  },
});
const [pairs, P, A, nh, nkv, iters, window] = ['pairs', 'prompt', 'answer', 'heads', 'kv', 'iters', 'window'].map((k) =>
  Number(args[k as keyof typeof args]),
);
const be = new CpuBackend();
const rng = new Rng(7);
const up = (shape: number[]) =>
  ops.upload(be, { dtype: 'f32', data: Float32Array.from({ length: shape.reduce((x, y) => x * y) }, () => rng.normal()) }, shape);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/** One layout's inputs: b rows of l positions, spans optional; run() times one forward and one backward. */
function layout(b: number, l: number, hd: number, spans?: Int32Array) {
  const [q, k, v, dout] = [up([b, l, nh, hd]), up([b, l, nkv, hd]), up([b, l, nkv, hd]), up([b, l, nh, hd])];
  const mask = ops.upload(be, { dtype: 'i32', data: new Int32Array(b * l).fill(1) }, [b, l]);
  const opts = { window, spans: spans ? ops.upload(be, { dtype: 'i32', data: spans }, [b, l, 3]) : undefined };
  return {
    async run(): Promise<[number, number]> {
      let t0 = performance.now();
      const { out, lse } = ops.attention(q, k, v, mask, opts);
      await ops.read(lse.view(0, [1]));
      const tf = performance.now() - t0;
      t0 = performance.now();
      const g = ops.attentionBackward(q, k, v, mask, out, lse, dout, opts);
      await ops.read(g.dv.view(0, [1]));
      const tb = performance.now() - t0;
      for (const t of [out, lse, g.dq, g.dk, g.dv]) t.free();
      return [tf, tb];
    },
    free() {
      for (const t of [q, k, v, dout, mask, opts.spans] as (Tensor | undefined)[]) t?.free();
    },
  };
}

const rows: (string | number)[][] = [];
for (const hd of String(args.hd).split(',').map(Number)) {
  const n = P + 2 * A,
    l = pairs * n;
  const spans = new Int32Array(l * 3);
  for (let p = 0; p < pairs; p++)
    for (let i = 0; i < n; i++) {
      const o = p * n;
      spans.set(i < P + A ? [o, o, o] : [o, o + P, o + P + A], (o + i) * 3);
    }
  const layouts = [
    { name: `padded ${2 * pairs} x ${P + A}`, ...layout(2 * pairs, P + A, hd) },
    { name: `packed 1 x ${l} (spans)`, ...layout(1, l, hd, spans) },
  ];
  // the layouts alternate run by run (a busy machine's load falls on both), after one warm-up each
  const times = layouts.map(() => ({ fwd: [] as number[], bwd: [] as number[] }));
  for (let it = 0; it <= iters; it++)
    for (const [x, lay] of layouts.entries()) {
      const [tf, tb] = await lay.run();
      if (it > 0) {
        times[x].fwd.push(tf);
        times[x].bwd.push(tb);
      }
    }
  layouts.forEach((lay, x) => {
    const [f, b] = [median(times[x].fwd), median(times[x].bwd)];
    rows.push([hd, lay.name, f, b, f + b]);
    lay.free();
  });
}
console.log(`${pairs} pairs of ${P} + ${A} + ${A}, ${nh} heads / ${nkv} kv heads, window ${window}, ${be.info().device}`);
console.log(table(['hd', 'layout', 'forward ms', 'backward ms', 'total ms'], rows));
