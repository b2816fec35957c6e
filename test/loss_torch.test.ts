// The fused SPIN loss against PyTorch autograd in float64 (test/oracle/spin_loss_torch.py): same inputs,
// loss, metrics and dlogits, for every loss type. Tolerances: loss/metrics 1e-6 relative (f32 logits),
// 1e-5 (bf16 logits); dlogits 1e-5 normwise (max abs error / max abs value).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { SPIN_LOSS_TYPES } from '../src/backend/backend.js';
import { spinLossBackward, spinLossForward, spinLossMetrics } from '../src/spin/loss.js';
import { f32ArrayToBf16 } from '../src/tensor/bf16.js';
import { IGNORE, relErr } from './helpers/loss_ref.js';
import { runPython } from './helpers/python.js';
import { randn, withSeed } from './helpers/random.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';

for (const be of await testBackends())
  describe(`on backend ${be.name}`, () => {
    const ORACLE = new URL('./oracle/spin_loss_torch.py', import.meta.url).pathname;

    const cases = [
      ...(['f32', 'bf16'] as const).map((dtype) => ({ dtype, norm: false })),
      { dtype: 'f32' as const, norm: true }, // length-normalized log-probs (--length_normalized)
    ];
    for (const { dtype, norm } of cases) {
      for (const lossType of SPIN_LOSS_TYPES) {
        test(`${dtype} logits, ${lossType} loss${norm ? ', length-normalized' : ''}: loss, metrics and dlogits equal torch autograd`, async () =>
          withSeed(async (rng) => {
            const b = 5,
              v = 1234;
            const beta = { sigmoid: 0.3, hinge: 0.05, ipo: 0.1, sppo_hard: 0.1 }[lossType];
            const segs: number[] = [];
            const targets: number[] = [];
            for (let s = 0; s < 2 * b; s++) {
              for (let i = rng.int(0, 8); i > 0; i--) {
                segs.push(-1);
                targets.push(IGNORE);
              }
              for (let i = rng.int(1, 20); i > 0; i--) {
                segs.push(s);
                targets.push(rng.int(0, v - 1));
              }
            }
            const n = segs.length;
            const zf = randn(rng, n * v, 2.5);
            const zdata = dtype === 'f32' ? zf : f32ArrayToBf16(zf);
            const logits =
              dtype === 'f32'
                ? ops.upload(be, { dtype: 'f32', data: zf }, [n, v])
                : ops.upload(be, { dtype: 'bf16', data: zdata as Uint16Array }, [n, v]);
            const ref = randn(rng, 2 * b, 1).map((x) => x * 20 - 150);
            const t = ops.upload(be, { dtype: 'i32', data: Int32Array.from(targets) }, [n]);
            const sg = ops.upload(be, { dtype: 'i32', data: Int32Array.from(segs) }, [n]);
            // length normalization as SpinObjective does it: c = 1 / target tokens per sequence, the
            // reference scaled on the host, the policy's sums through the diagonal seqScale
            const c = new Float64Array(2 * b);
            for (const s of segs) if (s >= 0) c[s]++;
            const diag = new Float32Array(4 * b * b);
            for (let i = 0; i < 2 * b; i++) diag[i * 2 * b + i] = 1 / Math.max(1, c[i]);
            const seqScale = norm ? ops.upload(be, { dtype: 'f32', data: diag }, [2 * b, 2 * b]) : undefined;
            const refIn = norm ? ref.map((x, i) => x / Math.max(1, c[i])) : ref;
            const ctx = spinLossForward(logits, t, sg, ops.upload(be, { dtype: 'f32', data: refIn }, [2 * b]), b, {
              beta,
              lossType,
              seqScale,
            });
            const m = await spinLossMetrics(ctx);
            const dz = (await ops.read(spinLossBackward(ctx, { dtype: 'f32' }))) as Float32Array;

            const dir = mkdtempSync(join(tmpdir(), 'spinlm-loss-torch-'));
            try {
              writeFileSync(
                join(dir, 'params.json'),
                JSON.stringify({ n, v, b, dtype, beta, loss_type: lossType, length_normalized: norm }),
              );
              writeFileSync(join(dir, 'logits.bin'), new Uint8Array(zdata.buffer));
              writeFileSync(join(dir, 'targets.bin'), new Uint8Array(Int32Array.from(targets).buffer));
              writeFileSync(join(dir, 'segments.bin'), new Uint8Array(Int32Array.from(segs).buffer));
              writeFileSync(join(dir, 'ref.bin'), new Uint8Array(ref.buffer));
              runPython(ORACLE, [dir], { threads: 2 });
              const torchOut = JSON.parse(readFileSync(join(dir, 'out.json'), 'utf8'));
              const buf = readFileSync(join(dir, 'dlogits.bin'));
              const torchDz = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
              const tol = dtype === 'f32' ? 1e-6 : 1e-5;
              const pairs: [string, number, number][] = [
                ['loss', m.loss, torchOut.loss],
                ['rewards/real', m['rewards/real'], torchOut.rewards_real],
                ['rewards/generated', m['rewards/generated'], torchOut.rewards_generated],
                ['rewards/margins', m['rewards/margins'], torchOut.margins],
                ['rewards/accuracies', m['rewards/accuracies'], torchOut.accuracies],
                ['logps/real', m['logps/real'], torchOut.logps_real],
                ['logps/generated', m['logps/generated'], torchOut.logps_generated],
              ];
              for (const [name, ours, theirs] of pairs) {
                // rewards (and the loss, a function of u with |dloss/du| <= 1) are beta x a difference of sums
                // of ~10 log-probs: their f32 error scales with the sums' size, not with their own value
                // (seed 51940: loss 0.2068109 vs 0.2068119 from sums of ~-150)
                // The squared losses (ipo, sppo_hard) pass the sums' error on times |dloss/dS| = 2|e| per
                // pair and answer, e the distance from the target; mean |e| <= sqrt(mean e^2) <= sqrt(loss),
                // so their loss's error is at most 4 sqrt(loss) max|S| x the sums' relative error.
                const fromSums = name === 'loss' || (name.startsWith('rewards/') && name !== 'rewards/accuracies');
                const squared = name === 'loss' && (lossType === 'ipo' || lossType === 'sppo_hard');
                const sumsScale = squared
                  ? 4 * Math.sqrt(Math.abs(theirs)) * Math.max(Math.abs(torchOut.logps_real), Math.abs(torchOut.logps_generated))
                  : beta * Math.abs(torchOut.logps_real);
                const scale = fromSums ? Math.max(Math.abs(theirs), sumsScale) : Math.abs(theirs);
                assert.ok(Math.abs(ours - theirs) <= tol * Math.max(scale, 1e-3), `${name}: spinlm ${ours} vs torch ${theirs}`);
              }
              assert.ok(relErr(dz, torchDz) <= 1e-5, `dlogits err ${relErr(dz, torchDz)}`);
            } finally {
              rmSync(dir, { recursive: true, force: true });
            }
          }));
      }
    }
  });
