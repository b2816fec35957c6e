// The CUDA emulator (native/cuda/emu) and the CUDA kernels' boundary cases. The emulator must catch
// each fault a kernel can make (an emulator that let a fault through would let the real kernels'
// faults through too); the kernels, run by it, must equal the CPU backend on shapes at every
// boundary and give bit-identical results run to run. Needs the cmake-js build (build-cmake), which
// builds spinlm_cuda_emu.node where Boost.Context is installed; CI builds it.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { describe, test } from 'node:test';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import { emulatorPath } from '../src/backend/cuda/native.js';
import type { Backend } from '../src/backend/backend.js';
import * as ops from '../src/ops/index.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { cpuReference } from './helpers/backends.js';
import { randn, withSeed } from './helpers/random.js';

const emu = new CudaBackend({ emulated: true, poison: true });
const cpu = cpuReference();

function close(name: string, got: ArrayLike<number>, want: ArrayLike<number>, tol = 2e-5) {
  assert.equal(got.length, want.length, `${name}: length`);
  for (let i = 0; i < got.length; ++i) {
    const g = got[i], w = want[i];
    if (Number.isNaN(w) || !Number.isFinite(w)) {
      assert.ok(Object.is(g, w) || (Number.isNaN(g) && Number.isNaN(w)), `${name}[${i}]: ${g} vs ${w}`);
      continue;
    }
    assert.ok(Math.abs(g - w) <= tol * (1 + Math.abs(w)), `${name}[${i}]: got ${g}, want ${w}`);
  }
}

const f32 = (be: Backend, data: Float32Array, shape: number[]) => ops.upload(be, { dtype: 'f32', data }, shape);
const i32 = (be: Backend, data: Int32Array, shape: number[]) => ops.upload(be, { dtype: 'i32', data }, shape);

describe('the emulator catches kernel faults', () => {
  const selfTest = (createRequire(import.meta.url)(emulatorPath()) as { emuSelfTest(name: string): string }).emuSelfTest;
  const faults: [string, RegExp][] = [
    ['globalOverrun', /global_overrun block \(3,0,0\) thread \(4,0,0\): out-of-bounds global access: 4 bytes at offset 400 of an allocation of 400 bytes/],
    ['sharedOverrun', /shared_overrun .*thread \(32,0,0\): out-of-bounds shared access: index 32 of a shared array of 32/],
    ['dynamicSharedOverrun', /dynamic_shared_overrun .*thread \(63,0,0\): out-of-bounds dynamic shared access/],
    ['barrierAfterExit', /barrier_after_exit: barrier divergence: thread 0 waits at __syncthreads\(\) .* but thread 16 has exited/],
    ['barrierMismatch', /barrier_mismatch: barrier divergence: threads of one block wait at different __syncthreads\(\)/],
    ['shuffleDivergence', /shuffle_divergence: warp divergence: lane 15 waits at the shuffle\/vote .* while lane 16 has exited/],
  ];
  for (const [name, re] of faults) test(name, () => assert.match(selfTest(name), re));
  test('a correct kernel (shuffles, ballot, shared memory, barriers) runs and computes', () => {
    // blocks of 32 over 0..95: sums 496, 1520, 2544; ballot of odd lanes 0xaaaaaaaa
    assert.equal(selfTest('blockSum'), `sums ${496} ${496 + 32 * 32} ${496 + 64 * 32} ballot ${0xaaaaaaaa}`);
  });
});

describe('CUDA kernels at their boundaries (emulated) equal the CPU backend', () => {
  test('logprobGather and its in-place backward: V around the block and vector widths, misaligned bf16 rows, an ignored row', () =>
    withSeed(async (rng) => {
      for (const v of [1, 7, 255, 256, 257, 1031]) {
        for (const dtype of ['f32', 'bf16'] as const) {
          const n = 5;
          const z = randn(rng, n * v, 3);
          const t = Int32Array.from({ length: n }, (_, i) => (i === 2 ? -100 : Math.floor(rng.next() * v)));
          const dl = randn(rng, n);
          const run = async (be: Backend) => {
            const logits = ops.cast(f32(be, z, [n, v]), dtype);
            const targets = i32(be, t, [n]);
            const { logp, lse } = ops.logprobGather(logits, targets);
            ops.logprobGatherBackward(logits, targets, lse, f32(be, dl, [n]), logits);
            return { logp: await ops.read(logp), lse: await ops.read(lse), grad: await ops.read(ops.cast(logits, 'f32')) };
          };
          const [a, b] = [await run(emu), await run(cpu)];
          close(`logp v=${v} ${dtype}`, a.logp, b.logp);
          close(`lse v=${v} ${dtype}`, a.lse, b.lse);
          close(`grad v=${v} ${dtype}`, a.grad, b.grad, dtype === 'bf16' ? 1e-2 : 2e-5);
        }
      }
    }));

  test('all rows ignored and N = 0', async () => {
    const logits = f32(emu, Float32Array.from({ length: 12 }, (_, i) => i - 5), [3, 4]);
    const { logp, lse } = ops.logprobGather(logits, i32(emu, new Int32Array(3).fill(-100), [3]));
    assert.deepEqual([...(await ops.read(logp))], [0, 0, 0]);
    assert.deepEqual([...(await ops.read(lse))], [0, 0, 0]);
    const empty = ops.logprobGather(f32(emu, new Float32Array(0), [0, 9]), i32(emu, new Int32Array(0), [0]));
    assert.equal((await ops.read(empty.logp)).length, 0);
  });

  test('attention forward/backward: GQA ratios 1/2/4, L not a multiple of the tiles, padded keys; decode with lengths 0..Lmax', () =>
    withSeed(async (rng) => {
      for (const [nh, nkv] of [[2, 2], [4, 2], [4, 1]]) {
        for (const l of [1, 17, 40]) {
          const b = 2, hd = 8;
          const q = randn(rng, b * l * nh * hd), k = randn(rng, b * l * nkv * hd), v = randn(rng, b * l * nkv * hd);
          const dout = randn(rng, b * l * nh * hd);
          // sequence 1 is left-padded: its first 3 keys are masked
          const mask = Int32Array.from({ length: b * l }, (_, i) => (i >= l && i - l < 3 ? 0 : 1));
          const run = async (be: Backend) => {
            const [tq, tk, tv] = [f32(be, q, [b, l, nh, hd]), f32(be, k, [b, l, nkv, hd]), f32(be, v, [b, l, nkv, hd])];
            const tm = i32(be, mask, [b, l]);
            const { out, lse } = ops.attention(tq, tk, tv, tm);
            const g = ops.attentionBackward(tq, tk, tv, tm, out, lse, f32(be, dout, [b, l, nh, hd]));
            return [await ops.read(out), await ops.read(g.dq), await ops.read(g.dk), await ops.read(g.dv)];
          };
          const [a, c] = [await run(emu), await run(cpu)];
          for (const [i, name] of ['out', 'dq', 'dk', 'dv'].entries()) close(`${name} nh=${nh} nkv=${nkv} l=${l}`, a[i], c[i], 1e-4);
        }
        const b = 3, lmax = 37, hd = 16;
        const q = randn(rng, b * nh * hd), kc = randn(rng, b * nkv * lmax * hd), vc = randn(rng, b * nkv * lmax * hd);
        const lengths = Int32Array.from([0, 1, lmax]);
        const mask = Int32Array.from({ length: b * lmax }, (_, i) => (i % lmax === 2 ? 0 : 1));
        const run = async (be: Backend) =>
          ops.read(ops.attentionDecode(f32(be, q, [b, nh, hd]), f32(be, kc, [b, nkv, lmax, hd]), f32(be, vc, [b, nkv, lmax, hd]),
            i32(be, lengths, [b]), i32(be, mask, [b, lmax])));
        close(`decode nh=${nh} nkv=${nkv}`, await run(emu), await run(cpu), 1e-4);
      }
    }));

  test('deterministic: the same inputs give bit-identical loss, attention and sum-of-squares results', () =>
    withSeed(async (rng) => {
      const n = 6, v = 300, l = 33, nh = 4, nkv = 2, hd = 8;
      const z = randn(rng, n * v, 2), t = Int32Array.from({ length: n }, () => Math.floor(rng.next() * v));
      const q = randn(rng, l * nh * hd), k = randn(rng, l * nkv * hd), dout = randn(rng, l * nh * hd);
      const once = async () => {
        const { logp, lse } = ops.logprobGather(f32(emu, z, [n, v]), i32(emu, t, [n]));
        const tq = f32(emu, q, [1, l, nh, hd]), tk = f32(emu, k, [1, l, nkv, hd]);
        const tm = i32(emu, new Int32Array(l).fill(1), [1, l]);
        const a = ops.attention(tq, tk, tk, tm);
        const g = ops.attentionBackward(tq, tk, tk, tm, a.out, a.lse, f32(emu, dout, [1, l, nh, hd]));
        const ss = ops.zeros(emu, 'f32', [1]);
        ops.sumSquares(f32(emu, z, [n * v]), ss, 0);
        const parts: Tensor[] = [logp, lse, a.out, g.dq, g.dk, g.dv, ss];
        return Promise.all(parts.map((p) => ops.read(p as Tensor<'f32'>)));
      };
      const [a, b] = [await once(), await once()];
      for (let i = 0; i < a.length; ++i) assert.deepEqual(Buffer.from(a[i].buffer), Buffer.from(b[i].buffer), `output ${i} differs between runs`);
    }));

  test('device memory: free() returns the buffer; a request past the device is one clear error naming the op', () => {
    const t = ops.empty(emu, 'f32', [1000]);
    emu.free(t);
    assert.throws(() => ops.empty(emu, 'f32', [2 ** 40]), (e: Error) => /empty: out of device memory: a request of 4398046511104 bytes failed with \d+ bytes free of \d+/.test(e.message));
  });
});
