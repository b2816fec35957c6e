// spinlm's kernel measurements for bench/gpu.bench.ts, one process for all of them; prints one JSON line
// per mode the moment it is measured ({"mode": ..., "rows": [...]}), so a crash or time-out keeps the
// modes before it. Each row names its shape, milliseconds and rate; the bench adds the roofline's
// prediction (bench/gpu_roofline.ts) and PyTorch's row of the same name (bench/peer/torch_gpu.py).
// Usage: node --import tsx bench/gpu_kernel_probe.ts gemm,decode,attention,head [iters]
//   gemm:      ops.matmul computeDtype 'bf16' at the 1.1B and 7B linear shapes, 8192 tokens (forward
//              x W^T; the backward forms dY W and dY^T X where the backend takes them in bf16)
//   decode:    ops.matmul rowInvariant, computeDtype 'bf16', M = 1, 8, 32, 64 x the 7B linear shapes
//   attention: ops.attention / attentionBackward computeDtype 'bf16', B 8 x L 2048 x 16 heads x hd 128, causal
//   head:      headLogprob / headLogprobBackward at 8192 x 4096 x 32000 (bf16 weights) vs matmul of that shape
// SPINLM_KIT_BACKEND=cuda-emu SPINLM_KIT_SIZE=tiny: the same code at tiny shapes on the emulator.
import type { ComputeDtype } from '../src/backend/backend.js';
import * as ops from '../src/ops/index.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { Rng } from '../src/util/rng.js';
import { kitBackend, timeMs } from './kit_backend.js';
import { LLAMA_1B, LLAMA_7B, linearShapes, type Shape } from './gpu_roofline.js';

const modes = String(process.argv[2] ?? 'gemm,decode,attention,head').split(',');
const iters = Number(process.argv[3] ?? 3);
const tiny = process.env.SPINLM_KIT_SIZE === 'tiny';
const be = await kitBackend(process.env.SPINLM_KIT_BACKEND ?? 'cuda');
const rng = new Rng(11);
const TINY = { hidden: 64, layers: 1, heads: 4, kv: 2, hd: 16, inter: 96, vocab: 300 };
const M = tiny ? 48 : 8192;
type Row = Record<string, number | string>;

/** A tensor of `shape` filled with normal(0, std) values: 64 Ki drawn here, repeated over the buffer on the device. */
function filled<D extends 'f32' | 'bf16'>(dtype: D, shape: number[], std = 1): Tensor<D> {
  const numel = shape.reduce((a, b) => a * b, 1);
  const chunk = Math.min(numel, 1 << 16);
  const seed = ops.upload(be, { dtype: 'f32', data: Float32Array.from({ length: chunk }, () => std * rng.normal()) }, [chunk]);
  const t = ops.empty(be, dtype, shape);
  for (let off = 0; off < numel; off += chunk) {
    const n = Math.min(chunk, numel - off);
    be.cast(seed.view(0, [n]), t.view(off, [n]));
  }
  seed.free();
  return t;
}
const free = (...ts: (Tensor | undefined)[]) => ts.forEach((t) => t?.free());
/** Runs `fn`; a TypeError or RangeError (an option the backend does not take yet) becomes a row note. */
async function attempt(row: Row, fn: () => Promise<void>): Promise<Row> {
  try {
    await fn();
  } catch (e) {
    row.skipped = (e as Error).message.split('\n')[0].slice(0, 160);
  }
  return row;
}
const emit = (mode: string, rows: Row[], extra: Row = {}) => {
  const d = be.name.startsWith('cuda')
    ? (be as unknown as { native: { info(): { name: string; gemm: string } } }).native.info()
    : undefined;
  console.log(JSON.stringify({ mode, device: d?.name ?? be.name, gemm: d?.gemm ?? '', ...extra, rows }));
};

async function gemmRow(s: Shape, form: 'fwd' | 'dx' | 'dw', compute: ComputeDtype, rowInvariant = false, reps = 1): Promise<Row> {
  // fwd: [m, k] x W[n, k]^T; dx: dY[m, n] x W[n, k]; dw: dY[m, n]^T x X[m, k] (the weight gradient, [n, k])
  const row: Row = { name: `${s.name} ${form}`, m: s.m, n: s.n, k: s.k, compute };
  return attempt(row, async () => {
    const w = filled('bf16', [s.n, s.k], 0.02);
    const a = form === 'fwd' ? filled('f32', [s.m, s.k]) : filled('f32', [s.m, s.n]);
    const xb = form === 'dw' ? filled('bf16', [s.m, s.k]) : undefined;
    const out = ops.empty(be, 'f32', form === 'fwd' ? [s.m, s.n] : form === 'dx' ? [s.m, s.k] : [s.n, s.k]);
    const run =
      form === 'fwd'
        ? () => ops.matmul(a, w, { transB: true, computeDtype: compute, rowInvariant, out })
        : form === 'dx'
          ? () => ops.matmul(a, w, { computeDtype: compute, out })
          : () => ops.matmul(a, xb!, { transA: true, computeDtype: compute, out });
    try {
      const ms = await timeMs(be, run, iters, reps);
      row.ms = ms;
      row.tflops = (2 * s.m * s.n * s.k) / (ms * 1e9);
      row.weight_gbs = (2 * s.n * s.k) / (ms * 1e6);
    } finally {
      free(w, a, xb, out);
    }
  });
}

for (const mode of modes) {
  if (mode === 'gemm') {
    const shapes = tiny ? linearShapes(TINY, M, 'tiny') : [...linearShapes(LLAMA_1B, M, '1.1B'), ...linearShapes(LLAMA_7B, M, '7B')];
    const rows: Row[] = [];
    for (const s of shapes) rows.push(await gemmRow(s, 'fwd', 'bf16'));
    // the backward forms at the largest MLP shape of each model
    for (const s of shapes.filter((x) => x.name.endsWith('gate+up')))
      for (const f of ['dx', 'dw'] as const) rows.push(await gemmRow(s, f, 'bf16'));
    emit(mode, rows);
  } else if (mode === 'decode') {
    const rows: Row[] = [];
    for (const m of [1, 8, 32, 64])
      for (const s of linearShapes(tiny ? TINY : LLAMA_7B, m, tiny ? 'tiny' : '7B'))
        rows.push(await gemmRow(s, 'fwd', 'bf16', true, tiny ? 1 : 20));
    emit(mode, rows);
  } else if (mode === 'attention') {
    const [B, L, nh, hd] = tiny ? [1, 48, 2, 16] : [8, 2048, 16, 128];
    const fwdFlops = (4 * B * nh * L * L * hd) / 2;
    const row: Row = { name: `attention B ${B} L ${L} heads ${nh} hd ${hd} causal`, b: B, l: L, heads: nh, hd, compute: 'bf16' };
    await attempt(row, async () => {
      const [q, k, v, dout] = [0, 1, 2, 3].map(() => filled('f32', [B, L, nh, hd]));
      const mask = ops.upload(be, { dtype: 'i32', data: new Int32Array(B * L).fill(1) }, [B, L]);
      const opts = { computeDtype: 'bf16' as const };
      let last: { out: Tensor<'f32'>; lse: Tensor<'f32'> } | undefined;
      row.fwd_ms = await timeMs(
        be,
        () => {
          if (last) free(last.out, last.lse);
          last = ops.attention(q, k, v, mask, opts);
        },
        iters,
      );
      row.fwd_tflops = fwdFlops / (Number(row.fwd_ms) * 1e9);
      row.bwd_ms = await timeMs(
        be,
        () => {
          const g = ops.attentionBackward(q, k, v, mask, last!.out, last!.lse, dout, opts);
          free(g.dq, g.dk, g.dv);
        },
        iters,
      );
      row.bwd_tflops = (2.5 * fwdFlops) / (Number(row.bwd_ms) * 1e9);
      row.fwd_bwd_tflops = (3.5 * fwdFlops) / ((Number(row.fwd_ms) + Number(row.bwd_ms)) * 1e9);
      free(q, k, v, dout, mask, last?.out, last?.lse);
    });
    emit(mode, [row]);
  } else if (mode === 'head') {
    const [N, H, V] = tiny ? [48, 64, 300] : [8192, 4096, 32000];
    const flops = 2 * N * H * V;
    const h = filled('f32', [N, H]);
    const w = filled('bf16', [V, H], 0.02);
    const targets = ops.upload(be, { dtype: 'i32', data: Int32Array.from({ length: N }, () => rng.int(0, V - 1)) }, [N]);
    const dlogp = filled('f32', [N]);
    const dw = ops.zeros(be, 'f32', [V, H]);
    const rows: Row[] = [];
    const gemm = await gemmRow({ name: `the head's shape`, m: N, n: V, k: H }, 'fwd', 'bf16');
    rows.push(gemm);
    for (const compute of ['bf16', 'f32'] as const) {
      const row: Row = { name: `fused head ${N} x ${H} x ${V}`, rows: N, hidden: H, vocab: V, compute };
      await attempt(row, async () => {
        let lse: Tensor<'f32'> | undefined;
        row.fwd_ms = await timeMs(
          be,
          () => {
            const r = ops.headLogprob(h, w, targets, { computeDtype: compute });
            free(r.logp, lse);
            lse = r.lse;
          },
          iters,
        );
        row.fwd_tflops = flops / (Number(row.fwd_ms) * 1e9);
        // the backward in the same arithmetic where the op takes it, else f32 (the row says which ran)
        const backward = (c: ComputeDtype) => () => ops.headLogprobBackward(h, w, targets, lse!, dlogp, { dw, computeDtype: c }).free();
        row.bwd_compute = compute;
        try {
          row.bwd_ms = await timeMs(be, backward(compute), iters);
        } catch (e) {
          if (compute === 'f32') throw e;
          row.bwd_compute = `f32 (bf16 refused: ${(e as Error).message.split('\n')[0].slice(0, 80)})`;
          row.bwd_ms = await timeMs(be, backward('f32'), iters);
        }
        row.bwd_tflops = (3 * flops) / (Number(row.bwd_ms) * 1e9);
        if (typeof gemm.tflops === 'number') {
          row.fwd_of_gemm = Number(row.fwd_tflops) / gemm.tflops;
          row.bwd_of_gemm = Number(row.bwd_tflops) / gemm.tflops;
        }
        free(lse);
      });
      rows.push(row);
      if (!row.skipped) break; // bf16 ran: f32 is not needed
    }
    free(h, w, targets, dlogp, dw);
    emit(mode, rows);
  } else {
    console.error(`gpu_kernel_probe: unknown mode ${mode} (gemm, decode, attention, head)`);
    process.exit(2);
  }
}
