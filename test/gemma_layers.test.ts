// Gemma's two layer ops on every backend (docs/ops.md "Gemma's layer ops"): GeGLU, ops.swiglu with
// { activation: 'gelu_tanh' } (HF gelu_pytorch_tanh = PyTorch gelu(approximate='tanh')), and Gemma's
// RMSNorm, ops.rmsnorm with { unitOffset: true } (scale 1 + w), forward and backward, against float64
// references written from the Hugging Face / PyTorch formulas (test/helpers/model_ref.ts) and against
// PyTorch 1.13 autograd in float64 (test/oracle/model_ops_torch.py).
// Error norm: relErr = max |got - ref| / max |ref|. Tolerances: 1e-5 (fp32 compute against float64),
// on the whole tensor and on each input region of the GELU separately (so the small values near 0 are
// held to 1e-5 of their own size, not of the large ones'); bf16 norm weights are compared with the
// reference run on the same bf16 values, 1 added in float64.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { Tensor } from '../src/tensor/tensor.js';
import type { Rng } from '../src/util/rng.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';
import { relErr } from './helpers/loss_ref.js';
import { gegluBackwardRef, gegluRef, gemmaRmsnormBackwardRef, gemmaRmsnormRef } from './helpers/model_ref.js';
import { runPython } from './helpers/python.js';
import { randn, withSeed } from './helpers/random.js';

const TOL = 1e-5;

function check(name: string, got: ArrayLike<number>, want: ArrayLike<number>, tol = TOL) {
  const e = relErr(got, want);
  assert.ok(e <= tol, `${name}: relative error ${e} > ${tol}`);
}

/** Gate values over the GELU's regions, each a contiguous run: [name, values]. */
function gateRegions(rng: Rng): [string, Float32Array][] {
  const n = () => rng.int(1, 700);
  const uniform = (k: number, lo: number, hi: number) => Float32Array.from({ length: k }, () => lo + (hi - lo) * rng.next());
  return [
    ['near 0 (|x| ~ 1e-3)', randn(rng, n(), 1e-3)],
    ['tiny (|x| ~ 1e-6)', randn(rng, n(), 1e-6)],
    ['moderate (|x| ~ 2)', randn(rng, n(), 2)],
    ['the tails (|x| up to 10)', uniform(n(), -10, 10)],
    ['negative, 3 to 10', uniform(n(), -10, -3)],
    ['positive, 3 to 10', uniform(n(), 3, 10)],
    ['exact points', Float32Array.from([0, -0, 1, -1, 10, -10, 5, -5, 1e-30, -1e-30])],
  ];
}

for (const be of await testBackends())
  describe(`on backend ${be.name}`, () => {
    const f32 = (x: Float32Array, shape: number[]) => ops.upload(be, { dtype: 'f32', data: x }, shape);
    const host = async (t: Tensor) => (await ops.read(t)) as Float32Array;

    test('GeGLU (swiglu, activation gelu_tanh) forward and backward equal float64 over the GELU regions', async () =>
      withSeed(async (rng) => {
        const regions = gateRegions(rng);
        const g = Float32Array.from(regions.flatMap(([, v]) => Array.from(v)));
        const n = g.length;
        const u = randn(rng, n),
          d = randn(rng, n);
        const opts = { activation: 'gelu_tanh' } as const;
        const out = await host(ops.swiglu(f32(g, [n]), f32(u, [n]), opts));
        const r = ops.swigluBackward(f32(g, [n]), f32(u, [n]), f32(d, [n]), opts);
        const [dgate, dup] = [await host(r.dgate), await host(r.dup)];
        const ref = gegluRef(g, u),
          rb = gegluBackwardRef(g, u, d);
        check('out', out, ref);
        check('dgate', dgate, rb.dgate);
        check('dup', dup, rb.dup);
        let at = 0;
        for (const [name, v] of regions) {
          const part = <A extends ArrayLike<number>>(a: A) => Array.from(a).slice(at, at + v.length);
          check(`out, ${name}`, part(out), part(ref));
          check(`dgate, ${name}`, part(dgate), part(rb.dgate));
          check(`dup, ${name}`, part(dup), part(rb.dup));
          at += v.length;
        }
        // gelu(x) -> x / 2 at 0: each value near 0 to 1e-5 of itself, the derivative to 1e-5 of 1/2
        for (let i = 0; i < n; i++) {
          if (Math.abs(g[i]) > 1e-2 || u[i] === 0) continue;
          const want = ref[i];
          assert.ok(Math.abs(out[i] - want) <= TOL * Math.abs(want), `out[${i}] = ${out[i]}, float64 ${want} (gate ${g[i]})`);
        }
      }));

    test('GeGLU is not SwiGLU, and silu stays the default', async () =>
      withSeed(async (rng) => {
        const n = rng.int(16, 500);
        const g = randn(rng, n, 2),
          u = randn(rng, n);
        const plain = await host(ops.swiglu(f32(g, [n]), f32(u, [n])));
        const silu = await host(ops.swiglu(f32(g, [n]), f32(u, [n]), { activation: 'silu' }));
        assert.deepEqual(silu, plain);
        check('gelu_tanh', await host(ops.swiglu(f32(g, [n]), f32(u, [n]), { activation: 'gelu_tanh' })), gegluRef(g, u));
        assert.ok(relErr(plain, gegluRef(g, u)) > 1e-2, 'silu and gelu_tanh differ');
        assert.throws(
          () => ops.swiglu(f32(g, [n]), f32(u, [n]), { activation: 'gelu' as never }),
          /activation must be 'silu' or 'gelu_tanh'/,
        );
      }));

    for (const dtype of ['f32', 'bf16'] as const)
      test(`Gemma RMSNorm (unitOffset: scale 1 + w) forward and backward, ${dtype} weight`, async () =>
        withSeed(async (rng) => {
          const t = rng.int(1, 40),
            h = rng.int(2, 700),
            eps = 1e-6;
          const x = randn(rng, t * h, 2);
          // trained Gemma norm weights sit near 0 (initialized at 0); 1 + w in bf16 would round them away
          // (spacing 2^-7 next to 1): the bf16 case fails unless the 1 is added in f32 to w's exact value
          const wf = randn(rng, h, 0.05);
          const wt = dtype === 'f32' ? f32(wf, [h]) : ops.upload(be, { dtype: 'bf16', data: f32ArrayToBf16(wf) }, [h]);
          const w = dtype === 'f32' ? wf : bf16ArrayToF32(f32ArrayToBf16(wf));
          const opts = { unitOffset: true };
          const { y, rstd } = ops.rmsnorm(f32(x, [t, h]), wt, eps, opts);
          const ref = gemmaRmsnormRef(x, w, t, h, eps);
          check('y', await host(y), ref.y);
          check('rstd', await host(rstd), ref.rstd);
          const dy = randn(rng, t * h);
          const dwBase = randn(rng, h);
          const dw = f32(dwBase.slice(), [h]);
          const dx = ops.rmsnormBackward(f32(x, [t, h]), wt, rstd, f32(dy, [t, h]), dw, opts);
          const rb = gemmaRmsnormBackwardRef(x, w, dy, t, h, eps);
          check('dx', await host(dx), rb.dx);
          check(
            'dw (accumulated)',
            await host(dw),
            rb.dw.map((v, j) => v + dwBase[j]),
          );
          // without the option the scale is w itself
          const plain = await host(ops.rmsnorm(f32(x, [t, h]), wt, eps).y);
          assert.ok(relErr(plain, ref.y) > 0.5, 'unitOffset changes the scale');
        }));

    test('GeGLU and Gemma RMSNorm equal PyTorch 1.13 autograd (float64 torch)', async () =>
      withSeed(async (rng) => {
        const dir = mkdtempSync(join(tmpdir(), 'spinlm-gemma-torch-'));
        try {
          const put = (name: string, data: Float32Array) =>
            writeFileSync(join(dir, `${name}.bin`), new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
          const read = (name: string) => {
            const b = readFileSync(join(dir, `${name}.bin`));
            return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
          };
          const g = Float32Array.from(gateRegions(rng).flatMap(([, v]) => Array.from(v)));
          const n = g.length;
          const u = randn(rng, n),
            d = randn(rng, n);
          put('sw.g', g);
          put('sw.u', u);
          put('sw.dout', d);
          const t = rng.int(1, 12),
            h = rng.int(2, 300);
          const x = randn(rng, t * h),
            w = randn(rng, h, 0.1),
            dy = randn(rng, t * h);
          put('rms.x', x);
          put('rms.w', w);
          put('rms.dout', dy);
          const spec = {
            ops: [
              { name: 'sw', op: 'swiglu', shapes: { g: [n], u: [n] }, params: { activation: 'gelu_tanh' } },
              { name: 'rms', op: 'rmsnorm', shapes: { x: [t, h], w: [h] }, params: { eps: 1e-6, unitOffset: true } },
            ],
          };
          writeFileSync(join(dir, 'spec.json'), JSON.stringify(spec));
          runPython(new URL('./oracle/model_ops_torch.py', import.meta.url).pathname, [dir]);

          const sw = { activation: 'gelu_tanh' } as const;
          check('geglu y vs torch', await host(ops.swiglu(f32(g, [n]), f32(u, [n]), sw)), read('sw.y'));
          const r = ops.swigluBackward(f32(g, [n]), f32(u, [n]), f32(d, [n]), sw);
          check('geglu dgate vs torch', await host(r.dgate), read('sw.dg'));
          check('geglu dup vs torch', await host(r.dup), read('sw.du'));
          const rn = { unitOffset: true };
          const { y, rstd } = ops.rmsnorm(f32(x, [t, h]), f32(w, [h]), 1e-6, rn);
          const dw = f32(new Float32Array(h), [h]);
          const dx = ops.rmsnormBackward(f32(x, [t, h]), f32(w, [h]), rstd, f32(dy, [t, h]), dw, rn);
          check('gemma rmsnorm y vs torch', await host(y), read('rms.y'));
          check('gemma rmsnorm dx vs torch', await host(dx), read('rms.dx'));
          check('gemma rmsnorm dw vs torch', await host(dw), read('rms.dw'));
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }));
  });
