// Peak-memory probe, run in a fresh process by bench/loss.bench.ts: the logits are made by native
// fills (no JS-side copies), so the growth of the peak RSS across an op is what the op itself needs.
// Usage: node --import tsx bench/memory_probe.ts N V bf16|f32   -> prints one JSON line
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { freeSpinLossContext, spinLossBackward, spinLossForward } from '../src/spin/loss.js';
import { peakRss as peak } from './harness.js';
import * as ops from '../src/ops/index.js';

const [n, v] = [Number(process.argv[2]), Number(process.argv[3])];
const dtype = process.argv[4] as 'bf16' | 'f32';
const be = new CpuBackend();

const z = ops.empty(be, dtype, [n, v]);
ops.fill(z, 0.5);
const targets = ops.empty(be, 'i32', [n]);
ops.fillBits(targets, 7);
const segments = ops.empty(be, 'i32', [n]);
ops.fillBits(segments, 0);
const ref = ops.empty(be, 'f32', [2]);
ops.fill(ref, -10);
const base = peak();
const { logp, lse } = ops.logprobGather(z, targets);
const afterGather = peak();
logp.free();
lse.free();
const ctx = spinLossForward(z, targets, segments, ref, 1, { beta: 0.1, lossType: 'sigmoid' });
spinLossBackward(ctx, { inPlace: true });
freeSpinLossContext(ctx);
const afterBackward = peak();
console.log(
  JSON.stringify({ n, v, dtype, logitsBytes: z.byteLength, gatherGrowth: afterGather - base, forwardBackwardGrowth: afterBackward - base }),
);
