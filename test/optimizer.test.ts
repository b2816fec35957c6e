// RMSprop and AdamW (with and without gradient clipping, f32 and bf16 parameters) against
// torch.optim over several steps with a changing learning rate; and the learning-rate schedules
// against Hugging Face's formulas. Tolerances are stated at each check (normwise relative errors).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { type OptimizerConfig, Optimizer, type Parameter } from '../src/optim/optimizer.js';
import { lrMultiplier, warmupSteps } from '../src/spin/schedule.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import { relErr } from './helpers/loss_ref.js';
import { runPython } from './helpers/python.js';
import { randn, withSeed } from './helpers/random.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';

const ORACLE = new URL('./oracle/optim_torch.py', import.meta.url).pathname;
const SHAPES = [[33, 17], [129], [5, 6, 7]];
const STEPS = 4;

const configs: { name: string; cfg: OptimizerConfig; hyper: Record<string, number>; lr: number }[] = [
  { name: 'rmsprop', cfg: { type: 'rmsprop' }, hyper: { alpha: 0.99, eps: 1e-8, weightDecay: 0 }, lr: 1e-3 },
  {
    name: 'rmsprop+wd',
    cfg: { type: 'rmsprop', alpha: 0.9, eps: 1e-6, weightDecay: 0.1 },
    hyper: { alpha: 0.9, eps: 1e-6, weightDecay: 0.1 },
    lr: 1e-3,
  },
  { name: 'adamw', cfg: { type: 'adamw', weightDecay: 0.01 }, hyper: { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 }, lr: 2e-3 },
];

for (const be of await testBackends())
  describe(`optimizers against torch.optim on backend ${be.name}`, () => {
    const cpu = be instanceof CpuBackend ? be : null;
    for (const { name, cfg, hyper, lr } of configs) {
      for (const clip of [null, 0.5]) {
        for (const dtype of ['f32', 'bf16'] as const) {
          test(`${name}, clip ${clip ?? 'off'}, ${dtype} parameters: ${STEPS} steps`, async () =>
            withSeed(async (rng) => {
              const dir = mkdtempSync(join(tmpdir(), 'spinlm-optim-'));
              try {
                const init = SHAPES.map((s) =>
                  randn(
                    rng,
                    s.reduce((a, b) => a * b),
                    1,
                  ),
                );
                // bf16 parameters: both sides start from the bf16-rounded values (the master is their f32 copy)
                const start = dtype === 'bf16' ? init.map((x) => bf16ArrayToF32(f32ArrayToBf16(x))) : init;
                const params: Parameter[] = SHAPES.map((s, i) => {
                  const grad = ops.empty(be, 'f32', s);
                  if (dtype === 'f32') return { name: `p${i}`, param: ops.upload(be, { dtype: 'f32', data: start[i].slice() }, s), grad };
                  return {
                    name: `p${i}`,
                    param: ops.upload(be, { dtype: 'bf16', data: f32ArrayToBf16(start[i]) }, s),
                    master: ops.upload(be, { dtype: 'f32', data: start[i].slice() }, s),
                    grad,
                  };
                });
                const opt = new Optimizer(be, params, cfg);
                const lrs = Array.from({ length: STEPS }, (_, k) => lr * (1 - k / (2 * STEPS)));
                const norms: number[] = [];
                for (let k = 0; k < STEPS; k++) {
                  SHAPES.forEach((_, i) => {
                    const g = randn(rng, params[i].grad!.numel, 0.3);
                    // RMSprop with weight decay: an element whose g + wd p lands within a few ulps of 0 gets a
                    // step of any size up to lr / sqrt(1 - alpha) from its last bits (eps 1e-6), which f32
                    // orders decide (seed 1176849764: one such element, update err 0.0068). Keep |g + wd p|
                    // >= 1e-2; p moves by <= 4 lr / sqrt(1 - alpha) ~ 0.013 over the steps, wd times that 1.3e-3.
                    const wd = cfg.type === 'rmsprop' ? (hyper.weightDecay ?? 0) : 0;
                    if (wd > 0)
                      for (let j = 0; j < g.length; j++) while (Math.abs(g[j] + wd * start[i][j]) < 1e-2) g[j] = randn(rng, 1, 0.3)[0];
                    writeFileSync(join(dir, `g${i}_${k}.bin`), new Uint8Array(g.buffer));
                    ops.write(params[i].grad!, { dtype: 'f32', data: g });
                  });
                  const norm = opt.step(lrs[k], clip);
                  norms.push((await ops.read(norm))[0]);
                  norm.free();
                }
                start.forEach((x, i) => writeFileSync(join(dir, `p${i}.bin`), new Uint8Array(x.buffer)));
                writeFileSync(join(dir, 'params.json'), JSON.stringify({ type: cfg.type, hyper, lrs, clip, shapes: SHAPES, steps: STEPS }));
                runPython(ORACLE, [dir]);
                const torchNorms: number[] = JSON.parse(readFileSync(join(dir, 'norms.json'), 'utf8'));
                assert.ok(relErr(norms, torchNorms) <= 1e-6, `grad norms ${norms} vs ${torchNorms}`);
                for (let i = 0; i < SHAPES.length; i++) {
                  const buf = readFileSync(join(dir, `out${i}.bin`));
                  const want = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
                  const master = (await ops.read(params[i].master ?? (params[i].param as never))) as Float32Array;
                  // What the optimizer must get right is the motion: the update (new - start) within 1e-3 of
                  // torch's largest update; the parameters themselves only to the 1e-5 of max |p| the issue asks.
                  // Both sides run in f32 in different operation orders, and where weight decay nearly cancels the
                  // gradient (rmsprop+wd, clip 0.5) an element's adaptive step depends on the last bits of g:
                  // parameter differences of 1e-6-3.3e-6 of max |p| were seen (seeds 91535, 115292), all
                  // within 3e-4 of the largest update.
                  assert.ok(relErr(master, want) <= 1e-5, `${name} p${i}: parameter err ${relErr(master, want)} (the issue's 1e-5)`);
                  const delta = want.map((w, j) => w - start[i][j]);
                  const gotDelta = master.map((w, j) => w - start[i][j]);
                  assert.ok(relErr(gotDelta, delta) <= 1e-3, `${name} p${i}: update err ${relErr(gotDelta, delta)}`);
                  if (dtype === 'bf16') {
                    const b = (await ops.read(params[i].param)) as Uint16Array;
                    assert.deepEqual(b, f32ArrayToBf16(master), `p${i}: the bf16 parameter is the rounded master`);
                  }
                }
                opt.free();
              } finally {
                rmSync(dir, { recursive: true, force: true });
              }
            }));
        }
      }
    }

    if (cpu)
      test('sumSquares is the same for 1 and 2 threads and matches float64 (CPU)', async () =>
        withSeed(async (rng) => {
          const x = randn(rng, 200_003, 2);
          const t = ops.upload(cpu, { dtype: 'f32', data: x }, [x.length]);
          const out = ops.empty(cpu, 'f32', [2]);
          const saved = cpu.threads;
          try {
            cpu.threads = 1;
            ops.sumSquares(t, out, 0);
            cpu.threads = 2;
            ops.sumSquares(t, out, 1);
          } finally {
            cpu.threads = saved;
          }
          const [a, b] = await ops.read(out);
          assert.equal(a, b);
          let ref = 0;
          for (const v of x) ref += v * v;
          assert.ok(Math.abs(a - ref) <= 1e-6 * ref);
        }));

    test('sumSquares, clipCoefficient and accumulate match float64', async () =>
      withSeed(async (rng) => {
        const k = rng.int(1, 9);
        const xs = Array.from({ length: k }, () => randn(rng, rng.int(1, 5000), 3));
        const sumsq = ops.empty(be, 'f32', [k]);
        xs.forEach((x, i) => ops.sumSquares(ops.upload(be, { dtype: 'f32', data: x }, [x.length]), sumsq, i));
        let total = 0;
        for (const x of xs) for (const v of x) total += v * v;
        const maxNorm = Math.sqrt(total) * [0.5, 2][rng.int(0, 1)];
        const [norm, coef] = await ops.read(ops.clipCoefficient(sumsq, maxNorm));
        assert.ok(Math.abs(norm - Math.sqrt(total)) <= 1e-6 * Math.sqrt(total), `norm ${norm} vs ${Math.sqrt(total)}`);
        assert.ok(Math.abs(coef - Math.min(1, maxNorm / (Math.sqrt(total) + 1e-6))) <= 1e-6);
        const acc0 = randn(rng, 9),
          x = randn(rng, 9),
          alpha = rng.normal();
        const acc = ops.upload(be, { dtype: 'f32', data: acc0 }, [9]);
        ops.accumulate(acc, ops.upload(be, { dtype: 'f32', data: x }, [9]), alpha);
        const got = await ops.read(acc);
        for (let i = 0; i < 9; i++) assert.equal(got[i], Math.fround(acc0[i] + alpha * x[i]), `accumulate element ${i}`);
        assert.throws(() => ops.accumulate(acc, ops.empty(be, 'f32', [8]), 1), /x must have shape \[9\]/);
      }));

    test('bad optimizer inputs are clear errors', async () => {
      const p = ops.upload(be, { dtype: 'bf16', data: new Uint16Array(4) }, [4]);
      const g = ops.upload(be, { dtype: 'f32', data: new Float32Array(4) }, [4]);
      assert.throws(
        () => new Optimizer(be, [{ name: 'w', param: p, grad: g }], { type: 'rmsprop' }).step(1e-3, 1),
        /bf16 parameter .* needs an f32 master/,
      );
      const f = ops.upload(be, { dtype: 'f32', data: new Float32Array(4) }, [4]);
      assert.throws(
        () => new Optimizer(be, [{ name: 'w', param: f, grad: ops.empty(be, 'f32', [5]) }], { type: 'adamw' }).step(1e-3, 1),
        /grad must have shape \[4\]/,
      );
      assert.throws(
        () =>
          new Optimizer(
            be,
            [
              { name: 'w', param: f, grad: g },
              { name: 'w', param: f, grad: g },
            ],
            { type: 'adamw' },
          ),
        /listed twice/,
      );
      assert.throws(() => new Optimizer(be, [{ name: 'w', param: f, grad: g }], { type: 'adamw' }).step(NaN, null), /learning rate/);
    });
  });

describe('learning-rate schedules (Hugging Face formulas)', () => {
  test('linear with warm-up: ramps from 0, peaks at the end of warm-up, decays to 0', async () => {
    const total = 100,
      warm = warmupSteps(total, 0.1);
    assert.equal(warm, 10);
    assert.equal(lrMultiplier('linear', 0, total, warm), 0);
    assert.equal(lrMultiplier('linear', 5, total, warm), 0.5);
    assert.equal(lrMultiplier('linear', 10, total, warm), 1);
    assert.equal(lrMultiplier('linear', 55, total, warm), 0.5);
    assert.equal(lrMultiplier('linear', 100, total, warm), 0);
    assert.equal(warmupSteps(7, 0.1), 1, 'ceil, as HF rounds warm-up steps up');
  });
  test('cosine and constant', async () => {
    assert.equal(lrMultiplier('cosine', 10, 110, 10), 1);
    assert.ok(Math.abs(lrMultiplier('cosine', 60, 110, 10) - 0.5) < 1e-12);
    assert.equal(lrMultiplier('constant', 50, 100, 10), 1);
    assert.throws(() => warmupSteps(10, 1.5), /warmup_ratio must be in \[0, 1\]/);
  });
});
