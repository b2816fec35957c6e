// The column reductions (biasBackward, rmsnormBackward's dw) and embeddingBackward on every backend:
// against float64 (the sums of the terms, computed here) at shapes with many rows and few columns and
// the reverse, odd sizes and chunk edges; bit for bit equal to the CPU backend (the CUDA kernels sum
// in its order: chunks of kColumnChunkRows = 64 rows in row order, then the chunks in order, float64;
// docs/cuda.md "Column reductions"), including rows built so that another order gives another float;
// and the same bits run to run (WebGPU: float64 and run to run; it sums in its own order).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Backend } from '../src/backend/backend.js';
import * as ops from '../src/ops/index.js';
import type { Tensor } from '../src/tensor/tensor.js';
import type { Rng } from '../src/util/rng.js';
import { cpuReference, testBackends } from './helpers/backends.js';
import { randn, withSeed } from './helpers/random.js';

const CHUNK = 64; // kColumnChunkRows (native/include/common.h)

/** Shapes [rows, columns]: many rows few columns, few rows many columns, chunk edges, odd sizes. */
const SHAPES: Array<[number, number]> = [
  [1, 1],
  [63, 5],
  [64, 3],
  [65, 7],
  [3000, 2],
  [4097, 3],
  [2, 3001],
  [3, 4096],
  [130, 1027],
  [777, 33],
];

/** dy with cancelling pairs across chunks: the float64 sum in another row order rounds to another value. */
function cancelling(rng: Rng, t: number, n: number): Float32Array {
  const dy = randn(rng, t * n);
  for (let j = 0; j < n; j++)
    for (let r = CHUNK; r + 1 < t; r += CHUNK) {
      // a huge +-pair opening a chunk: summed after the earlier chunks' total it swallows that total's
      // low bits; summed within its own chunk first it cancels exactly
      const big = 2 ** rng.int(40, 60);
      dy[r * n + j] = big;
      dy[(r + 1) * n + j] = -big;
    }
  return dy;
}

interface Case {
  dy: Float32Array;
  x: Float32Array;
  rstd: Float32Array;
  base: Float32Array;
}

/** Runs biasBackward and rmsnormBackward's dw on `be`; returns the two accumulated outputs. */
async function reduce(be: Backend, c: Case, t: number, n: number): Promise<[Float32Array, Float32Array]> {
  const up = (data: Float32Array, shape: number[]) => ops.upload(be, { dtype: 'f32', data }, shape);
  const tensors: Tensor[] = [];
  const keep = <T extends Tensor>(x: T) => (tensors.push(x), x);
  try {
    const db = keep(up(c.base.slice(), [n]));
    ops.biasBackward(keep(up(c.dy, [t, n])), db);
    const dw = keep(up(c.base.slice(), [n]));
    const w = keep(up(new Float32Array(n).fill(1), [n]));
    keep(ops.rmsnormBackward(keep(up(c.x, [t, n])), w, keep(up(c.rstd, [t])), keep(up(c.dy, [t, n])), dw));
    return [(await ops.read(db)) as Float32Array, (await ops.read(dw)) as Float32Array];
  } finally {
    for (const x of tensors) x.free();
  }
}

/** |got - want| <= tol * (|base| + sum |terms|) per column: f32 rounding of a float64 sum, then one f32 add. */
function checkColumns(what: string, got: Float32Array, want: Float64Array, scale: Float64Array, tol: number) {
  for (let j = 0; j < want.length; j++)
    assert.ok(Math.abs(got[j] - want[j]) <= tol * scale[j], `${what} column ${j}: ${got[j]} vs float64 ${want[j]} (scale ${scale[j]})`);
}

for (const be of await testBackends())
  describe(`column reductions on backend ${be.name}`, () => {
    test('biasBackward and rmsnorm dw against float64, many rows x few columns and the reverse', async () =>
      withSeed(async (rng) => {
        for (const [t, n] of SHAPES) {
          const c: Case = {
            dy: randn(rng, t * n),
            x: randn(rng, t * n, 2),
            rstd: randn(rng, t).map((v) => 0.5 + Math.abs(v)),
            base: randn(rng, n),
          };
          const [db, dw] = await reduce(be, c, t, n);
          const wantB = Float64Array.from(c.base),
            scaleB = Float64Array.from(c.base, Math.abs);
          const wantW = Float64Array.from(c.base),
            scaleW = Float64Array.from(c.base, Math.abs);
          for (let r = 0; r < t; r++)
            for (let j = 0; j < n; j++) {
              const i = r * n + j;
              const term = c.dy[i] * c.x[i] * c.rstd[r]; // exact in float64 up to one rounding
              wantB[j] += c.dy[i];
              scaleB[j] += Math.abs(c.dy[i]);
              wantW[j] += term;
              scaleW[j] += Math.abs(term);
            }
          // native backends (float64 chunk sums): one f32 rounding of the sum and one of the add, 2^-23 of
          // the scale; WebGPU sums in f32 (no float64 in WGSL): t - 1 roundings of the running sum, two of
          // each term (dy x rstd), one of the add: (t + 2) 2^-24
          const tol = be.name === 'webgpu' ? (t + 2) * 2 ** -24 : 2 ** -23;
          checkColumns(`biasBackward [${t}, ${n}]`, db, wantB, scaleB, tol);
          checkColumns(`rmsnorm dw [${t}, ${n}]`, dw, wantW, scaleW, tol);
        }
      }));

    test('the bits of the CPU backend on the native backends (rows whose sum depends on the order too), and the same bits run to run', async () =>
      withSeed(async (rng) => {
        const cpu = cpuReference();
        for (const [t, n] of SHAPES) {
          const c: Case = {
            dy: cancelling(rng, t, n),
            x: new Float32Array(t * n).fill(1),
            rstd: new Float32Array(t).fill(1),
            base: randn(rng, n),
          };
          const first = await reduce(be, c, t, n);
          const again = await reduce(be, c, t, n);
          const want = be === cpu ? first : await reduce(cpu, c, t, n);
          for (const k of [0, 1]) {
            const name = ['biasBackward', 'rmsnorm dw'][k];
            assert.deepEqual(again[k], first[k], `${name} [${t}, ${n}]: run to run`);
            // the native backends (CPU, CUDA) share one order; WebGPU sums in its own (float64 above)
            if (be.name !== 'webgpu') assert.deepEqual(first[k], want[k], `${name} [${t}, ${n}]: the CPU backend's bits`);
          }
        }
      }));

    test('embeddingBackward: float64 and the CPU backend bit for bit, ids repeated, many tokens x few columns and the reverse', async () =>
      withSeed(async (rng) => {
        const cpu = cpuReference();
        for (const [t, h, vocab] of [
          [1, 1, 1],
          [300, 3, 5],
          [2000, 2, 700],
          [3, 2050, 4],
          [257, 300, 31],
        ]) {
          const ids = Int32Array.from({ length: t }, () => rng.int(0, vocab - 1));
          const dout = randn(rng, t * h);
          const base = randn(rng, vocab * h);
          const run = async (b: Backend) => {
            const table = ops.upload(b, { dtype: 'f32', data: base.slice() }, [vocab, h]);
            const idsT = ops.upload(b, { dtype: 'i32', data: ids }, [t]);
            const d = ops.upload(b, { dtype: 'f32', data: dout }, [t, h]);
            ops.embeddingBackward(idsT, d, table);
            const out = (await ops.read(table)) as Float32Array;
            for (const x of [table, idsT, d]) x.free();
            return out;
          };
          const got = await run(be);
          const want = Float64Array.from(base),
            scale = Float64Array.from(base, Math.abs);
          let most = 0;
          const count = new Int32Array(vocab);
          ids.forEach((id, r) => {
            most = Math.max(most, ++count[id]);
            for (let j = 0; j < h; j++) {
              want[id * h + j] += dout[r * h + j];
              scale[id * h + j] += Math.abs(dout[r * h + j]);
            }
          });
          // f32 adds in token order: one rounding per add
          checkColumns(`embeddingBackward [${t}, ${h}] vocab ${vocab}`, got, want, scale, (most + 1) * 2 ** -24);
          if (be !== cpu) assert.deepEqual(got, await run(cpu), `embeddingBackward [${t}, ${h}]: the CPU backend's bits`);
        }
      }));
  });
