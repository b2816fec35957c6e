// The CUDA emulator (native/cuda/emu) and the CUDA kernels' boundary cases. The emulator must catch
// each fault a kernel can make (an emulator that let a fault through would let the real kernels'
// faults through too); the kernels, run by it, must equal the CPU backend on shapes at every
// boundary and give bit-identical results run to run. Needs the cmake-js build (build-cmake), which
// builds spinlm_cuda_emu.node where Boost.Context is installed; CI builds it.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import { emulatorPath } from '../src/backend/cuda/native.js';
import type { Backend } from '../src/backend/backend.js';
import * as ops from '../src/ops/index.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { cpuReference } from './helpers/backends.js';
import { randn, withSeed } from './helpers/random.js';

const emu = new CudaBackend({ emulated: true, poison: true });
const cpu = cpuReference();

function close(name: string, got: ArrayLike<number>, want: ArrayLike<number>, tol = 2e-5) {
  assert.equal(got.length, want.length, `${name}: length`);
  for (let i = 0; i < got.length; ++i) {
    const g = got[i],
      w = want[i];
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
    // threads run in a seeded random order, so the first thread to fault is any of the faulting ones
    [
      'globalOverrun',
      /global_overrun block \(3,0,0\) thread \((\d+),0,0\): out-of-bounds global access: 4 bytes at offset (4\d\d) of an allocation of 400 bytes/,
    ],
    ['sharedOverrun', /shared_overrun .*thread \((3[2-9]|[4-6]\d),0,0\): out-of-bounds shared access: index \1 of a shared array of 32/],
    ['dynamicSharedOverrun', /dynamic_shared_overrun .*thread \(63,0,0\): out-of-bounds dynamic shared access/],
    ['barrierAfterExit', /barrier_after_exit: barrier divergence: thread 0 waits at __syncthreads\(\) .* but thread 16 has exited/],
    ['barrierMismatch', /barrier_mismatch: barrier divergence: threads of one block wait at different __syncthreads\(\)/],
    ['shuffleDivergence', /shuffle_divergence: warp divergence: lane 15 waits at the shuffle\/vote .* while lane 16 has exited/],
  ];
  for (const [name, re] of faults) test(name, () => assert.match(selfTest(name), re));

  // Each check below is proven by a kernel with the bug planted (native/cuda/emu/selftest_emu.cc).
  test('shared-memory races: a read, or a write, of a byte another thread wrote or read since the last barrier', () => {
    const race = (kernel: string, kind: string) =>
      new RegExp(
        `${kernel} block \\(0,0,0\\) thread \\(\\d+,0,0\\): shared memory race: (read|write) of ${kind} byte \\d+ (written|read) by thread \\d+ in the same barrier interval \\(no __syncthreads\\(\\) between\\)`,
      );
    // writes then reads a neighbour's slot with no barrier between
    assert.match(selfTest('sharedRace'), race('shared_race_raw', 'shared'));
    // reads a neighbour's slot, then overwrites its own with no barrier between (the missing trailing barrier)
    assert.match(selfTest('sharedRaceWriteAfterRead'), race('shared_race_war', 'shared'));
    assert.match(selfTest('dynamicSharedRace'), race('dyn_shared_race', 'dynamic shared'));
    // several threads storing the same 1 to one flag (sequence_logprob's old pattern): a write-write race
    assert.match(selfTest('sharedFlagRace'), race('shared_flag_race', 'shared'));
    // its fix: __syncthreads_or (and _and, _count) reduce over the block at the barrier
    assert.equal(selfTest('barrierReduce'), '22110 110');
    // no false positive: lanes of one warp ordered by __syncwarp(), warps by __syncthreads()
    assert.equal(selfTest('warpOrderedShared'), '64 64 64');
  });

  test('static shared memory is fresh garbage (NaN) in every block: a read before any write shows', () => {
    assert.equal(selfTest('sharedReadBeforeWrite'), 'block 0: 1 1, block 1: nan nan');
  });

  test("a block past the kernel's __launch_bounds__ or past 1024 threads is a launch error naming the kernel", () => {
    assert.equal(
      selfTest('launchBounds'),
      '64 ok; CUDA error in kernel bounded_kernel: too many resources requested for launch (bounded_kernel: a block of 96 threads ' +
        "exceeds the kernel's __launch_bounds__(64)); CUDA error in kernel write_n: invalid configuration argument (write_n: invalid " +
        'block size 2048 (1 to 1024 threads)); declared 64, none 0',
    );
    // a launch error is not sticky: cleared once reported, the next launch runs
    assert.equal(selfTest('launchErrorIsNotSticky'), 'CUDA error in kernel bounded_kernel; then 0; 1');
  });

  test('more than 48 KB of dynamic shared memory needs cudaFuncSetAttribute(MaxDynamicSharedMemorySize), and no more than it set', () => {
    assert.equal(
      selfTest('dynamicSharedOptIn'),
      'CUDA error in kernel big_dyn_shared: invalid argument (big_dyn_shared: 65536 bytes of dynamic shared memory exceed 48 KB ' +
        'without cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize)); ran with it; CUDA error in kernel big_dyn_shared: ' +
        'invalid argument (big_dyn_shared: 65540 bytes of dynamic shared memory exceed the 65536 bytes set by cudaFuncSetAttribute)',
    );
  });

  test('a kernel fault is sticky: cudaGetLastError keeps returning it and every later copy and launch fails with it', () => {
    const r = selfTest('stickyError');
    assert.match(
      r,
      /^CUDA emulator; last 700 700 700; copy: CUDA error in read: an illegal memory access was encountered \(global_overrun .*\); launch: CUDA error in kernel bounded_kernel: an illegal memory access was encountered \(global_overrun .*\); after reset: 1$/,
    );
  });

  test('SPINLM_CUDA_SYNC=1 synchronizes after each launch and names the kernel', () => {
    assert.match(selfTest('syncNamesKernel'), /^CUDA error in kernel bounded_kernel \(SPINLM_CUDA_SYNC=1\): too many resources/);
  });

  test('the caching allocator runs under the emulator: bounds are the request, not the size class; a cached block is freed memory', () => {
    // 1000 bytes in a 1024-byte size class: element 250 is past the tensor
    assert.match(
      selfTest('allocatorBounds'),
      /^250 ok; CUDA emulator: write_n block \(0,0,0\) thread \(\d+,0,0\): out-of-bounds global access: 4 bytes at offset 1000 of an allocation of 1000 bytes; after free: a kernel argument points into freed device memory \(use after free\); reused yes, 250 ok$/,
    );
  });

  test('out of memory: the cache is released and the request retried; a final failure names request, free and total and leaves no error behind', () => {
    assert.match(
      selfTest('allocRetry'),
      /^cached 2097152; second ok, cache now 0, last error 0; third: out of device memory: a request of 5242880 bytes failed with \d+ bytes free of \d+ \(3145728 bytes held by spinlm tensors\), last error 0$/,
    );
    // scratch grows by allocating first: when that fails, the old buffer stays valid and usable
    assert.match(
      selfTest('scratchOom'),
      /^testOp: out of device memory: a scratch request of 4194304 bytes failed with \d+ bytes free of \d+ \(\d+ bytes held by spinlm tensors\); last error 0; same buffer yes; usable$/,
    );
  });

  test('pinned staging buffers are reused across reads', () => {
    // five reads one after another share one buffer; two in flight at once need two
    assert.equal(selfTest('pinnedReuse'), 'cudaMallocHost calls 2, cached 8192');
    assert.equal(selfTest('versions'), 'driver 13000 runtime 13000 built 13000 needs 13000 min 580.65.06 ok');
  });

  test("the emulated device has an H100's 132 multiprocessors (SPINLM_CUDA_EMU_SMS), so launch plans match a GPU's", () => {
    assert.equal(selfTest('smCount'), '132');
    assert.deepEqual(hooks.gatherPlan(8, 128256), hooks.gatherPlan(8, 128256, 132));
    const run = (env: Record<string, string>, name: string) =>
      execFileSync(
        process.execPath,
        ['-e', `process.stdout.write(require(${JSON.stringify(emulatorPath())}).emuSelfTest(${JSON.stringify(name)}))`],
        {
          env: { ...process.env, ...env },
        },
      ).toString();
    assert.equal(run({ SPINLM_CUDA_EMU_SMS: '16' }, 'smCount'), '16');
  });

  test('threads run in a seeded random order between barriers (SPINLM_CUDA_EMU_SEED): a global race gives a seed-dependent, reproducible result', () => {
    // a fresh process per run: the order also depends on the launches before (the launch counter)
    const run = (seed: string | undefined) => {
      const env = { ...process.env };
      if (seed === undefined) delete env.SPINLM_CUDA_EMU_SEED;
      else env.SPINLM_CUDA_EMU_SEED = seed;
      return execFileSync(
        process.execPath,
        ['-e', `process.stdout.write(require(${JSON.stringify(emulatorPath())}).emuSelfTest('lastWriter'))`],
        {
          env,
        },
      ).toString();
    };
    // seed 0: thread order, so the last of the 64 writers wins
    assert.equal(run('0'), '63');
    const seeded = ['1', '2', '3'].map(run);
    assert.deepEqual(['1', '2', '3'].map(run), seeded, 'the same seed gives the same order');
    assert.ok(new Set([...seeded, '63']).size > 1, `the seeds all gave thread order: ${seeded}`);
    assert.equal(run(undefined), seeded[0], 'the default seed is 1');
  });
  test('tensor-core fragments (WMMA): warp-collective, checked, with layouts drawn from the seed', () => {
    const run = (seed: string, name: string) =>
      execFileSync(
        process.execPath,
        ['-e', `process.stdout.write(require(${JSON.stringify(emulatorPath())}).emuSelfTest(${JSON.stringify(name)}))`],
        {
          env: { ...process.env, SPINLM_CUDA_EMU_SEED: seed },
        },
      ).toString();
    // a correct tiled bf16 GEMM (small integers: exact) under any layout, no race through __syncwarp()
    for (const seed of ['0', '1', '5']) assert.equal(run(seed, 'wmmaGemm'), 'exact', `seed ${seed}`);
    // a kernel that assumes which lane holds which accumulator element works for one layout only
    assert.equal(run('0', 'wmmaLayoutAssumed'), 'exact');
    assert.match(run('1', 'wmmaLayoutAssumed'), /^\d+ of 256 wrong$/);
    assert.match(
      selfTest('wmmaHalfWarp'),
      /wmma_half_warp: warp divergence: lane \d+ waits at .*selftest_wmma_emu.cc:\d+ while lane \d+ has exited/,
    );
    assert.match(
      selfTest('wmmaMisaligned'),
      /wmma_misaligned .*: load_matrix_sync: the matrix pointer is not 256-bit aligned \(offset 16 bytes\)/,
    );
    assert.match(selfTest('wmmaLeadingDim'), /wmma_misaligned .*: load_matrix_sync: leading dimension 12 is not a multiple of 16 bytes/);
    // a lane reading an element another lane stored, with no __syncwarp() between
    assert.match(
      selfTest('wmmaStoreRace'),
      /wmma_store_race .*: shared memory race: read of dynamic shared byte \d+ written by thread \d+/,
    );
  });

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
            ops.logprobGatherBackward(logits, targets, lse, f32(be, dl, [n]), { out: logits });
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
    const logits = f32(
      emu,
      Float32Array.from({ length: 12 }, (_, i) => i - 5),
      [3, 4],
    );
    const { logp, lse } = ops.logprobGather(logits, i32(emu, new Int32Array(3).fill(-100), [3]));
    assert.deepEqual([...(await ops.read(logp))], [0, 0, 0]);
    assert.deepEqual([...(await ops.read(lse))], [0, 0, 0]);
    const empty = ops.logprobGather(f32(emu, new Float32Array(0), [0, 9]), i32(emu, new Int32Array(0), [0]));
    assert.equal((await ops.read(empty.logp)).length, 0);
  });

  test('attention forward/backward: GQA ratios 1/2/4, L not a multiple of the tiles, padded keys; decode with lengths 0..Lmax', () =>
    withSeed(async (rng) => {
      for (const [nh, nkv] of [
        [2, 2],
        [4, 2],
        [4, 1],
      ]) {
        for (const l of [1, 17, 40]) {
          const b = 2,
            hd = 8;
          const q = randn(rng, b * l * nh * hd),
            k = randn(rng, b * l * nkv * hd),
            v = randn(rng, b * l * nkv * hd);
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
        const b = 3,
          lmax = 37,
          hd = 16;
        const q = randn(rng, b * nh * hd),
          kc = randn(rng, b * nkv * lmax * hd),
          vc = randn(rng, b * nkv * lmax * hd);
        const lengths = Int32Array.from([0, 1, lmax]);
        const mask = Int32Array.from({ length: b * lmax }, (_, i) => (i % lmax === 2 ? 0 : 1));
        const run = async (be: Backend) =>
          ops.read(
            ops.attentionDecode(
              f32(be, q, [b, nh, hd]),
              f32(be, kc, [b, nkv, lmax, hd]),
              f32(be, vc, [b, nkv, lmax, hd]),
              i32(be, lengths, [b]),
              i32(be, mask, [b, lmax]),
            ),
          );
        close(`decode nh=${nh} nkv=${nkv}`, await run(emu), await run(cpu), 1e-4);
      }
    }));

  test('deterministic: the same inputs give bit-identical loss, attention and sum-of-squares results', () =>
    withSeed(async (rng) => {
      const n = 6,
        v = 300,
        l = 33,
        nh = 4,
        nkv = 2,
        hd = 8;
      const z = randn(rng, n * v, 2),
        t = Int32Array.from({ length: n }, () => Math.floor(rng.next() * v));
      const q = randn(rng, l * nh * hd),
        k = randn(rng, l * nkv * hd),
        dout = randn(rng, l * nh * hd);
      const once = async () => {
        const { logp, lse } = ops.logprobGather(f32(emu, z, [n, v]), i32(emu, t, [n]));
        const tq = f32(emu, q, [1, l, nh, hd]),
          tk = f32(emu, k, [1, l, nkv, hd]);
        const tm = i32(emu, new Int32Array(l).fill(1), [1, l]);
        const a = ops.attention(tq, tk, tk, tm);
        const g = ops.attentionBackward(tq, tk, tk, tm, a.out, a.lse, f32(emu, dout, [1, l, nh, hd]));
        const ss = ops.zeros(emu, 'f32', [1]);
        ops.sumSquares(f32(emu, z, [n * v]), ss, 0);
        const parts: Tensor[] = [logp, lse, a.out, g.dq, g.dk, g.dv, ss];
        return Promise.all(parts.map((p) => ops.read(p as Tensor<'f32'>)));
      };
      const [a, b] = [await once(), await once()];
      for (let i = 0; i < a.length; ++i)
        assert.deepEqual(Buffer.from(a[i].buffer), Buffer.from(b[i].buffer), `output ${i} differs between runs`);
    }));

  test('device memory: free() returns the buffer; a request past the device is one clear error naming the op', () => {
    const t = ops.empty(emu, 'f32', [1000]);
    emu.free(t);
    assert.throws(
      () => ops.empty(emu, 'f32', [2 ** 40]),
      (e: Error) => /empty: out of device memory: a request of 4398046511104 bytes failed with \d+ bytes free of \d+/.test(e.message),
    );
  });
});

// Test hooks of spinlm_cuda_emu.node (native/cuda/emu/selftest_emu.cc).
interface EmuHooks {
  cublasSearch(env: Record<string, string>): string[];
  cublasLoad(paths: string[]): { path?: string; error?: string };
  cublasLtLoad(cublasPaths: string[]): { path?: string; error?: string };
  gemmPlanReference(
    ta: boolean,
    tb: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float32Array,
    lda: number,
    b: Float32Array,
    ldb: number,
    beta: number,
    c: Float32Array,
    ldc: number,
  ): void;
  /** The same through blas::lt_plan and cuBLASLt's semantics in float64; false when the layouts do not fit. */
  ltPlanReference(...args: Parameters<EmuHooks['gemmPlanReference']>): boolean;
  gatherPlan(n: number, v: number, sms?: number): { splits: number; chunk: number };
}
const hooks = createRequire(import.meta.url)(emulatorPath()) as EmuHooks;

describe('logprobGather for few rows with a huge vocabulary: the vocabulary split across blocks', () => {
  test('the launch plan splits few long rows and covers each row exactly', () => {
    for (const [n, v, sms] of [
      [1, 262144, 132],
      [8, 128256, 132],
      [3, 50000, 1],
      [40, 128256, 16],
      [2, 131075, 1],
    ]) {
      const p = hooks.gatherPlan(n, v, sms);
      assert.ok(p.splits > 1, `n=${n} v=${v} sms=${sms}: ${JSON.stringify(p)} is not split`);
      assert.equal(p.chunk % 64, 0, `chunk ${p.chunk} is not a multiple of 64`);
      assert.ok(p.chunk * p.splits >= v && p.chunk * (p.splits - 1) < v, `n=${n} v=${v}: ${JSON.stringify(p)} does not tile the row`);
    }
    // enough rows to fill the device, or a short row: one block per row
    for (const [n, v, sms] of [
      [8192, 128256, 132],
      [528, 128256, 132],
      [2, 4096, 132],
      [4, 262144, 1],
    ]) {
      assert.deepEqual(hooks.gatherPlan(n, v, sms), { splits: 1, chunk: v }, `n=${n} v=${v} sms=${sms}`);
    }
  });

  test('split rows (V up to 256k, N = 1..3, f32 and bf16, an ignored row, odd V) equal the CPU backend, forward and in-place backward', () =>
    withSeed(async (rng) => {
      for (const [n, v] of [
        [1, 262144],
        [2, 131075],
        [3, 8199],
      ]) {
        assert.ok(hooks.gatherPlan(n, v).splits > 1, `the emulated device does not split n=${n} v=${v}`);
        for (const dtype of ['f32', 'bf16'] as const) {
          const z = randn(rng, n * v, 4);
          // a large logit far from the target in one row, so the row's maximum lies in another block
          z[Math.floor(rng.next() * v)] = 30;
          const t = Int32Array.from({ length: n }, (_, i) => (n > 1 && i === 1 ? -100 : Math.floor(rng.next() * v)));
          const dl = randn(rng, n);
          const run = async (be: Backend) => {
            const logits = ops.cast(f32(be, z, [n, v]), dtype);
            const targets = i32(be, t, [n]);
            const { logp, lse } = ops.logprobGather(logits, targets);
            ops.logprobGatherBackward(logits, targets, lse, f32(be, dl, [n]), { out: logits });
            return { logp: await ops.read(logp), lse: await ops.read(lse), grad: await ops.read(ops.cast(logits, 'f32')) };
          };
          const [a, b] = [await run(emu), await run(cpu)];
          close(`logp n=${n} v=${v} ${dtype}`, a.logp, b.logp, 1e-5);
          close(`lse n=${n} v=${v} ${dtype}`, a.lse, b.lse, 1e-5);
          close(`grad n=${n} v=${v} ${dtype}`, a.grad, b.grad, dtype === 'bf16' ? 1e-2 : 2e-5);
        }
      }
    }));

  test("a bad target in a split row poisons that row only and raises the op's error", () =>
    withSeed(async (rng) => {
      const n = 2,
        v = 20000;
      assert.ok(hooks.gatherPlan(n, v).splits > 1);
      const logits = f32(emu, randn(rng, n * v), [n, v]);
      const { logp, lse } = ops.logprobGather(logits, i32(emu, Int32Array.from([Math.floor(rng.next() * v), v]), [n]));
      const [p, l] = [await emu.read(logp), await emu.read(lse)];
      assert.ok(Number.isFinite(p[0]) && Number.isFinite(l[0]) && p[0] < 0, `row 0: ${p[0]}, ${l[0]}`);
      assert.ok(Number.isNaN(p[1]) && Number.isNaN(l[1]), `row 1: ${p[1]}, ${l[1]}`);
      assert.notEqual(await emu.takeErrors(), 0);
      const again = ops.logprobGather(logits, i32(emu, Int32Array.from([0, -1]), [n]));
      await assert.rejects(ops.read(again.logp), (e: Error) => e instanceof RangeError && /logprobGather/.test(e.message));
    }));
});

describe('cuBLAS through dlopen: the search, the loading and the argument mapping (checked on the CPU)', () => {
  test('the search order: SPINLM_CUBLAS alone when set; else the sonames, CUDA folders, then NVIDIA wheels in each site-packages', () => {
    assert.deepEqual(hooks.cublasSearch({ SPINLM_CUBLAS: '/opt/x/libcublas.so.12', CUDA_HOME: '/opt/cuda' }), ['/opt/x/libcublas.so.12']);
    const root = mkdtempSync(join(tmpdir(), 'spinlm-cublas-'));
    try {
      const venv = join(root, 'venv'),
        site = join(venv, 'lib', 'python3.12', 'site-packages');
      mkdirSync(site, { recursive: true });
      const paths = hooks.cublasSearch({ CUDA_HOME: '/opt/cuda', VIRTUAL_ENV: venv, PYTHONPATH: `${root}/a:${root}/b` });
      assert.deepEqual(paths.slice(0, 4), [
        'libcublas.so.13',
        'libcublas.so.12',
        '/opt/cuda/lib64/libcublas.so.13',
        '/opt/cuda/lib64/libcublas.so.12',
      ]);
      const at = (p: string) => {
        const i = paths.indexOf(p);
        assert.ok(i >= 0, `${p} is not searched: ${paths.join(', ')}`);
        return i;
      };
      assert.ok(at('/usr/local/cuda/lib64/libcublas.so.12') < at(`${site}/nvidia/cu13/lib/libcublas.so.13`));
      assert.equal(at(`${site}/nvidia/cu13/lib/libcublas.so.13`) + 1, at(`${site}/nvidia/cublas/lib/libcublas.so.12`));
      assert.ok(at(`${root}/a/nvidia/cublas/lib/libcublas.so.12`) < at(`${root}/b/nvidia/cublas/lib/libcublas.so.12`));
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  test('absent, broken or foreign libraries give one clear error naming every candidate and the fix', () => {
    const root = mkdtempSync(join(tmpdir(), 'spinlm-cublas-'));
    try {
      const broken = join(root, 'libcublas.so.12');
      writeFileSync(broken, 'this is not a shared library, only text pretending to be one '.repeat(4));
      const r = hooks.cublasLoad([join(root, 'missing', 'libcublas.so.13'), 'libcublas.so.99', broken, emulatorPath()]);
      assert.equal(r.path, undefined);
      const e = r.error ?? '';
      assert.match(e, /^cuBLAS not found/);
      assert.ok(e.includes(`searched ${join(root, 'missing', 'libcublas.so.13')}, libcublas.so.99`), e);
      assert.ok(e.includes(`${broken}: `), e);
      assert.ok(e.includes(`${emulatorPath()}: not cuBLAS (no cublasCreate_v2, cublasDestroy_v2`), e);
      assert.match(e, /SPINLM_CUBLAS=.*SPINLM_CUDA_GEMM=tiled/);
      assert.ok(!e.includes('\n'), 'one line');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  test('a wheel-layout cuBLAS (with libcublasLt beside it) is found and loaded', () => {
    const root = mkdtempSync(join(tmpdir(), 'spinlm-cublas-'));
    try {
      const site = join(root, 'lib', 'python3.11', 'site-packages'),
        lib = join(site, 'nvidia', 'cublas', 'lib');
      mkdirSync(lib, { recursive: true });
      // A stand-in with cuBLAS's entry points; it needs a symbol from libcublasLt.so.12, which only
      // the loader's preload of the library beside it can provide.
      writeFileSync(join(root, 'lt.c'), 'int spinlm_lt_marker(void) { return 7; }\n');
      const names = [
        'cublasCreate_v2',
        'cublasDestroy_v2',
        'cublasSetStream_v2',
        'cublasSetMathMode',
        'cublasGetVersion_v2',
        'cublasGemmEx',
      ];
      writeFileSync(
        join(root, 'blas.c'),
        `int spinlm_lt_marker(void);\n${names.map((f) => `int ${f}(void) { return spinlm_lt_marker(); }`).join('\n')}\n`,
      );
      execFileSync('cc', ['-shared', '-fPIC', '-o', join(lib, 'libcublasLt.so.12'), join(root, 'lt.c')]);
      execFileSync('cc', ['-shared', '-fPIC', '-o', join(lib, 'libcublas.so.12'), join(root, 'blas.c')]);
      const paths = hooks.cublasSearch({ CONDA_PREFIX: root }).filter((p) => p.startsWith(root));
      assert.deepEqual(hooks.cublasLoad(paths), { path: join(lib, 'libcublas.so.12') });
      // cuBLASLt is looked for beside each cuBLAS candidate: this one lacks its entry points (then
      // computeDtype 'bf16' GEMMs run as cublasGemmEx with bf16 inputs), a full stand-in loads
      const lt = hooks.cublasLtLoad(paths);
      assert.ok(lt.error?.includes(`${join(lib, 'libcublasLt.so.12')}: not cuBLASLt (no cublasLtCreate, cublasLtDestroy`), lt.error);
      const ltNames = [
        'cublasLtCreate',
        'cublasLtDestroy',
        'cublasLtMatmulDescCreate',
        'cublasLtMatmulDescDestroy',
        'cublasLtMatmulDescSetAttribute',
        'cublasLtMatrixLayoutCreate',
        'cublasLtMatrixLayoutDestroy',
        'cublasLtMatmulPreferenceCreate',
        'cublasLtMatmulPreferenceDestroy',
        'cublasLtMatmulPreferenceSetAttribute',
        'cublasLtMatmulAlgoGetHeuristic',
        'cublasLtMatmul',
      ];
      // (another folder: the dynamic loader keeps the first stand-in open under its name)
      const lib2 = join(root, 'lt2');
      mkdirSync(lib2);
      writeFileSync(join(root, 'lt2.c'), ltNames.map((f) => `int ${f}(void) { return 0; }`).join('\n') + '\n');
      execFileSync('cc', ['-shared', '-fPIC', '-o', join(lib2, 'libcublasLt.so.12'), join(root, 'lt2.c')]);
      assert.deepEqual(hooks.cublasLtLoad([join(lib2, 'libcublas.so.12'), ...paths]), { path: join(lib2, 'libcublasLt.so.12') });
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  test('the row-major -> column-major cuBLAS and cuBLASLt calls compute what the tiled kernel and the CPU backend compute', () =>
    withSeed(async (rng) => {
      const native = emu.native as unknown as {
        alloc(bytes: number, op: string): unknown;
        write(v: object, data: Float32Array): void;
        read(v: object, dst: Float32Array): Promise<Float32Array>;
        matmul(...args: unknown[]): void;
      };
      const dev = (data: Float32Array) => {
        const v = { handle: native.alloc(data.byteLength, 'test'), byteOffset: 0 };
        native.write(v, data);
        return v;
      };
      const dims = [1, 3, 32, 45];
      for (let trial = 0; trial < 16; ++trial) {
        const ta = (trial & 1) === 1,
          tb = (trial & 2) === 2;
        const [m, n, k] = [0, 0, 0].map(() => dims[Math.floor(rng.next() * dims.length)]);
        const [ar, ac] = ta ? [k, m] : [m, k],
          [br, bc] = tb ? [n, k] : [k, n];
        const lda = ac + Math.floor(rng.next() * 4),
          ldb = bc + Math.floor(rng.next() * 4),
          ldc = n + Math.floor(rng.next() * 4);
        const a = randn(rng, (ar - 1) * lda + ac),
          b = randn(rng, (br - 1) * ldb + bc),
          c0 = randn(rng, (m - 1) * ldc + n);
        const alpha = 0.5 + rng.next(),
          beta = trial < 8 ? 0 : 1;
        // float64 row-major reference (of a and b, or of their bf16 roundings)
        const reference = (a: Float32Array, b: Float32Array) => {
          const want = Float64Array.from(c0);
          for (let i = 0; i < m; ++i) {
            for (let j = 0; j < n; ++j) {
              let s = 0;
              for (let l = 0; l < k; ++l) s += (ta ? a[l * lda + i] : a[i * lda + l]) * (tb ? b[j * ldb + l] : b[l * ldb + j]);
              want[i * ldc + j] = alpha * s + beta * c0[i * ldc + j];
            }
          }
          return want;
        };
        const want = reference(a, b);
        const planned = Float32Array.from(c0);
        hooks.gemmPlanReference(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, planned, ldc);
        const cv = dev(c0);
        native.matmul(ta, tb, m, n, k, alpha, dev(a), lda, dev(b), 'f32', ldb, beta, cv, ldc, false, false, 'f32');
        const tiled = await native.read(cv, new Float32Array(c0.length));
        // computeBf16 with the same padded leading dimensions (the tiled kernel on the rounded operands)
        const c16 = dev(c0);
        native.matmul(ta, tb, m, n, k, alpha, dev(a), lda, dev(b), 'f32', ldb, beta, c16, ldc, false, true, 'f32');
        const r16 = (x: Float32Array) => bf16ArrayToF32(f32ArrayToBf16(x));
        close(`bf16 compute, padded ${ta} ${tb}`, await native.read(c16, new Float32Array(c0.length)), reference(r16(a), r16(b)), 1e-5);
        const tag = `trial ${trial}: ta=${ta} tb=${tb} m=${m} n=${n} k=${k} ld=${lda},${ldb},${ldc}`;
        close(`cuBLAS mapping ${tag}`, planned, want, 1e-5);
        // the cublasLtMatmul call (computeDtype 'bf16' on a GPU): the same mapping as layouts
        const lt = Float32Array.from(c0);
        assert.ok(hooks.ltPlanReference(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, lt, ldc), `cuBLASLt layouts fit: ${tag}`);
        close(`cuBLASLt mapping ${tag}`, lt, want, 1e-5);
        close(`tiled kernel ${tag}`, tiled, want, 1e-5);
      }
    }));
});
