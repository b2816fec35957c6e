// WebGPU-only checks (they run when the test backends include webgpu, as CI's SPINLM_TEST_BACKENDS=cpu,webgpu
// does): device limits (a tensor larger than one storage binding, more than 65535 rows of workgroups),
// the chunked paths under a small forced binding size, the fallback without optional features, clear
// errors beyond the device's limits, and creating / destroying backends without leaking buffers.
// Results are compared with the CPU backend (f32 ~1e-5 relative, bf16 one rounding).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Backend } from '../src/backend/backend.js';
import { createBackend } from '../src/backend/registry.js';
import { WebGpuBackend } from '../src/backend/webgpu/webgpu_backend.js';
import * as ops from '../src/ops/index.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { Tensor } from '../src/tensor/tensor.js';
import type { Rng } from '../src/util/rng.js';
import { cpuReference, testBackends } from './helpers/backends.js';
import { randn, withSeed } from './helpers/random.js';

const cpu = cpuReference();

async function host(t: Tensor): Promise<Float32Array> {
  const d = await ops.read(t);
  return d instanceof Uint16Array ? bf16ArrayToF32(d) : d instanceof Int32Array ? Float32Array.from(d) : d;
}

/** max |a - b| / max |b| (NaN anywhere fails). */
function relErr(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    if (Number.isNaN(a[i]) || Number.isNaN(b[i])) return Number.NaN;
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return den === 0 ? num : num / den;
}

function close(got: Float32Array, want: Float32Array, tol: number, what: string): void {
  const e = relErr(got, want);
  assert.ok(e <= tol, `${what}: relative error ${e} > ${tol}`);
}

/** The same host data on the backend under test and on the CPU. */
function both<D extends 'f32' | 'bf16' | 'i32'>(
  be: Backend,
  dtype: D,
  data: D extends 'f32' ? Float32Array : D extends 'bf16' ? Uint16Array : Int32Array,
  shape: number[],
) {
  const h = { dtype, data } as never;
  return [ops.upload(be, h, shape), ops.upload(cpu, h, shape)] as [Tensor<D>, Tensor<D>];
}

function targets(rng: Rng, n: number, v: number): Int32Array {
  return Int32Array.from({ length: n }, () => (rng.next() < 0.1 ? -100 : rng.int(0, v - 1)));
}

/** logprobGather and its backward (out of place and in place) on both backends. */
async function checkLoss(be: Backend, rng: Rng, n: number, v: number, dtype: 'f32' | 'bf16', scale: number): Promise<void> {
  const f = randn(rng, n * v, scale);
  const [z, zc] = dtype === 'f32' ? both(be, 'f32', f, [n, v]) : both(be, 'bf16', f32ArrayToBf16(f), [n, v]);
  const [y, yc] = both(be, 'i32', targets(rng, n, v), [n]);
  const g = ops.logprobGather(z, y);
  const gc = ops.logprobGather(zc, yc);
  close(await host(g.logp), await host(gc.logp), 2e-6 * Math.max(1, scale), `${dtype} [${n}, ${v}] logp`);
  const lseWant = await host(gc.lse);
  close(await host(g.lse), lseWant, 2e-6, `${dtype} [${n}, ${v}] lse`);
  const [d, dc] = both(be, 'f32', randn(rng, n), [n]);
  const out = ops.logprobGatherBackward(z, y, g.lse, d, { dtype });
  const outc = ops.logprobGatherBackward(zc, yc, gc.lse, dc, { dtype });
  const want = await host(outc);
  // dlogits = d (1[j = y] - exp(z - lse)): an lse within its tolerance (2e-6 of max |lse|, absolute) moves
  // each p by that much relative, so f32's bound is 2e-6 max |lse| (~3.5e-5 at V = 262144), at least 1e-5
  const lseMax = lseWant.reduce((m, x) => (Number.isFinite(x) ? Math.max(m, Math.abs(x)) : m), 0);
  const tol = dtype === 'bf16' ? 2 ** -8 : Math.max(1e-5, 2e-6 * lseMax);
  close(await host(out), want, tol, `${dtype} [${n}, ${v}] dlogits`);
  ops.logprobGatherBackward(z, y, g.lse, d, { out: z }); // in place
  close(await host(z), want, tol, `${dtype} [${n}, ${v}] dlogits in place`);
}

for (const be of await testBackends()) {
  if (!(be instanceof WebGpuBackend)) continue;

  describe(`webgpu device limits (${be.info().device})`, () => {
    test('a logits tensor larger than one storage binding (f32 [136, 262144] = 136 MiB): gather and backward by row chunks', async () =>
      withSeed(async (rng) => {
        const n = 136;
        const v = 262144;
        assert.ok(n * v * 4 > be.limits.maxStorageBufferBindingSize, 'the tensor must not fit one binding');
        await checkLoss(be, rng, n, v, 'f32', 3);
      }));

    test('more than 65535 workgroups in a dispatch (2-D grids): 70000 rows of gather, RMSNorm, argmax, sequences', async () =>
      withSeed(async (rng) => {
        const n = 70000;
        await checkLoss(be, rng, n, 6, 'f32', 2);
        const [x, xc] = both(be, 'f32', randn(rng, n * 8), [n, 8]);
        const [w, wc] = both(be, 'f32', randn(rng, 8), [8]);
        close(await host(ops.rmsnorm(x, w, 1e-5).y), await host(ops.rmsnorm(xc, wc, 1e-5).y), 1e-5, 'rmsnorm');
        const zero = new Int32Array(n * 4).map(() => rng.int(1, 1000));
        const [st, stc] = both(be, 'i32', zero, [n, 4]);
        const [act, actc] = both(be, 'i32', new Int32Array(n).fill(1), [n]);
        const greedy = { temperature: 0, topK: 0, topP: 1 };
        assert.deepEqual(await ops.read(ops.sampleTokens(x, st, act, greedy)), await ops.read(ops.sampleTokens(xc, stc, actc, greedy)));
        const seg = Int32Array.from({ length: n }, (_, i) => i);
        const [lp, lpc] = both(be, 'f32', randn(rng, n), [n]);
        const [sg, sgc] = both(be, 'i32', seg, [n]);
        assert.deepEqual(await host(ops.sequenceLogprob(lp, sg, n)), await host(ops.sequenceLogprob(lpc, sgc, n)));
      }));

    test('beyond the device: a tensor over maxBufferSize and a weight over one binding are clear errors', () => {
      assert.throws(() => ops.empty(be, 'f32', [Math.floor(be.limits.maxBufferSize / 4) + 1024]), /larger than the device's maxBufferSize/);
      const big = ops.empty(be, 'f32', [Math.floor(be.limits.maxStorageBufferBindingSize / 4 / 64) + 64, 64]);
      const a = ops.empty(be, 'f32', [2, 64]);
      assert.throws(() => ops.matmul(a, big, { transB: true }), /more than one storage binding may hold/);
      big.free();
    });
  });

  describe('webgpu chunked paths under a forced 2 MiB binding size', async () => {
    const small = await WebGpuBackend.create({ poison: true, maxBindingBytes: 2 ** 21 });
    test('gather / backward in row chunks (f32 with split rows, bf16 with an odd vocabulary)', async () =>
      withSeed(async (rng) => {
        await checkLoss(small, rng, 37, 20000, 'f32', 3);
        await checkLoss(small, rng, 600, 2001, 'bf16', 3);
      }));

    test('matmul, elementwise ops, casts, fills, sums of squares and an optimizer step across chunks', async () =>
      withSeed(async (rng) => {
        const [a, ac] = both(small, 'f32', randn(rng, 700 * 48), [700, 48]);
        const [b, bc] = both(small, 'bf16', f32ArrayToBf16(randn(rng, 1000 * 48)), [1000, 48]);
        close(await host(ops.matmul(a, b, { transB: true })), await host(ops.matmul(ac, bc, { transB: true })), 1e-5, 'matmul [700, 1000]');
        const n = 1_100_001;
        const [x, xc] = both(small, 'f32', randn(rng, n), [n]);
        const [y, yc] = both(small, 'f32', randn(rng, n), [n]);
        close(await host(ops.add(x, y)), await host(ops.add(xc, yc)), 1e-7, 'add');
        close(await host(ops.swiglu(x, y)), await host(ops.swiglu(xc, yc)), 1e-5, 'swiglu');
        const h = ops.cast(x, 'bf16');
        assert.deepEqual(await ops.read(h), await ops.read(ops.cast(xc, 'bf16')));
        close(await host(ops.cast(h, 'f32')), await host(ops.cast(ops.cast(xc, 'bf16'), 'f32')), 0, 'bf16 -> f32');
        const f = ops.empty(small, 'bf16', [n]);
        ops.fill(f, 1.5);
        assert.ok((await host(f)).every((e) => e === 1.5));
        const ss = ops.empty(small, 'f32', [1]);
        const ssc = ops.empty(cpu, 'f32', [1]);
        ops.sumSquares(x, ss, 0);
        ops.sumSquares(xc, ssc, 0);
        close(await host(ss), await host(ssc), 1e-5, 'sumSquares');
        const [master, masterc] = both(small, 'f32', randn(rng, n), [n]);
        const p = ops.cast(master, 'bf16');
        const pc = ops.cast(masterc, 'bf16');
        const st = ops.zeros(small, 'f32', [n]);
        const stc = ops.zeros(cpu, 'f32', [n]);
        const hyper = { lr: 1e-2, alpha: 0.99, eps: 1e-8, weightDecay: 0.1 };
        ops.rmspropStep({ param: p, master, grad: y, squareAvg: st }, hyper);
        ops.rmspropStep({ param: pc, master: masterc, grad: yc, squareAvg: stc }, hyper);
        close(await host(master), await host(masterc), 1e-6, 'rmsprop master');
        close(await host(p), await host(pc), 2 ** -8, 'rmsprop bf16 param');
      }));
  });

  describe('webgpu without optional features (the fallback where subgroups / shader-f16 are missing)', async () => {
    const plain = await WebGpuBackend.create({ poison: true, noOptionalFeatures: true });
    test('the fallback reports no features and gives the same log-probs as the CPU', async () =>
      withSeed(async (rng) => {
        assert.deepEqual(plain.features, []);
        await checkLoss(plain, rng, 23, 3001, 'f32', 3);
        await checkLoss(plain, rng, 9, 40000, 'bf16', 3);
      }));
  });

  describe('webgpu GEMM variants', () => {
    test('every transpose pair, f32 and bf16 B, K a multiple of 4 (vec4 loads) or not, edge tiles, alpha and accumulate', async () =>
      withSeed(async (rng) => {
        for (const ta of [false, true])
          for (const tb of [false, true])
            for (const bdt of ['f32', 'bf16'] as const)
              for (const k of [48, 50]) {
                const m = rng.int(1, 130);
                const n = rng.int(1, 130);
                const [a, ac] = both(be, 'f32', randn(rng, m * k), ta ? [k, m] : [m, k]);
                const bf = randn(rng, n * k);
                const [b, bc] =
                  bdt === 'f32' ? both(be, 'f32', bf, tb ? [n, k] : [k, n]) : both(be, 'bf16', f32ArrayToBf16(bf), tb ? [n, k] : [k, n]);
                const [o, oc] = both(be, 'f32', randn(rng, m * n), [m, n]);
                const alpha = rng.normal();
                ops.matmul(a, b, { transA: ta, transB: tb, alpha, out: o, accumulate: true });
                ops.matmul(ac, bc, { transA: ta, transB: tb, alpha, out: oc, accumulate: true });
                close(await host(o), await host(oc), 1e-5, `matmul transA ${ta} transB ${tb} ${bdt} B, [${m}, ${k}] x [${k}, ${n}]`);
              }
      }));
  });

  describe('choosing webgpu', () => {
    test('--device auto passes over a fallback/CPU adapter (lavapipe): the CPU backend is faster', async () => {
      const { backend, passed } = await createBackend('auto');
      if (be.adapterInfo.isFallbackAdapter) {
        assert.notEqual(backend.name, 'webgpu');
        assert.match(passed.find((s) => s.name === 'webgpu')!.reason!, /auto passes over it/);
      }
      const explicit = await createBackend('webgpu');
      assert.equal(explicit.backend.name, 'webgpu');
      assert.match(explicit.status.info!.details!.join('; '), /fallback adapter: (yes|no); max storage binding \d+ MiB/);
    });
  });

  describe('webgpu lifetime', () => {
    test('creating and destroying backends repeatedly frees their buffers and does not grow memory', async () => {
      const cycle = async (): Promise<void> => {
        const b = await WebGpuBackend.create();
        const ts = Array.from({ length: 8 }, () => ops.upload(b, { dtype: 'f32', data: new Float32Array(1 << 18).fill(1) }, [1 << 18]));
        const s = ops.add(ts[0], ts[1]);
        assert.equal((await ops.read(s))[5], 2);
        for (const t of [...ts, s]) t.free();
        b.releaseCached();
        assert.equal(b.liveBuffers, 0, 'every buffer the backend made is released');
        b.destroy();
      };
      for (let i = 0; i < 4; i++) await cycle();
      global.gc?.();
      const before = process.memoryUsage().rss;
      for (let i = 0; i < 16; i++) await cycle();
      global.gc?.();
      const grown = (process.memoryUsage().rss - before) / 2 ** 20;
      // 16 cycles of 9 MiB each: a leak of the buffers would add ~144 MiB
      assert.ok(grown < 64, `RSS grew by ${grown.toFixed(0)} MiB over 16 create/destroy cycles`);
    });
  });
}
