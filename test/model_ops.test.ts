// The model ops of every backend against float64 references (test/helpers/model_ref.ts) and against
// PyTorch autograd (test/oracle/model_ops_torch.py). Error norm: max |got - ref| / max |ref| (relErr).
// Tolerances: 1e-5 for fp32 compute against float64 (bf16 weights are compared with the reference
// run on the same bf16-rounded values), 1e-5 against PyTorch (which runs in float64 here).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { Tensor } from '../src/tensor/tensor.js';
import type { Rng } from '../src/util/rng.js';
import { relErr } from './helpers/loss_ref.js';
import {
  attentionBackwardRef,
  attentionRef,
  matmulFmaChainRef,
  matmulRef,
  rmsnormBackwardRef,
  rmsnormRef,
  ropeRef,
  swigluBackwardRef,
  swigluRef,
} from './helpers/model_ref.js';
import { runPython } from './helpers/python.js';
import { ropeTable } from '../src/model/rope.js';
import { randn, withSeed } from './helpers/random.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';

/** The rope op's table for theta and a linear factor (1: none), as a config gives it. */
const thetaRope = (theta: number, hd: number, scale = 1) => ropeTable(theta, hd, scale === 1 ? null : { type: 'linear', factor: scale });

for (const be of await testBackends())
  describe(`on backend ${be.name}`, () => {
    const TOL = 1e-5;
    const f32 = (x: Float32Array, shape: number[]) => ops.upload(be, { dtype: 'f32', data: x }, shape);
    const i32 = (x: Int32Array | number[], shape: number[]) => ops.upload(be, { dtype: 'i32', data: Int32Array.from(x) }, shape);
    const host = async (t: Tensor) => (await ops.read(t)) as Float32Array;

    /** A weight as f32 or bf16, with the exact values the kernel sees. */
    function weight(rng: Rng, n: number, shape: number[], dtype: 'f32' | 'bf16', scale = 1, offset = 0) {
      const f = randn(rng, n, scale).map((x) => x + offset);
      if (dtype === 'f32') return { t: f32(f, shape) as Tensor, values: f };
      const h = f32ArrayToBf16(f);
      return { t: ops.upload(be, { dtype: 'bf16', data: h }, shape) as Tensor, values: bf16ArrayToF32(h) };
    }

    function check(name: string, got: ArrayLike<number>, want: ArrayLike<number>, tol = TOL) {
      const e = relErr(got, want);
      assert.ok(e <= tol, `${name}: relative error ${e} > ${tol}`);
    }

    describe('model ops against float64', () => {
      for (const dtype of ['f32', 'bf16'] as const) {
        /**
         * C = op(A) op(B) (into a NaN-poisoned `out` when `poison`, else a new tensor), then
         * acc = alpha op(A) op(B) + acc, both against float64, for every combination of transposes.
         */
        async function checkMatmuls(
          rng: Rng,
          dims: (tb: boolean) => [number, number, number],
          alpha: number,
          poison: boolean,
          label: string,
        ) {
          for (const [ta, tb] of [
            [false, false],
            [false, true],
            [true, false],
            [true, true],
          ] as const) {
            const [m, n, k] = dims(tb);
            const a = randn(rng, m * k);
            const b = weight(rng, k * n, tb ? [n, k] : [k, n], dtype);
            const ref = matmulRef(a, b.values, m, n, k, ta, tb);
            const out = poison ? f32(new Float32Array(m * n).fill(NaN), [m, n]) : undefined;
            const got = ops.matmul(f32(a, ta ? [k, m] : [m, k]), b.t, { transA: ta, transB: tb, out });
            check(`${label} ta=${ta} tb=${tb} n=${n} k=${k}`, await host(got), ref);
            const base = randn(rng, m * n);
            const acc = f32(base.slice(), [m, n]);
            ops.matmul(f32(a, ta ? [k, m] : [m, k]), b.t, { transA: ta, transB: tb, out: acc, accumulate: true, alpha });
            check(
              `${label} accumulate`,
              await host(acc),
              ref.map((x, i) => alpha * x + base[i]),
            );
            for (const t of [got, acc, b.t]) t.free();
          }
        }

        test(`matmul, all transposes, ${dtype} B, accumulate`, async () =>
          withSeed((rng) => checkMatmuls(rng, () => [rng.int(1, 40), rng.int(1, 40), rng.int(1, 70)], 0.5, false, 'matmul')));

        test(`matmul, ${dtype} B of more than 2 Mi elements (the CPU widens bf16 in panels of 2 Mi), output poisoned`, async () =>
          withSeed((rng) =>
            // 2-3 panels of 2 Mi elements, the last one partial: whole rows of B ([n, k] with transB,
            // else [k, n]) per panel
            checkMatmuls(
              rng,
              (tb) => {
                const inner = rng.int(600, 1300);
                const outer = Math.ceil((2.1 * 2 ** 20) / inner) + rng.int(0, Math.floor(2 ** 21 / inner));
                return tb ? [rng.int(1, 4), outer, inner] : [rng.int(1, 4), inner, outer];
              },
              -0.5,
              true,
              'big matmul',
            ),
          ));

        test(`row-invariant matmul (linear layer form), ${dtype} B: float64, and rows independent of M and threads`, async () =>
          withSeed(async (rng) => {
            const cpu = be instanceof CpuBackend ? be : null;
            for (let trial = 0; trial < 5; trial++) {
              // K across the 16-lane blocks and their tail; N across the 6-row register tiles; the
              // last trial large enough that the CPU splits it over threads and A into row blocks
              const big = trial === 4;
              const m = big ? rng.int(260, 400) : rng.int(1, 70),
                n = big ? rng.int(100, 200) : rng.int(1, 60),
                // the CPU widens a bf16 tile once for k <= 768 and in registers above: both sides
                k = big ? (rng.int(0, 1) ? rng.int(512, 530) : rng.int(760, 780)) : rng.int(1, 300);
              const a = randn(rng, m * k);
              const b = weight(rng, n * k, [n, k], dtype);
              const all = await host(ops.matmul(f32(a, [m, k]), b.t, { transB: true, rowInvariant: true }));
              check(`rowInvariant m=${m} n=${n} k=${k}`, all, matmulRef(a, b.values, m, n, k, false, true));
              // any row range alone (another M, another row position) gives the same bits
              const r0 = rng.int(0, m - 1),
                r1 = rng.int(r0 + 1, m);
              const saved = cpu?.threads;
              try {
                if (cpu) cpu.threads = rng.int(1, 2);
                const part = await host(ops.matmul(f32(a.slice(r0 * k, r1 * k), [r1 - r0, k]), b.t, { transB: true, rowInvariant: true }));
                assert.deepEqual(part, all.slice(r0 * n, r1 * n), `rows ${r0}..${r1} of ${m} (n=${n} k=${k})`);
              } finally {
                if (cpu) cpu.threads = saved!;
              }
              const base = randn(rng, m * n);
              const acc = f32(base.slice(), [m, n]);
              ops.matmul(f32(a, [m, k]), b.t, { transB: true, rowInvariant: true, out: acc, accumulate: true, alpha: -0.5 });
              check(
                'rowInvariant accumulate',
                await host(acc),
                matmulRef(a, b.values, m, n, k, false, true).map((x, i) => -0.5 * x + base[i]),
              );
            }
            const x = f32(randn(rng, 16), [4, 4]);
            assert.throws(() => ops.matmul(x, x, { rowInvariant: true }), /rowInvariant is for linear layers/);
            assert.throws(() => ops.matmul(x, x, { transA: true, transB: true, rowInvariant: true }), /rowInvariant is for linear layers/);
          }));

        test(`row-invariant matmul, ${dtype} W: rows bit-identical at M = 1, 7, all, reordered, 1 and 2 threads; K 1/17/1000, N 1/5/33; CPU: one fma chain per element`, async () =>
          withSeed(async (rng) => {
            const cpu = be instanceof CpuBackend ? be : null;
            const shapes: [number, number, number][] = [];
            for (const k of [1, 17, 1000]) for (const n of [1, 5, 33]) shapes.push([rng.int(8, 24), n, k]);
            // more than one block of rows (144), of K (256) and of packed columns (256), and a last panel
            // of fewer than 16 columns
            shapes.push([rng.int(150, 320), rng.int(257, 300), rng.int(257, 600)]);
            for (const [m, n, k] of shapes) {
              const a = randn(rng, m * k);
              const b = weight(rng, n * k, [n, k], dtype);
              /** The product of A's rows `rows` (in that order) into a NaN-poisoned out, on `threads` threads. */
              const run = async (rows: number[], threads: number) => {
                const x = new Float32Array(rows.length * k);
                rows.forEach((r, i) => x.set(a.subarray(r * k, (r + 1) * k), i * k));
                const out = ops.empty(be, 'f32', [rows.length, n]);
                ops.fill(out, NaN);
                const saved = cpu?.threads;
                try {
                  if (cpu) cpu.threads = threads;
                  ops.matmul(f32(x, [rows.length, k]), b.t, { transB: true, rowInvariant: true, out });
                } finally {
                  if (cpu) cpu.threads = saved!;
                }
                return host(out);
              };
              const label = `m=${m} n=${n} k=${k}`;
              const every = Array.from({ length: m }, (_, i) => i);
              const all = await run(every, 2);
              check(`rowInvariant ${label} vs float64`, all, matmulRef(a, b.values, m, n, k, false, true));
              // the CPU's documented order, bit for bit (docs/ops.md): s = fma(a[i][p], w[j][p], s), p = 0 .. K-1
              if (cpu) assert.deepEqual(all, matmulFmaChainRef(a, b.values, m, n, k), `fma chain ${label}`);
              const expectRows = (got: Float32Array, rows: number[], what: string) =>
                rows.forEach((r, i) =>
                  assert.deepEqual(got.slice(i * n, (i + 1) * n), all.slice(r * n, (r + 1) * n), `${what}: row ${r} (${label})`),
                );
              const one = rng.int(0, m - 1);
              expectRows(await run([one], rng.int(1, 2)), [one], 'M = 1');
              const seven = rng.shuffle(every.slice()).slice(0, 7);
              expectRows(await run(seven, rng.int(1, 2)), seven, 'M = 7');
              const perm = rng.shuffle(every.slice());
              expectRows(await run(perm, 1), perm, 'all rows reordered, 1 thread');
              expectRows(await run(every, 1), every, 'all rows, 1 thread');
            }
          }));

        test(`linears (fused projections), ${dtype} and mixed weights: each output equals its matmul bit for bit`, async () =>
          withSeed(async (rng) => {
            for (let trial = 0; trial < 4; trial++) {
              // the last trial splits over threads and row blocks; weights of both dtypes mixed in one call
              const big = trial === 3;
              const m = big ? rng.int(200, 300) : rng.int(1, 40),
                k = big ? rng.int(500, 800) : rng.int(1, 200);
              const count = rng.int(1, 4);
              const ws = Array.from({ length: count }, (_, i) => {
                const n = rng.int(1, big ? 300 : 50);
                return { n, ...weight(rng, n * k, [n, k], i % 2 ? 'f32' : dtype) };
              });
              const a = randn(rng, m * k);
              for (const rowInvariant of [true, false]) {
                const got = ops.linears(
                  f32(a, [m, k]),
                  ws.map((w) => w.t),
                  { rowInvariant },
                );
                for (let i = 0; i < count; i++) {
                  const want = await host(ops.matmul(f32(a, [m, k]), ws[i].t, { transB: true, rowInvariant }));
                  const g = await host(got[i]);
                  assert.deepEqual(g, want, `linears output ${i} of ${count} (m=${m} n=${ws[i].n} k=${k} rowInvariant=${rowInvariant})`);
                  check(`linears ${i} vs float64`, g, matmulRef(a, ws[i].values, m, ws[i].n, k, false, true));
                }
              }
            }
            const x = f32(randn(rng, 12), [3, 4]);
            const w = f32(randn(rng, 15), [3, 5]);
            assert.throws(() => ops.linears(x, []), /linears takes 1 to 16 weights/);
            assert.throws(() => ops.linears(x, [x, w]), /weights\[1\] is \[3, 5\], its rows need the 4 values/);
            assert.throws(() => ops.linears(x, [i32([1, 2, 3, 4], [1, 4]) as unknown as Tensor]), /weights\[0\]/);
          }));

        test(`readChunks returns a ${dtype} tensor in consecutive aligned chunks`, async () =>
          withSeed(async (rng) => {
            const perChunk = dtype === 'f32' ? 64 : 128; // 256 bytes, the smallest aligned chunk
            for (const n of [1, perChunk - 1, perChunk, perChunk + 1, rng.int(2, 9) * perChunk + rng.int(0, perChunk - 1)]) {
              const w = weight(rng, n, [n], dtype);
              const parts: number[] = [];
              const got: number[] = [];
              for await (const c of ops.readChunks(w.t, perChunk)) {
                parts.push(c.length);
                got.push(...(c instanceof Uint16Array ? bf16ArrayToF32(c) : c));
              }
              assert.deepEqual(got, Array.from(w.values), `n=${n}`);
              assert.deepEqual(
                parts,
                Array.from({ length: Math.ceil(n / perChunk) }, (_, i) => Math.min(perChunk, n - i * perChunk)),
              );
            }
            await assert.rejects(async () => {
              for await (const _ of ops.readChunks(weight(rng, 8, [8], dtype).t, 3)) void _;
            }, /multiple of 256 bytes/);
          }));

        test(`rmsnorm forward and backward, ${dtype} weight`, async () =>
          withSeed(async (rng) => {
            const t = rng.int(1, 50),
              h = rng.int(2, 300),
              eps = 1e-5;
            const x = randn(rng, t * h, 2);
            const w = weight(rng, h, [h], dtype, 0.2, 1);
            const { y, rstd } = ops.rmsnorm(f32(x, [t, h]), w.t, eps);
            const ref = rmsnormRef(x, w.values, t, h, eps);
            check('y', await host(y), ref.y);
            check('rstd', await host(rstd), ref.rstd);
            const dy = randn(rng, t * h);
            const dwBase = randn(rng, h);
            const dw = f32(dwBase.slice(), [h]);
            const dx = ops.rmsnormBackward(f32(x, [t, h]), w.t, rstd, f32(dy, [t, h]), dw);
            const rb = rmsnormBackwardRef(x, w.values, dy, t, h, eps);
            check('dx', await host(dx), rb.dx);
            check(
              'dw (accumulated)',
              await host(dw),
              rb.dw.map((v, j) => v + dwBase[j]),
            );
          }));

        test(`embedding forward and backward, ${dtype} table`, async () =>
          withSeed(async (rng) => {
            const v = rng.int(2, 60),
              h = rng.int(1, 90),
              t = rng.int(1, 100);
            const table = weight(rng, v * h, [v, h], dtype);
            const ids = Array.from({ length: t }, () => rng.int(0, v - 1));
            const out = await host(ops.embedding(i32(ids, [t]), table.t));
            ids.forEach((id, r) => check(`row ${r}`, out.subarray(r * h, (r + 1) * h), table.values.subarray(id * h, (id + 1) * h), 0));
            const dout = randn(rng, t * h);
            const dtable = f32(new Float32Array(v * h), [v, h]);
            ops.embeddingBackward(i32(ids, [t]), f32(dout, [t, h]), dtable);
            const want = new Float64Array(v * h);
            ids.forEach((id, r) => {
              for (let j = 0; j < h; j++) want[id * h + j] += dout[r * h + j];
            });
            check('dtable', await host(dtable), want);
            await assert.rejects(host(ops.embedding(i32([v], [1]), table.t)), /a token id is outside \[0, rows of the table\)/);
          }));
      }

      test('bf16 compute (matmul and linears): float64 on the bf16-rounded inputs, rows independent of M and threads', async () =>
        withSeed(async (rng) => {
          const cpu = be instanceof CpuBackend ? be : null;
          const rounded = (x: Float32Array) => bf16ArrayToF32(f32ArrayToBf16(x));
          for (let trial = 0; trial < 5; trial++) {
            // K across the 32-value steps of vdpbf16ps and their masked tail; the last trial split over
            // threads and row blocks
            const big = trial === 4;
            const m = big ? rng.int(260, 400) : rng.int(1, 70),
              n = big ? rng.int(100, 200) : rng.int(1, 60),
              k = big ? rng.int(500, 1100) : rng.int(1, 300);
            const a = randn(rng, m * k);
            const b = weight(rng, n * k, [n, k], 'bf16');
            // into a NaN-poisoned out: every element written
            const out = ops.empty(be, 'f32', [m, n]);
            ops.fill(out, NaN);
            ops.matmul(f32(a, [m, k]), b.t, { transB: true, computeDtype: 'bf16', out });
            const all = await host(out);
            const want = matmulRef(rounded(a), b.values, m, n, k, false, true);
            check(`bf16 compute m=${m} n=${n} k=${k}`, all, want);
            // the rounding is what makes the difference: the f32 result on a differs from it by far more
            // than the tolerance (so the test would see a kernel that skips the rounding)
            assert.ok(relErr(matmulRef(a, b.values, m, n, k, false, true), want) > 1e-4, 'a was not rounded');
            const r0 = rng.int(0, m - 1),
              r1 = rng.int(r0 + 1, m);
            const saved = cpu?.threads;
            try {
              if (cpu) cpu.threads = rng.int(1, 2);
              const part = await host(ops.matmul(f32(a.slice(r0 * k, r1 * k), [r1 - r0, k]), b.t, { transB: true, computeDtype: 'bf16' }));
              assert.deepEqual(part, all.slice(r0 * n, r1 * n), `rows ${r0}..${r1} of ${m} (n=${n} k=${k})`);
            } finally {
              if (cpu) cpu.threads = saved!;
            }
            const base = randn(rng, m * n);
            const acc = f32(base.slice(), [m, n]);
            ops.matmul(f32(a, [m, k]), b.t, { transB: true, computeDtype: 'bf16', out: acc, accumulate: true, alpha: -0.5 });
            check(
              'bf16 compute accumulate',
              await host(acc),
              want.map((x, i) => -0.5 * x + base[i]),
            );
            // linears: each output its matmul's bits
            const w2 = weight(rng, 7 * k, [7, k], 'bf16');
            const got = ops.linears(f32(a, [m, k]), [b.t, w2.t], { rowInvariant: true, computeDtype: 'bf16' });
            assert.deepEqual(await host(got[0]), all, 'linears output 0');
            assert.deepEqual(
              await host(got[1]),
              await host(ops.matmul(f32(a, [m, k]), w2.t, { transB: true, rowInvariant: true, computeDtype: 'bf16' })),
              'linears output 1',
            );
          }
          const x = f32(randn(rng, 16), [4, 4]);
          const x16 = weight(rng, 16, [4, 4], 'bf16').t;
          // mixed-precision training (autocast branch, lt-gemm's contract): every form takes computeDtype 'bf16'
          // (f32 weights, transA, a bf16 `a`); a bf16 `a` needs it
          assert.throws(() => ops.matmul(x16 as unknown as Tensor<'f32'>, x, {}), /a must have dtype f32, got/);
          assert.throws(() => ops.matmul(x, x16, { transB: true, computeDtype: 'f16' as 'bf16' }), /must be 'f32' or 'bf16'/);
        }));

      // the row-invariant GEMM's narrower kernel sets (the widest one the CPU has runs above), forced in child
      // processes: each must give the fma chain's bits too, so every set gives the same bits
      if (be.name === 'cpu' && !process.env.SPINLM_ROWS_KERNELS)
        for (const set of ['avx2', 'scalar'])
          test(`row-invariant matmul on the ${set} kernel set (SPINLM_ROWS_KERNELS=${set}, a child process): the same bits`, () => {
            const childEnv: NodeJS.ProcessEnv = { ...process.env, SPINLM_ROWS_KERNELS: set, SPINLM_TEST_BACKENDS: 'cpu' };
            delete childEnv.NODE_TEST_CONTEXT;
            const r = spawnSync(
              process.execPath,
              ['--import', 'tsx', '--test', '--test-name-pattern=rows bit-identical', fileURLToPath(import.meta.url)],
              { encoding: 'utf8', env: childEnv },
            );
            assert.equal(r.status, 0, `child failed:\n${r.stdout}\n${r.stderr}`);
            assert.match(r.stdout, /# pass 2\n/, r.stdout);
          });

      // the CPU's fallback for CPUs without AVX512-BF16 (rounded rows through the f32 kernel), forced in a
      // child process: the same test there
      if (be.name === 'cpu' && !process.env.SPINLM_NO_AVX512_BF16)
        test('bf16 compute without AVX512-BF16 (SPINLM_NO_AVX512_BF16=1, a child process): the same test passes', () => {
          // a test run of its own (NODE_TEST_CONTEXT would make the child report to this runner instead)
          const childEnv: NodeJS.ProcessEnv = { ...process.env, SPINLM_NO_AVX512_BF16: '1', SPINLM_TEST_BACKENDS: 'cpu' };
          delete childEnv.NODE_TEST_CONTEXT;
          const r = spawnSync(
            process.execPath,
            ['--import', 'tsx', '--test', '--test-name-pattern=bf16 compute \\(matmul and linears\\)', fileURLToPath(import.meta.url)],
            { encoding: 'utf8', env: childEnv },
          );
          assert.equal(r.status, 0, `child failed:\n${r.stdout}\n${r.stderr}`);
          assert.match(r.stdout, /# pass 1\n/, r.stdout);
        });

      test('rope forward, inverse round trip, positions past 2^15, linear scaling', async () =>
        withSeed(async (rng) => {
          for (const hd of [16, 32, 64]) {
            const t = rng.int(1, 20),
              heads = rng.int(1, 4);
            const x = randn(rng, t * heads * hd);
            const pos = Array.from({ length: t }, () => (rng.next() < 0.5 ? rng.int(0, 300) : rng.int(32768, 40000)));
            for (const [theta, scale] of [
              [10000, 1],
              [1e6, 1],
              [10000, 4],
            ]) {
              const tx = f32(x.slice(), [t, heads, hd]);
              ops.rope(tx, i32(pos, [t]), thetaRope(theta, hd, scale));
              check(`rope hd=${hd} theta=${theta} scale=${scale}`, await host(tx), ropeRef(x, pos, t, heads, hd, theta, scale));
              ops.rope(tx, i32(pos, [t]), { ...thetaRope(theta, hd, scale), inverse: true });
              check('inverse round trip', await host(tx), x);
            }
          }
        }));

      for (const [nh, nkv] of [
        [4, 4],
        [4, 2],
        [6, 1],
      ]) {
        test(`attention forward and backward, ${nh} heads / ${nkv} kv heads, padding masks`, async () =>
          withSeed(async (rng) => {
            // lengths across the kernels' 64-row query blocks too
            const b = 3,
              l = rng.next() < 0.5 ? rng.int(5, 37) : rng.int(65, 150),
              hd = [16, 32][rng.int(0, 1)];
            const q = randn(rng, b * l * nh * hd),
              k = randn(rng, b * l * nkv * hd),
              v = randn(rng, b * l * nkv * hd);
            // row 0: no padding; row 1: right padding; row 2: left padding + a hole (the first query sees no key)
            const mask = new Int32Array(b * l).fill(1);
            for (let j = l - 3; j < l; j++) mask[l + j] = 0;
            if (l > 64) mask[l + 64] = 0; // a hole right at a block boundary
            mask[2 * l] = 0;
            mask[2 * l + 1] = 0;
            mask[2 * l + 4] = 0;
            const shape = { b, l, nh, nkv, hd };
            const scale = 1 / Math.sqrt(hd);
            const tq = f32(q, [b, l, nh, hd]),
              tk = f32(k, [b, l, nkv, hd]),
              tv = f32(v, [b, l, nkv, hd]),
              tm = i32(mask, [b, l]);
            const { out, lse } = ops.attention(tq, tk, tv, tm);
            const ref = attentionRef(q, k, v, mask, shape, scale);
            const got = await host(out);
            assert.ok(got.every(Number.isFinite), 'no NaN or Inf in the output');
            check('out', got, ref.out);
            check('lse', await host(lse), ref.lse);
            assert.ok(
              got.subarray(2 * l * nh * hd, (2 * l + 2) * nh * hd).every((x) => x === 0),
              'queries with no visible key give exact zeros',
            );
            const dout = randn(rng, b * l * nh * hd);
            const g = ops.attentionBackward(tq, tk, tv, tm, out, lse, f32(dout, [b, l, nh, hd]));
            const rb = attentionBackwardRef(q, k, v, mask, dout, shape, scale);
            check('dq', await host(g.dq), rb.dq);
            check('dk', await host(g.dk), rb.dk);
            check('dv', await host(g.dv), rb.dv);
          }));
      }

      for (const cdt of ['f32', 'bf16'] as const)
        test(`decode attention over a ${cdt} KV cache equals the last row of full attention (bf16: on the rounded keys and values)`, async () =>
          withSeed(async (rng) => {
            // a random even head size, and 64 and 128 (the CPU kernel's register-blocked paths); query
            // heads per kv head 1, 2, 3 or 4 (pairs of heads and an odd one); lengths not a multiple of 4
            for (const hd of [2 * rng.int(1, 40), 64, 128]) {
              const [nh, nkv] = [
                [4, 2],
                [4, 4],
                [6, 2],
                [8, 2],
              ][rng.int(0, 3)];
              const b = 3,
                l = rng.int(5, 20),
                lmax = 20;
              const q = randn(rng, b * l * nh * hd),
                k = randn(rng, b * l * nkv * hd),
                v = randn(rng, b * l * nkv * hd);
              // what a bf16 cache holds: each value rounded to nearest even
              const held = (x: Float32Array) => (cdt === 'bf16' ? bf16ArrayToF32(f32ArrayToBf16(x)) : x);
              const mask = new Int32Array(b * l).fill(1);
              mask[l + 2] = 0;
              const full = await host(
                ops.attention(f32(q, [b, l, nh, hd]), f32(held(k), [b, l, nkv, hd]), f32(held(v), [b, l, nkv, hd]), i32(mask, [b, l])).out,
              );
              // caches [b, nkv, lmax, hd] filled through scatterRows (one row per token and kv head), as generation
              // writes them; the rows past each length poisoned with NaN (never read)
              const kc = ops.empty(be, cdt, [b * nkv * lmax, hd]),
                vc = ops.empty(be, cdt, [b * nkv * lmax, hd]);
              ops.fill(kc, NaN);
              ops.fill(vc, NaN);
              const rows = Array.from({ length: b * l * nkv }, (_, r) => {
                const token = Math.floor(r / nkv),
                  h = r % nkv;
                return (Math.floor(token / l) * nkv + h) * lmax + (token % l);
              });
              ops.scatterRows(f32(k, [b * l * nkv, hd]), i32(rows, [b * l * nkv]), kc);
              ops.scatterRows(f32(v, [b * l * nkv, hd]), i32(rows, [b * l * nkv]), vc);
              // the scattered rows hold exactly the rounded values (bit for bit: the cast op's rounding)
              const kHeld = await ops.read(kc);
              const want16 = cdt === 'bf16' ? f32ArrayToBf16(k) : k;
              rows.forEach((row, r) =>
                assert.deepEqual(
                  kHeld.slice(row * hd, (row + 1) * hd),
                  want16.slice(r * hd, (r + 1) * hd),
                  `cache row ${row} (token ${r})`,
                ),
              );
              if (cdt === 'bf16') {
                // rounding's edge cases scatter to the bits cast gives them: ties to even, NaN, infinities, -0, overflow
                const edge = Float32Array.from([NaN, Infinity, -Infinity, -0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4e38, -1e-40, 0.1, -7.5]);
                const dst = ops.empty(be, 'bf16', [3, edge.length]);
                ops.fill(dst, 0);
                ops.scatterRows(f32(edge, [1, edge.length]), i32([1], [1]), dst);
                const got16 = (await ops.read(dst)).slice(edge.length, 2 * edge.length);
                assert.deepEqual(got16, await ops.read(ops.cast(f32(edge, [edge.length]), 'bf16')), 'edge values');
              }
              const cacheMask = new Int32Array(b * lmax).fill(1);
              cacheMask[lmax + 2] = 0;
              const lastQ = new Float32Array(b * nh * hd);
              for (let bi = 0; bi < b; bi++) lastQ.set(q.subarray((bi * l + l - 1) * nh * hd, (bi * l + l) * nh * hd), bi * nh * hd);
              const out = await host(
                ops.attentionDecode(
                  f32(lastQ, [b, nh, hd]),
                  kc.reshape([b, nkv, lmax, hd]),
                  vc.reshape([b, nkv, lmax, hd]),
                  i32([l, l, l], [b]),
                  i32(cacheMask, [b, lmax]),
                ),
              );
              const want = new Float32Array(b * nh * hd);
              for (let bi = 0; bi < b; bi++) want.set(full.subarray((bi * l + l - 1) * nh * hd, (bi * l + l) * nh * hd), bi * nh * hd);
              check('decode', out, want);
              const other = cdt === 'bf16' ? 'f32' : 'bf16';
              assert.throws(
                () =>
                  ops.attentionDecode(
                    f32(lastQ, [b, nh, hd]),
                    kc.reshape([b, nkv, lmax, hd]),
                    ops.empty(be, other, [b, nkv, lmax, hd]),
                    i32([l, l, l], [b]),
                  ),
                /vCache/,
              );
            }
          }));

      test('swiglu forward and backward; add; bias', async () =>
        withSeed(async (rng) => {
          const n = rng.int(1, 5000);
          const g = randn(rng, n, 3),
            u = randn(rng, n),
            d = randn(rng, n);
          check('swiglu', await host(ops.swiglu(f32(g, [n]), f32(u, [n]))), swigluRef(g, u));
          const r = ops.swigluBackward(f32(g, [n]), f32(u, [n]), f32(d, [n]));
          const rr = swigluBackwardRef(g, u, d);
          check('dgate', await host(r.dgate), rr.dgate);
          check('dup', await host(r.dup), rr.dup);
          const a = f32(g.slice(), [n]);
          ops.add(a, f32(u, [n]), a);
          check(
            'add in place',
            await host(a),
            Float64Array.from(g, (x, i) => x + u[i]),
          );
          const t = 7,
            m = 11;
          const x = randn(rng, t * m),
            bias = randn(rng, m);
          const tx = f32(x.slice(), [t, m]);
          ops.addBias(tx, f32(bias, [m]));
          check(
            'addBias',
            await host(tx),
            Float64Array.from(x, (v, i) => v + bias[i % m]),
          );
          const db = f32(new Float32Array(m).fill(1), [m]);
          ops.biasBackward(f32(x, [t, m]), db);
          const colsum = new Float64Array(m).fill(1);
          x.forEach((v, i) => (colsum[i % m] += v));
          check('biasBackward', await host(db), colsum);
        }));

      const cpu = be instanceof CpuBackend ? be : null;
      if (cpu)
        test('column reductions are the same on 1 and 2 threads (CPU)', async () =>
          withSeed(async (rng) => {
            const t = 777,
              h = 129;
            const x = f32(randn(rng, t * h), [t, h]);
            const saved = cpu.threads;
            const run = async (threads: number) => {
              cpu.threads = threads;
              const dw = f32(new Float32Array(h), [h]);
              const { rstd } = ops.rmsnorm(x, f32(new Float32Array(h).fill(1), [h]), 1e-6);
              ops.rmsnormBackward(x, f32(new Float32Array(h).fill(1), [h]), rstd, x, dw);
              return await host(dw);
            };
            try {
              assert.deepEqual(await run(1), await run(2));
            } finally {
              cpu.threads = saved;
            }
          }));

      test('indices outside their range never touch memory: the next read throws naming the op', async () => {
        const table = f32(new Float32Array(5 * 4).fill(1), [5, 4]);
        for (const bad of [5, -1, 2 ** 31 - 1]) {
          await assert.rejects(host(ops.embedding(i32([0, bad, 2], [3]), table)), /embedding\/embeddingBackward: a token id is outside/);
          const dt = f32(new Float32Array(5 * 4), [5, 4]);
          ops.embeddingBackward(i32([bad], [1]), f32(new Float32Array(4).fill(1), [1, 4]), dt);
          await assert.rejects(host(dt), /a token id is outside/);
          for (const dtype of ['f32', 'bf16'] as const) {
            const dst = ops.empty(be, dtype, [5, 4]);
            ops.fill(dst, 0);
            ops.scatterRows(f32(new Float32Array(8).fill(2), [2, 4]), i32([1, bad], [2]), dst);
            await assert.rejects(ops.read(dst), /scatterRows: an index is outside/);
          }
        }
        const x = f32(new Float32Array(2 * 1 * 4).fill(1), [2, 1, 4]);
        ops.rope(x, i32([3, -7], [2]), thetaRope(10000, 4));
        await assert.rejects(host(x), /rope: a position is negative/);
        for (const dtype of ['f32', 'bf16'] as const) {
          const cache = ops.empty(be, dtype, [2, 1, 3, 4]);
          ops.fill(cache, 1);
          for (const len of [4, -1]) {
            await assert.rejects(
              host(ops.attentionDecode(f32(new Float32Array(8).fill(1), [2, 1, 4]), cache, cache, i32([1, len], [2]))),
              /attentionDecode: a length is outside/,
            );
          }
        }
        // after each failed read the word is clear: valid inputs read fine
        assert.deepEqual(Array.from(await host(ops.embedding(i32([4, 0], [2]), table))), Array(8).fill(1));
      });
    });

    test('attention across several query blocks (L = 200) equals float64, forward and backward', async () =>
      withSeed(async (rng) => {
        const b = 2,
          l = 200,
          nh = 4,
          nkv = 2,
          hd = 16;
        const q = randn(rng, b * l * nh * hd),
          k = randn(rng, b * l * nkv * hd),
          v = randn(rng, b * l * nkv * hd);
        const mask = new Int32Array(b * l).fill(1);
        for (let j = 180; j < l; j++) mask[l + j] = 0;
        mask[l + 127] = 0;
        const shape = { b, l, nh, nkv, hd };
        const tq = f32(q, [b, l, nh, hd]),
          tk = f32(k, [b, l, nkv, hd]),
          tv = f32(v, [b, l, nkv, hd]),
          tm = i32(mask, [b, l]);
        const { out, lse } = ops.attention(tq, tk, tv, tm);
        const ref = attentionRef(q, k, v, mask, shape, 1 / Math.sqrt(hd));
        check('out', await host(out), ref.out);
        check('lse', await host(lse), ref.lse);
        const dout = randn(rng, b * l * nh * hd);
        const g = ops.attentionBackward(tq, tk, tv, tm, out, lse, f32(dout, [b, l, nh, hd]));
        const rb = attentionBackwardRef(q, k, v, mask, dout, shape, 1 / Math.sqrt(hd));
        check('dq', await host(g.dq), rb.dq);
        check('dk', await host(g.dk), rb.dk);
        check('dv', await host(g.dv), rb.dv);
      }));

    test('model ops equal PyTorch autograd (float64 torch)', async () =>
      withSeed(async (rng) => {
        const dir = mkdtempSync(join(tmpdir(), 'spinlm-ops-torch-'));
        try {
          const specs: { name: string; op: string; shapes: Record<string, number[]>; params: Record<string, unknown> }[] = [];
          const put = (name: string, data: Float32Array | Int32Array) =>
            writeFileSync(join(dir, `${name}.bin`), new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
          const read = (name: string) => {
            const b = readFileSync(join(dir, `${name}.bin`));
            return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
          };
          const results: [string, () => Promise<Float32Array>, string][] = [];

          // rmsnorm
          {
            const t = 9,
              h = 40;
            const x = randn(rng, t * h),
              w = randn(rng, h, 0.3).map((v) => v + 1),
              dy = randn(rng, t * h);
            put('rms.x', x);
            put('rms.w', w);
            put('rms.dout', dy);
            specs.push({ name: 'rms', op: 'rmsnorm', shapes: { x: [t, h], w: [h] }, params: { eps: 1e-6 } });
            const { y, rstd } = ops.rmsnorm(f32(x, [t, h]), f32(w, [h]), 1e-6);
            const dw = f32(new Float32Array(h), [h]);
            const dx = ops.rmsnormBackward(f32(x, [t, h]), f32(w, [h]), rstd, f32(dy, [t, h]), dw);
            results.push(
              ['rms.y', () => host(y), 'rmsnorm y'],
              ['rms.dx', () => host(dx), 'rmsnorm dx'],
              ['rms.dw', () => host(dw), 'rmsnorm dw'],
            );
          }
          // rope
          {
            const t = 6,
              heads = 3,
              hd = 32;
            const x = randn(rng, t * heads * hd),
              pos = Int32Array.from({ length: t }, () => rng.int(0, 5000)),
              dy = randn(rng, t * heads * hd);
            put('rope.x', x);
            put('rope.pos', pos);
            put('rope.dout', dy);
            specs.push({ name: 'rope', op: 'rope', shapes: { x: [t, heads, hd], pos: [t] }, params: { theta: 500000, scale: 2 } });
            const tx = f32(x.slice(), [t, heads, hd]);
            ops.rope(tx, i32(pos, [t]), thetaRope(500000, hd, 2));
            const td = f32(dy.slice(), [t, heads, hd]);
            ops.rope(td, i32(pos, [t]), { ...thetaRope(500000, hd, 2), inverse: true });
            results.push(['rope.y', () => host(tx), 'rope y'], ['rope.dx', () => host(td), 'rope dx']);
          }
          // attention (GQA 4/2, a padded sequence)
          {
            const b = 2,
              l = 11,
              nh = 4,
              nkv = 2,
              hd = 16;
            const q = randn(rng, b * l * nh * hd),
              k = randn(rng, b * l * nkv * hd),
              v = randn(rng, b * l * nkv * hd),
              dout = randn(rng, b * l * nh * hd);
            const mask = new Int32Array(b * l).fill(1);
            mask[l + l - 1] = 0;
            mask[l + l - 2] = 0;
            mask[l + 3] = 0;
            put('att.q', q);
            put('att.k', k);
            put('att.v', v);
            put('att.mask', mask);
            put('att.dout', dout);
            specs.push({
              name: 'att',
              op: 'attention',
              shapes: { q: [b, l, nh, hd], k: [b, l, nkv, hd], v: [b, l, nkv, hd], mask: [b, l] },
              params: {},
            });
            const tq = f32(q, [b, l, nh, hd]),
              tk = f32(k, [b, l, nkv, hd]),
              tv = f32(v, [b, l, nkv, hd]),
              tm = i32(mask, [b, l]);
            const { out, lse } = ops.attention(tq, tk, tv, tm);
            const g = ops.attentionBackward(tq, tk, tv, tm, out, lse, f32(dout, [b, l, nh, hd]));
            results.push(
              ['att.y', () => host(out), 'attention out'],
              ['att.dq', () => host(g.dq), 'attention dq'],
              ['att.dk', () => host(g.dk), 'attention dk'],
              ['att.dv', () => host(g.dv), 'attention dv'],
            );
          }
          // swiglu
          {
            const n = 300;
            const gg = randn(rng, n, 2),
              u = randn(rng, n),
              d = randn(rng, n);
            put('sw.g', gg);
            put('sw.u', u);
            put('sw.dout', d);
            specs.push({ name: 'sw', op: 'swiglu', shapes: { g: [n], u: [n] }, params: {} });
            const y = ops.swiglu(f32(gg, [n]), f32(u, [n]));
            const r = ops.swigluBackward(f32(gg, [n]), f32(u, [n]), f32(d, [n]));
            results.push(
              ['sw.y', () => host(y), 'swiglu y'],
              ['sw.dg', () => host(r.dgate), 'swiglu dgate'],
              ['sw.du', () => host(r.dup), 'swiglu dup'],
            );
          }
          // embedding
          {
            const v = 17,
              h = 8,
              t = 30;
            const table = randn(rng, v * h),
              ids = Int32Array.from({ length: t }, () => rng.int(0, v - 1)),
              d = randn(rng, t * h);
            put('emb.table', table);
            put('emb.ids', ids);
            put('emb.dout', d);
            specs.push({ name: 'emb', op: 'embedding', shapes: { table: [v, h], ids: [t] }, params: {} });
            const y = ops.embedding(i32(ids, [t]), f32(table, [v, h]));
            const dt = f32(new Float32Array(v * h), [v, h]);
            ops.embeddingBackward(i32(ids, [t]), f32(d, [t, h]), dt);
            results.push(['emb.y', () => host(y), 'embedding y'], ['emb.dtable', () => host(dt), 'embedding dtable']);
          }
          // matmul (the linear layer form y = x W^T and its gradients)
          {
            const m = 13,
              k = 29,
              n = 7;
            const a = randn(rng, m * k),
              w = randn(rng, n * k),
              d = randn(rng, m * n);
            put('mm.a', a);
            put('mm.b', w);
            put('mm.dout', d);
            specs.push({ name: 'mm', op: 'matmul', shapes: { a: [m, k], b: [n, k] }, params: { transA: false, transB: true } });
            const ta = f32(a, [m, k]),
              tw = f32(w, [n, k]),
              td = f32(d, [m, n]);
            const y = ops.matmul(ta, tw, { transB: true });
            const da = ops.matmul(td, tw); // dY W
            const dw = ops.matmul(td, ta, { transA: true }); // dY^T X
            results.push(
              ['mm.y', () => host(y), 'matmul y'],
              ['mm.da', () => host(da), 'matmul da'],
              ['mm.db', () => host(dw), 'matmul dW'],
            );
          }
          writeFileSync(join(dir, 'spec.json'), JSON.stringify({ ops: specs }));
          runPython(new URL('./oracle/model_ops_torch.py', import.meta.url).pathname, [dir]);
          for (const [file, got, what] of results) check(`${what} vs torch`, await got(), read(file));
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }));
  });
