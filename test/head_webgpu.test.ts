// The fused LM head's WebGPU panels and row chunks (src/backend/webgpu/head.ts) where test/head.test.ts's
// shapes do not reach them: under a forced 2 MiB binding size a row of 1100 f32 leaves panels of 384
// vocabulary columns and chunks of 448 rows, and 24-wide rows chunks of 256 rows across 2048-column panels.
// Results against the CPU backend (itself checked against float64 in test/head.test.ts) with head.test.ts's
// norm: relErr with a floor of max_{r, j} sum_k |h_rk W_jk| for logp and lse, max |dlogp| x 2 max |W| (dh)
// or 2 max |h| (dW) for the gradients; tolerance 1e-5. Also: a row's result is the same bit for bit
// whether its call has one row chunk or several, and a second call makes no new buffers (the scratch
// goes back to the pool), and a bad target in the backward is reported as in the forward. This backend also has no optional features, so the panel log-sum-exp takes the
// workgroup tree (test/head.test.ts's default backend takes the subgroup path where the adapter has one).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Backend } from '../src/backend/backend.js';
import { WebGpuBackend } from '../src/backend/webgpu/webgpu_backend.js';
import * as ops from '../src/ops/index.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { Tensor } from '../src/tensor/tensor.js';
import type { Rng } from '../src/util/rng.js';
import { cpuReference, testBackends } from './helpers/backends.js';
import { IGNORE, relErr } from './helpers/loss_ref.js';
import { randn, withSeed } from './helpers/random.js';

const TOL = 1e-5;
const cpu = cpuReference();

async function host(t: Tensor): Promise<Float32Array> {
  const d = await ops.read(t);
  return d instanceof Uint16Array ? bf16ArrayToF32(d) : Float32Array.from(d);
}

const maxAbs = (a: ArrayLike<number>) => Array.from(a).reduce((m, x) => Math.max(m, Math.abs(x)), 1e-30);

/** max over counted rows r and columns j of sum_k |h_rk W_jk|. */
function dotBound(h: Float32Array, w: Float32Array, y: Int32Array, hd: number): number {
  let b = 0;
  for (let r = 0; r < y.length; r++) {
    if (y[r] === IGNORE) continue;
    for (let j = 0; j < w.length / hd; j++) {
      let s = 0;
      for (let k = 0; k < hd; k++) s += Math.abs(h[r * hd + k] * w[j * hd + k]);
      b = Math.max(b, s);
    }
  }
  return b;
}

interface Case {
  hv: Float32Array;
  wv: Float32Array;
  wBits: Float32Array | Uint16Array;
  y: Int32Array;
  dl: Float32Array;
  dw0: Float32Array;
  shape: [number, number, number];
  dtype: 'f32' | 'bf16';
}

function makeCase(rng: Rng, n: number, hd: number, v: number, dtype: 'f32' | 'bf16'): Case {
  const f = randn(rng, v * hd, 3 / Math.sqrt(hd));
  const wBits = dtype === 'f32' ? f : f32ArrayToBf16(f);
  const y = Int32Array.from({ length: n }, () => (rng.next() < 0.2 ? IGNORE : rng.int(0, v - 1)));
  return {
    hv: randn(rng, n * hd, 1),
    wv: dtype === 'f32' ? f : bf16ArrayToF32(wBits as Uint16Array),
    wBits,
    y,
    dl: Float32Array.from(y, (t) => (t === IGNORE ? 0 : rng.normal())),
    dw0: randn(rng, v * hd, 0.1),
    shape: [n, hd, v],
    dtype,
  };
}

/** Forward and backward (dW accumulated onto dw0) of a case on one backend, read back. */
async function run(be: Backend, c: Case, softcap: number) {
  const [n, hd, v] = c.shape;
  const h = ops.upload(be, { dtype: 'f32', data: c.hv }, [n, hd]);
  const w = ops.upload(be, { dtype: c.dtype, data: c.wBits } as never, [v, hd]) as Tensor;
  const y = ops.upload(be, { dtype: 'i32', data: c.y }, [n]);
  const { logp, lse } = ops.headLogprob(h, w, y, { softcap });
  const dw = ops.upload(be, { dtype: 'f32', data: c.dw0 }, [v, hd]);
  const dlogp = ops.upload(be, { dtype: 'f32', data: c.dl }, [n]);
  const dh = ops.headLogprobBackward(h, w, y, lse, dlogp, { softcap, dw });
  const out = { logp: await host(logp), lse: await host(lse), dh: await host(dh), dw: await host(dw) };
  for (const t of [h, w, y, logp, lse, dw, dlogp, dh]) t.free();
  return out;
}

async function check(small: Backend, c: Case, softcap: number): Promise<void> {
  const got = await run(small, c, softcap);
  const want = await run(cpu, c, softcap);
  const ctx = `[n, hd, v] = [${c.shape.join(', ')}] ${c.dtype}${softcap ? ' soft-capped' : ''}`;
  const floor = Math.max(dotBound(c.hv, c.wv, c.y, c.shape[1]), maxAbs(want.lse));
  const eLogp = relErr(got.logp, want.logp, floor);
  const eLse = relErr(got.lse, want.lse, floor);
  assert.ok(eLogp <= TOL && eLse <= TOL, `${ctx}: logp err ${eLogp}, lse err ${eLse}`);
  const g = maxAbs(c.dl);
  const eDh = relErr(got.dh, want.dh, g * maxAbs(c.wv) * 2);
  const eDw = relErr(got.dw, want.dw, g * maxAbs(c.hv) * 2);
  assert.ok(eDh <= TOL && eDw <= TOL, `${ctx}: dh err ${eDh}, dW err ${eDw}`);
}

for (const be of await testBackends()) {
  if (!(be instanceof WebGpuBackend)) continue;

  describe('webgpu fused head: panels and row chunks under a forced 2 MiB binding size, no subgroups', async () => {
    const small = await WebGpuBackend.create({ poison: true, maxBindingBytes: 2 ** 21, noOptionalFeatures: true });

    test('narrow panels (384 columns of 1100-wide rows) in two row chunks, bf16 w, soft-capped', () =>
      withSeed((rng) => check(small, makeCase(rng, rng.int(449, 470), 1100, rng.int(385, 420), 'bf16'), 5)));

    test('2048-column panels in row chunks of 256 (f32 w), one row chunk or several give the same bits', () =>
      withSeed(async (rng) => {
        const c = makeCase(rng, rng.int(257, 300), 24, rng.int(2049, 2200), 'f32');
        await check(small, c, 0);
        const [n, hd, v] = c.shape;
        const w = ops.upload(small, { dtype: 'f32', data: c.wv }, [v, hd]);
        const all = ops.headLogprob(
          ops.upload(small, { dtype: 'f32', data: c.hv }, [n, hd]),
          w,
          ops.upload(small, { dtype: 'i32', data: c.y }, [n]),
        );
        const [lpAll, lsAll] = [await host(all.logp), await host(all.lse)];
        const rows = Array.from({ length: 20 }, () => rng.int(0, n - 1));
        const sub = new Float32Array(rows.length * hd);
        rows.forEach((r, i) => sub.set(c.hv.subarray(r * hd, (r + 1) * hd), i * hd));
        const part = ops.headLogprob(
          ops.upload(small, { dtype: 'f32', data: sub }, [rows.length, hd]),
          w,
          ops.upload(small, { dtype: 'i32', data: Int32Array.from(rows, (r) => c.y[r]) }, [rows.length]),
        );
        const [lp, ls] = [await host(part.logp), await host(part.lse)];
        rows.forEach((r, i) => assert.ok(Object.is(lp[i], lpAll[r]) && Object.is(ls[i], lsAll[r]), `row ${r}: ${lp[i]} vs ${lpAll[r]}`));
      }));

    test('a target outside the vocabulary in the backward is reported on read', async () => {
      const h = ops.upload(small, { dtype: 'f32', data: Float32Array.from([1, 2, 3, 4]) }, [2, 2]);
      const w = ops.upload(small, { dtype: 'f32', data: Float32Array.from([1, 0, 0, 1, 1, 1]) }, [3, 2]);
      const y = ops.upload(small, { dtype: 'i32', data: Int32Array.from([1, 3]) }, [2]);
      const lse = ops.upload(small, { dtype: 'f32', data: Float32Array.from([1, 1]) }, [2]);
      const dl = ops.upload(small, { dtype: 'f32', data: Float32Array.from([1, 1]) }, [2]);
      const dh = ops.headLogprobBackward(h, w, y, lse, dl);
      await assert.rejects(ops.read(dh), /target is outside/);
    });

    test('the scratch goes back to the pool: a second call makes no new buffers', () =>
      withSeed(async (rng) => {
        const c = makeCase(rng, 300, 24, 2100, 'bf16');
        await run(small, c, 5);
        const live = small.liveBuffers;
        await run(small, c, 5);
        assert.equal(small.liveBuffers, live);
      }));
  });
}
