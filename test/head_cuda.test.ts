// The fused LM head's CUDA kernels (native/cuda/head.cu) under the emulator, where test/head.test.ts
// (float64 references, every backend) does not reach: rows past one 4096-row chunk (the CUDA chunk; the
// CPU's is 256) with two vocabulary panels, and a bad target's device-side handling (its row only is
// poisoned, the error word is raised). Compared with the CPU backend, which head.test.ts checks against
// float64; error norm relErr (max |got - ref| / max |ref|, floors as in head.test.ts), tolerance 1e-5.
// Needs the cmake-js build (build-cmake/Release/spinlm_cuda_emu.node), as test/cuda_emu.test.ts does.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import type { Backend } from '../src/backend/backend.js';
import * as ops from '../src/ops/index.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import { cpuReference } from './helpers/backends.js';
import { IGNORE, relErr } from './helpers/loss_ref.js';
import { randn, withSeed } from './helpers/random.js';

const emu = new CudaBackend({ emulated: true, poison: true });
const cpu = cpuReference();
const TOL = 1e-5;
const CHUNK = 4096; // rows per chunk in head.cu (kRows)
const PANEL = 2048; // vocabulary columns per panel in head.cu (kPanel)

const maxAbs = (a: ArrayLike<number>) => Array.from(a).reduce((m, x) => Math.max(m, Math.abs(x)), 1e-30);
const f32 = (be: Backend, data: Float32Array, shape: number[]) => ops.upload(be, { dtype: 'f32', data }, shape);
const i32 = (be: Backend, data: Int32Array, shape: number[]) => ops.upload(be, { dtype: 'i32', data }, shape);
const bf16 = (be: Backend, data: Uint16Array, shape: number[]) => ops.upload(be, { dtype: 'bf16', data }, shape);

describe('fused LM head on CUDA (emulated): row chunks and device-side target checks', () => {
  test('rows past one 4096-row chunk, two vocabulary panels, bf16 w, soft-cap: logp, lse, dh and dW equal the CPU backend; rows either side of the chunk edge equal calls of their own bit for bit', () =>
    withSeed(async (rng) => {
      const n = CHUNK + rng.int(1, 24),
        hd = rng.int(1, 4),
        v = rng.int(PANEL + 1, PANEL + 40),
        softcap = [0, 5][rng.int(0, 1)];
      const ctx = `n=${n} hd=${hd} v=${v} softcap=${softcap}`;
      const hv = randn(rng, n * hd, 1);
      const wb = f32ArrayToBf16(randn(rng, v * hd, 3 / Math.sqrt(hd)));
      const y = Int32Array.from({ length: n }, () => (rng.next() < 0.2 ? IGNORE : rng.int(0, v - 1)));
      const dl = Float32Array.from(y, (t) => (t === IGNORE ? 0 : rng.normal()));
      const dw0 = randn(rng, v * hd, 0.1);
      const run = async (be: Backend) => {
        const h = f32(be, hv, [n, hd]),
          w = bf16(be, wb, [v, hd]),
          t = i32(be, y, [n]);
        const { logp, lse } = ops.headLogprob(h, w, t, { softcap });
        const dw = f32(be, dw0, [v, hd]);
        const dh = ops.headLogprobBackward(h, w, t, lse, f32(be, dl, [n]), { softcap, dw });
        return { logp: await ops.read(logp), lse: await ops.read(lse), dh: await ops.read(dh), dw: await ops.read(dw), w };
      };
      const [a, b] = [await run(emu), await run(cpu)];
      const floor = maxAbs(b.lse);
      for (const k of ['logp', 'lse'] as const) {
        const e = relErr(a[k], Float64Array.from(b[k]), floor);
        assert.ok(e <= TOL, `${ctx}: ${k} err ${e}`);
      }
      const g = maxAbs(dl);
      const eDh = relErr(a.dh, Float64Array.from(b.dh), g * maxAbs(bf16ArrayToF32(wb)) * 2);
      const eDw = relErr(a.dw, Float64Array.from(b.dw), g * maxAbs(hv) * 2);
      assert.ok(eDh <= TOL && eDw <= TOL, `${ctx}: dh err ${eDh}, dW err ${eDw}`);
      // The last rows of the first chunk and the rows of the second, in a call of their own.
      const rows = [CHUNK - 2, CHUNK - 1, CHUNK, n - 1];
      const sub = new Float32Array(rows.length * hd);
      rows.forEach((r, i) => sub.set(hv.subarray(r * hd, (r + 1) * hd), i * hd));
      const part = ops.headLogprob(
        f32(emu, sub, [rows.length, hd]),
        a.w,
        i32(
          emu,
          Int32Array.from(rows, (r) => y[r]),
          [rows.length],
        ),
        { softcap },
      );
      const [lp, ls] = [await ops.read(part.logp), await ops.read(part.lse)];
      rows.forEach((r, i) =>
        assert.ok(Object.is(lp[i], a.logp[r]) && Object.is(ls[i], a.lse[r]), `${ctx}: row ${r}: ${lp[i]} vs ${a.logp[r]}`),
      );
    }));

  test("a bad target poisons its row only (forward: logp, lse; backward: its dh row and dW) and raises the op's error", () =>
    withSeed(async (rng) => {
      const n = 5,
        hd = rng.int(1, 8),
        v = rng.int(PANEL + 1, PANEL + 40),
        bad = rng.int(0, n - 1);
      const h = f32(emu, randn(rng, n * hd), [n, hd]);
      const w = f32(emu, randn(rng, v * hd, 1 / Math.sqrt(hd)), [v, hd]);
      const good = Int32Array.from({ length: n }, () => rng.int(0, v - 1));
      const y = Int32Array.from(good, (t, r) => (r === bad ? [v, -1, v + PANEL][rng.int(0, 2)] : t));
      const { logp, lse } = ops.headLogprob(h, w, i32(emu, y, [n]));
      const [p, l] = [await emu.read(logp), await emu.read(lse)];
      assert.notEqual(await emu.takeErrors(), 0);
      const clean = ops.headLogprob(h, w, i32(emu, good, [n]));
      const [pc, lc] = [await ops.read(clean.logp), await ops.read(clean.lse)];
      for (let r = 0; r < n; r++) {
        if (r === bad) assert.ok(Number.isNaN(p[r]) && Number.isNaN(l[r]), `row ${r}: ${p[r]}, ${l[r]}`);
        else assert.ok(Object.is(p[r], pc[r]) && Object.is(l[r], lc[r]), `row ${r}: ${p[r]} vs ${pc[r]}`);
      }
      const dw = ops.zeros(emu, 'f32', [v, hd]);
      const dh = ops.headLogprobBackward(h, w, i32(emu, y, [n]), clean.lse, f32(emu, new Float32Array(n).fill(1), [n]), { dw });
      const got = await emu.read(dh);
      assert.notEqual(await emu.takeErrors(), 0);
      for (let r = 0; r < n; r++) {
        const row = Array.from(got.subarray(r * hd, (r + 1) * hd));
        assert.ok(r === bad ? row.every(Number.isNaN) : row.every(Number.isFinite), `dh row ${r}: ${row}`);
      }
      assert.ok(Array.from(await emu.read(dw)).every(Number.isNaN), 'dW is poisoned');
      const again = ops.headLogprob(h, w, i32(emu, y, [n]));
      await assert.rejects(ops.read(again.logp), (e: Error) => e instanceof RangeError && /target is outside/.test(e.message));
    }));
});
