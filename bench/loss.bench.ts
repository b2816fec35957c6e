// Benchmark of the fused log-prob / SPIN-loss kernels (issue 2), side by side in one run with:
//   - the naive TypeScript version (two passes, Math.exp, float64),
//   - PyTorch: torch.log_softmax(x.float(), -1).gather(...) and autograd of the same SPIN loss,
//   - the machine's floors: a parallel streaming read of the same buffer, and the arithmetic floor of
//     one vector exp per logit (native expThroughput on L1-resident data): the loss kernels' exp, and
//     the Cephes exp they used before (issue 13's reference floor).
// Usage: node --import tsx bench/loss.bench.ts [--n 4096] [--v 32000] [--torch-threads 2] [--json out.json]
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { freeSpinLossContext, spinLossBackward, spinLossForward } from '../src/spin/loss.js';
import { bf16ArrayToF32 } from '../src/tensor/bf16.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { Rng } from '../src/util/rng.js';
import { logprobGatherRef } from '../test/helpers/loss_ref.js';
import { gb, medianMs, runPeer, table } from './harness.js';
import * as ops from '../src/ops/index.js';

const { values: args } = parseArgs({
  options: {
    n: { type: 'string', default: '4096' },
    v: { type: 'string', default: '32000' },
    'torch-threads': { type: 'string', default: '2' },
    pairs: { type: 'string', default: '8' },
    json: { type: 'string' },
  },
});
const N = Number(args.n),
  V = Number(args.v),
  B = Number(args.pairs);
const be = new CpuBackend();
const rng = new Rng(1234);

const f = new Float32Array(N * V);
for (let i = 0; i < f.length; i++) f[i] = rng.normal() * 3;
const logits = { f32: ops.upload(be, { dtype: 'f32', data: f }, [N, V]) as Tensor } as Record<'f32' | 'bf16', Tensor>;
logits.bf16 = ops.cast(logits.f32, 'bf16');
const targets = ops.upload(be, { dtype: 'i32', data: new Int32Array(N).map(() => rng.int(0, V - 1)) }, [N]);
const segments = ops.upload(be, { dtype: 'i32', data: new Int32Array(N).map((_, i) => Math.floor((i * 2 * B) / N)) }, [N]);
const ref = ops.upload(be, { dtype: 'f32', data: new Float32Array(2 * B).map(() => rng.normal() * 10 - 100) }, [2 * B]);

const floorRead: Record<string, number> = {};
const expFloorMs = await medianMs('exp floor', () => be.native.expThroughput(N * V), 10);
const cephesFloorMs = await medianMs('Cephes exp floor', () => be.native.expThroughput(N * V, 'cephes'), 10);
const rows: (string | number)[][] = [];
const memRows: (string | number)[][] = [];
const out: Record<string, unknown> = { n: N, v: V, threads: be.threads, expFloorMs, cephesFloorMs };

for (const dtype of ['bf16', 'f32'] as const) {
  const z = logits[dtype];
  const bytes = z.byteLength;
  floorRead[dtype] = await medianMs(`read ${dtype}`, () => be.native.streamRead(z, bytes), 20);

  const ours = await medianMs(
    `gather ${dtype}`,
    () => {
      const r = ops.logprobGather(z, targets);
      r.logp.free();
      r.lse.free();
    },
    20,
  );
  const probe = JSON.parse(
    execFileSync(
      process.execPath,
      ['--import', 'tsx', new URL('./memory_probe.ts', import.meta.url).pathname, String(N), String(V), dtype],
      { encoding: 'utf8' },
    ).trim(),
  );

  // naive TypeScript: widen to f32 (bf16), then the two-pass float64 loops
  const host = await ops.read(z);
  const yHost = await ops.read(targets);
  const naive = await medianMs(
    `naive ${dtype}`,
    () => {
      const vals = host instanceof Uint16Array ? bf16ArrayToF32(host) : host;
      logprobGatherRef(vals as Float32Array, N, V, yHost);
    },
    2,
    1,
  );

  // backward of the full SPIN loss, in place over a scratch copy of the logits (as the trainer runs it)
  const scratch = ops.cast(z, dtype);
  const fwd = await medianMs(
    `spin forward ${dtype}`,
    () => freeSpinLossContext(spinLossForward(scratch, targets, segments, ref, B, { beta: 0.1, lossType: 'sigmoid' })),
    10,
  );
  const ctx = spinLossForward(scratch, targets, segments, ref, B, { beta: 0.1, lossType: 'sigmoid' });
  const bwd = await medianMs(`spin backward ${dtype}`, () => spinLossBackward(ctx, { inPlace: true }), 10);
  const bwdNew = await medianMs(`spin backward new ${dtype}`, () => spinLossBackward(ctx, { dtype }).free(), 10);
  freeSpinLossContext(ctx);
  scratch.free();

  const torch = runPeer(new URL('./peer/torch_loss.py', import.meta.url).pathname, [
    '--n',
    String(N),
    '--v',
    String(V),
    '--dtype',
    dtype,
    '--threads',
    String(args['torch-threads']),
    '--reps',
    '5',
    '--pairs',
    String(B),
  ]);
  const tg = Number(torch.gather) * 1e3,
    tf = Number(torch.forward) * 1e3,
    tb = Number(torch.backward) * 1e3;

  rows.push([
    `logprobGather ${dtype}`,
    ours,
    gb(bytes, ours),
    floorRead[dtype],
    `${(ours / floorRead[dtype]).toFixed(2)}x`,
    `${(ours / expFloorMs).toFixed(2)}x`,
    `${(ours / cephesFloorMs).toFixed(2)}x`,
    naive,
    `${(naive / ours).toFixed(0)}x`,
    tg,
    `${(tg / ours).toFixed(1)}x`,
  ]);
  rows.push([
    `SPIN loss forward ${dtype}`,
    fwd,
    gb(bytes, fwd),
    floorRead[dtype],
    `${(fwd / floorRead[dtype]).toFixed(2)}x`,
    `${(fwd / expFloorMs).toFixed(2)}x`,
    `${(fwd / cephesFloorMs).toFixed(2)}x`,
    '',
    '',
    tf,
    `${(tf / fwd).toFixed(1)}x`,
  ]);
  rows.push([
    `SPIN loss backward ${dtype} (in place)`,
    bwd,
    gb(2 * bytes, bwd),
    2 * floorRead[dtype],
    `${(bwd / (2 * floorRead[dtype])).toFixed(2)}x`,
    `${(bwd / expFloorMs).toFixed(2)}x`,
    `${(bwd / cephesFloorMs).toFixed(2)}x`,
    '',
    '',
    tb,
    `${(tb / bwd).toFixed(1)}x`,
  ]);
  rows.push([
    `SPIN loss backward ${dtype} (new buffer)`,
    bwdNew,
    gb(2 * bytes, bwdNew),
    2 * floorRead[dtype],
    `${(bwdNew / (2 * floorRead[dtype])).toFixed(2)}x`,
    `${(bwdNew / expFloorMs).toFixed(2)}x`,
    `${(bwdNew / cephesFloorMs).toFixed(2)}x`,
    '',
    '',
    tb,
    `${(tb / bwdNew).toFixed(1)}x`,
  ]);
  out[dtype] = { ours, naive, fwd, bwd, bwdNew, readFloor: floorRead[dtype], torch, memory: probe };
  memRows.push([
    dtype,
    probe.logitsBytes / 2 ** 20,
    probe.gatherGrowth / 2 ** 20,
    probe.forwardBackwardGrowth / 2 ** 20,
    Number(torch.peak_rss_growth_bytes) / 2 ** 20,
  ]);
}

console.log(
  `\nN = ${N}, V = ${V}; spinlm on ${be.threads} threads, PyTorch on ${args['torch-threads']}; times are medians in ms; exp floor ${expFloorMs.toFixed(1)} ms, Cephes exp floor ${cephesFloorMs.toFixed(1)} ms\n`,
);
console.log(
  table(
    [
      'op',
      'spinlm ms',
      'GB/s',
      'read floor ms',
      'vs read floor',
      'vs exp floor',
      'vs Cephes exp floor',
      'naive TS ms',
      'naive / spinlm',
      'PyTorch ms',
      'PyTorch / spinlm',
    ],
    rows,
  ),
);
console.log(`\nPeak RSS growth beyond the logits (MiB), each measured in a fresh process:\n`);
console.log(
  table(['logits', 'logits MiB', 'spinlm logprobGather', 'spinlm SPIN fwd+bwd (in place)', 'PyTorch gather + SPIN fwd+bwd'], memRows),
);
if (args.json) writeFileSync(args.json, JSON.stringify(out, null, 2));
