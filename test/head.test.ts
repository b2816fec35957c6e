// The fused LM head (ops.headLogprob / headLogprobBackward) on every test backend against a float64
// reference written here from the definitions: z = h W^T (then c tanh(z / c) under a soft-cap),
// lse = log sum exp z, logp = z_y - lse; g = dlogp (1[j = y] - softmax(z)_j) (times 1 - tanh^2(z / c)),
// dh = g W, dW += g^T h. Also against the unfused path (ops.matmul + ops.logprobGather) on the same backend.
// Error norm: relErr (max |got - ref| / max |ref|) with a floor of the size of the numbers that were summed:
// logp and lse are differences and sums of logits, each an f32 dot product of hdim terms, so their floor is
// max_{r, j} sum_k |h_rk W_jk| (B below); the gradients' floor is max |dlogp| times the largest row of |W|
// (dh) or of |h| (dW), what one term of the sums they are can reach. Tolerance 1e-5 (f32 sums of <= 96 terms).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as ops from '../src/ops/index.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { Tensor } from '../src/tensor/tensor.js';
import type { Rng } from '../src/util/rng.js';
import { IGNORE, relErr } from './helpers/loss_ref.js';
import { testBackends } from './helpers/backends.js';
import { randn, withSeed } from './helpers/random.js';

const TOL = 1e-5;

/** float64 forward and backward of the fused head. */
function headRef(
  h: ArrayLike<number>,
  w: ArrayLike<number>,
  y: ArrayLike<number>,
  n: number,
  hd: number,
  v: number,
  softcap: number,
  dlogp?: ArrayLike<number>,
  roundG: (g: number) => number = (g) => g,
) {
  const logp = new Float64Array(n),
    lse = new Float64Array(n),
    dh = new Float64Array(n * hd),
    dw = new Float64Array(v * hd);
  let bound = 0;
  const z = new Float64Array(v),
    t = new Float64Array(v);
  for (let r = 0; r < n; r++) {
    if (y[r] === IGNORE) continue;
    for (let j = 0; j < v; j++) {
      let s = 0,
        a = 0;
      for (let k = 0; k < hd; k++) {
        s += h[r * hd + k] * w[j * hd + k];
        a += Math.abs(h[r * hd + k] * w[j * hd + k]);
      }
      bound = Math.max(bound, a);
      t[j] = softcap > 0 ? Math.tanh(s / softcap) : 0;
      z[j] = softcap > 0 ? softcap * t[j] : s;
    }
    const m = Math.max(...z);
    let sum = 0;
    for (let j = 0; j < v; j++) sum += Math.exp(z[j] - m);
    lse[r] = m + Math.log(sum);
    logp[r] = z[y[r]] - lse[r];
    if (!dlogp) continue;
    for (let j = 0; j < v; j++) {
      let g = dlogp[r] * ((j === y[r] ? 1 : 0) - Math.exp(z[j] - lse[r]));
      if (softcap > 0) g *= 1 - t[j] * t[j];
      g = roundG(g);
      if (g === 0) continue;
      for (let k = 0; k < hd; k++) {
        dh[r * hd + k] += g * w[j * hd + k];
        dw[j * hd + k] += g * h[r * hd + k];
      }
    }
  }
  return { logp, lse, dh, dw, bound };
}

const maxAbs = (a: ArrayLike<number>) => Array.from(a).reduce((m, x) => Math.max(m, Math.abs(x)), 1e-30);

for (const be of await testBackends()) {
  async function host(t: Tensor): Promise<Float32Array> {
    const d = await ops.read(t);
    return d instanceof Uint16Array ? bf16ArrayToF32(d) : Float32Array.from(d);
  }

  /** w [v, hd] as a tensor of `dtype` and its exact values. */
  function makeW(rng: Rng, v: number, hd: number, dtype: 'f32' | 'bf16', scale: number) {
    const f = randn(rng, v * hd, scale);
    if (dtype === 'f32') return { t: ops.upload(be, { dtype: 'f32', data: f }, [v, hd]) as Tensor, values: f };
    const b = f32ArrayToBf16(f);
    return { t: ops.upload(be, { dtype: 'bf16', data: b }, [v, hd]) as Tensor, values: bf16ArrayToF32(b) };
  }

  function makeCase(rng: Rng, dtype: 'f32' | 'bf16', opts: { n?: number; v?: number; hd?: number; scale?: number } = {}) {
    const n = opts.n ?? rng.int(1, 24);
    const hd = opts.hd ?? rng.int(1, 96);
    // vocabularies across the CPU's 2048-column panels (and small ones)
    const v = opts.v ?? [rng.int(1, 40), rng.int(2000, 2100), rng.int(4090, 4700)][rng.int(0, 2)];
    const scale = (opts.scale ?? [0.3, 1, 3][rng.int(0, 2)]) / Math.sqrt(hd);
    const hv = randn(rng, n * hd, 1);
    const w = makeW(rng, v, hd, dtype, scale * 3);
    const y = Int32Array.from({ length: n }, () => (rng.next() < 0.2 ? IGNORE : rng.int(0, v - 1)));
    return {
      n,
      hd,
      v,
      hv,
      w,
      y,
      h: ops.upload(be, { dtype: 'f32', data: hv }, [n, hd]),
      targets: ops.upload(be, { dtype: 'i32', data: y }, [n]),
      ctx: `n=${n} hd=${hd} v=${v} ${dtype}`,
    };
  }

  describe(`fused LM head on ${be.info().name}`, () => {
    for (const dtype of ['f32', 'bf16'] as const)
      for (const softcap of [0, 5])
        test(`${dtype} w${softcap ? ', soft-capped' : ''}: logp, lse, dh and dW match float64 (4 random shapes)`, () =>
          withSeed(async (rng) => {
            for (let k = 0; k < 4; k++) {
              const c = makeCase(rng, dtype);
              const dl = Float32Array.from({ length: c.n }, (_, r) => (c.y[r] === IGNORE ? 0 : rng.normal()));
              const ref = headRef(c.hv, c.w.values, c.y, c.n, c.hd, c.v, softcap, dl);
              // every other shape through the row-invariant products (the CPU's second forward path)
              const { logp, lse } = ops.headLogprob(c.h, c.w.t, c.targets, { softcap, rowInvariant: k % 2 === 1 });
              const floor = Math.max(ref.bound, maxAbs(ref.lse));
              const eLogp = relErr(await host(logp), ref.logp, floor);
              const eLse = relErr(await host(lse), ref.lse, floor);
              assert.ok(eLogp <= TOL && eLse <= TOL, `${c.ctx}: logp err ${eLogp}, lse err ${eLse}`);
              // dW accumulates onto what the buffer holds
              const dw0 = randn(rng, c.v * c.hd, 0.1);
              const dw = ops.upload(be, { dtype: 'f32', data: dw0 }, [c.v, c.hd]);
              const dlogp = ops.upload(be, { dtype: 'f32', data: dl }, [c.n]);
              const dh = ops.headLogprobBackward(c.h, c.w.t, c.targets, lse, dlogp, { softcap, dw });
              const gScale = maxAbs(dl);
              const eDh = relErr(await host(dh), ref.dh, gScale * maxAbs(c.w.values) * 2);
              const dwRef = Float64Array.from(ref.dw, (x, i) => x + dw0[i]);
              const eDw = relErr(await host(dw), dwRef, gScale * maxAbs(c.hv) * 2);
              assert.ok(eDh <= TOL && eDw <= TOL, `${c.ctx}: dh err ${eDh}, dW err ${eDw}`);
              for (const t of [logp, lse, dh, dw, dlogp, c.h, c.targets, c.w.t]) t.free();
            }
          }));

    test('equals the unfused head (matmul, then logprobGather) within f32 rounding, and dh without dW', () =>
      withSeed(async (rng) => {
        const c = makeCase(rng, 'bf16', { v: rng.int(2049, 4200) });
        const logits = ops.matmul(c.h, c.w.t, { transB: true });
        const unfused = ops.logprobGather(logits, c.targets);
        const fused = ops.headLogprob(c.h, c.w.t, c.targets);
        const ref = headRef(c.hv, c.w.values, c.y, c.n, c.hd, c.v, 0);
        const floor = Math.max(ref.bound, maxAbs(ref.lse));
        const e = relErr(await host(fused.logp), Float64Array.from(await host(unfused.logp)), floor);
        assert.ok(e <= TOL, `${c.ctx}: fused vs unfused logp err ${e}`);
        const dl = ops.upload(be, { dtype: 'f32', data: Float32Array.from(c.y, (t) => (t === IGNORE ? 0 : -1)) }, [c.n]);
        const dlogits = ops.logprobGatherBackward(logits, c.targets, unfused.lse, dl) as Tensor<'f32'>;
        const dhUnfused = ops.matmul(dlogits, c.w.t);
        const dh = ops.headLogprobBackward(c.h, c.w.t, c.targets, fused.lse, dl);
        const eDh = relErr(await host(dh), Float64Array.from(await host(dhUnfused)), maxAbs(c.w.values) * 2);
        assert.ok(eDh <= TOL, `${c.ctx}: fused vs unfused dh err ${eDh}`);
      }));

    test("rowInvariant: a row's logp and lse are bit for bit the same whatever rows share the call", () =>
      withSeed(async (rng) => {
        // n past the CPU's 256-row chunks, the vocabulary past a 2048-column panel
        const c = makeCase(rng, 'bf16', { n: rng.int(260, 330), v: rng.int(2049, 2300), hd: rng.int(8, 40) });
        const all = ops.headLogprob(c.h, c.w.t, c.targets, { rowInvariant: true });
        const [logpAll, lseAll] = [await host(all.logp), await host(all.lse)];
        for (let trial = 0; trial < 3; trial++) {
          const rows = Array.from({ length: rng.int(1, 40) }, () => rng.int(0, c.n - 1));
          const sub = new Float32Array(rows.length * c.hd);
          rows.forEach((r, i) => sub.set(c.hv.subarray(r * c.hd, (r + 1) * c.hd), i * c.hd));
          const h = ops.upload(be, { dtype: 'f32', data: sub }, [rows.length, c.hd]);
          const y = ops.upload(be, { dtype: 'i32', data: Int32Array.from(rows, (r) => c.y[r]) }, [rows.length]);
          const part = ops.headLogprob(h, c.w.t, y, { rowInvariant: true });
          const [lp, ls] = [await host(part.logp), await host(part.lse)];
          rows.forEach((r, i) => {
            assert.ok(
              Object.is(lp[i], logpAll[r]) && Object.is(ls[i], lseAll[r]),
              `row ${r} at ${i} of ${rows.length}: ${lp[i]} vs ${logpAll[r]}`,
            );
          });
        }
      }));

    test('bf16 compute rounds h to bf16 first (the products of bf16 values, f32 sums)', () =>
      withSeed(async (rng) => {
        const c = makeCase(rng, 'bf16');
        const rounded = bf16ArrayToF32(f32ArrayToBf16(c.hv));
        const ref = headRef(rounded, c.w.values, c.y, c.n, c.hd, c.v, 0);
        const { logp } = ops.headLogprob(c.h, c.w.t, c.targets, { computeDtype: 'bf16' });
        const e = relErr(await host(logp), ref.logp, Math.max(ref.bound, maxAbs(ref.lse)));
        assert.ok(e <= TOL, `${c.ctx}: err ${e}`);
      }));

    test('bf16 compute for training: h and an f32 w rounded; backward with h, w and g rounded (float64 of that)', () =>
      withSeed(async (rng) => {
        // logits of a few units (scale 3): w's rounding moves logp well past the tolerance
        const c = makeCase(rng, 'f32', { n: rng.int(2, 16), v: rng.int(2049, 2300), hd: rng.int(8, 48), scale: 3 });
        const softcap = rng.next() < 0.5 ? 0 : 3;
        const round = (x: ArrayLike<number>) => bf16ArrayToF32(f32ArrayToBf16(Float32Array.from(x)));
        const bf16 = (g: number) => round([g])[0];
        const hr = round(c.hv),
          wr = round(c.w.values);
        const dlogp = randn(rng, c.n);
        const ref = headRef(hr, wr, c.y, c.n, c.hd, c.v, softcap, dlogp, bf16);
        const opts = { computeDtype: 'bf16', softcap } as const;
        const { logp, lse } = ops.headLogprob(c.h, c.w.t, c.targets, opts);
        const floor = Math.max(ref.bound, maxAbs(ref.lse));
        const e = relErr(await host(logp), ref.logp, floor);
        assert.ok(e <= TOL, `${c.ctx} softcap=${softcap}: logp err ${e}`);
        // w's rounding shows: the result is far nearer the rounded-w reference than the unrounded one
        const got = await host(logp);
        const eU = relErr(got, headRef(hr, c.w.values, c.y, c.n, c.hd, c.v, softcap).logp, floor);
        assert.ok(eU > 4 * e, `${c.ctx}: w was not rounded (error ${e}, to the unrounded-w reference ${eU})`);
        const dw = ops.zeros(be, 'f32', [c.v, c.hd]);
        const dl = ops.upload(be, { dtype: 'f32', data: dlogp }, [c.n]);
        const dh = ops.headLogprobBackward(c.h, c.w.t, c.targets, lse, dl, { ...opts, dw });
        // RMS error (a rare g on the other side of a bf16 rounding boundary than float64's costs one
        // term's ulp; measured ~2e-7): 3e-5; g's rounding shows as ~1e-3: the result must be 4x nearer
        // the rounded-g reference than the unrounded one (a kernel that skips it fails)
        const rms = (a: ArrayLike<number>, b: ArrayLike<number>) => {
          let d = 0,
            r = 1e-300;
          for (let i = 0; i < b.length; i++) {
            d += (a[i] - b[i]) ** 2;
            r += b[i] ** 2;
          }
          return Math.sqrt(d / r);
        };
        const plain = headRef(hr, wr, c.y, c.n, c.hd, c.v, softcap, dlogp);
        for (const [name, got, want, unroundedG] of [
          ['dh', await host(dh), ref.dh, plain.dh],
          ['dw', await host(dw), ref.dw, plain.dw],
        ] as const) {
          const err = rms(got, want);
          assert.ok(err <= 3e-5, `${c.ctx} softcap=${softcap}: ${name} RMS err ${err}`);
          const eU = rms(got, unroundedG);
          assert.ok(eU > 4 * err, `${c.ctx}: ${name}: g was not rounded (RMS error ${err}, to the unrounded-g reference ${eU})`);
        }
      }));

    test('ignored rows give 0, 0 and no gradient; no rows is no work', async () => {
      const h = ops.upload(be, { dtype: 'f32', data: Float32Array.from([1, 2, 3, 4]) }, [2, 2]);
      const w = ops.upload(be, { dtype: 'f32', data: Float32Array.from([1, 0, 0, 1, 1, 1]) }, [3, 2]);
      const y = ops.upload(be, { dtype: 'i32', data: Int32Array.from([IGNORE, IGNORE]) }, [2]);
      const { logp, lse } = ops.headLogprob(h, w, y);
      assert.deepEqual([...(await host(logp)), ...(await host(lse))], [0, 0, 0, 0]);
      const dw = ops.zeros(be, 'f32', [3, 2]);
      const dl = ops.upload(be, { dtype: 'f32', data: Float32Array.from([1, 1]) }, [2]);
      const dh = ops.headLogprobBackward(h, w, y, lse, dl, { dw });
      assert.deepEqual([...(await host(dh)), ...(await host(dw))], new Array(10).fill(0));
      const none = ops.headLogprob(ops.empty(be, 'f32', [0, 2]), w, ops.empty(be, 'i32', [0]));
      assert.equal(none.logp.numel, 0);
    });

    test('a target outside the vocabulary poisons the outputs and is reported on read; bad shapes are clear errors', async () => {
      const h = ops.upload(be, { dtype: 'f32', data: Float32Array.from([1, 2]) }, [1, 2]);
      const w = ops.upload(be, { dtype: 'f32', data: Float32Array.from([1, 0, 0, 1]) }, [2, 2]);
      const bad = ops.upload(be, { dtype: 'i32', data: Int32Array.from([2]) }, [1]);
      const { logp } = ops.headLogprob(h, w, bad);
      await assert.rejects(ops.read(logp), /target is outside/);
      assert.throws(() => ops.headLogprob(h, w.reshape([1, 4]), bad), /must have 2 columns/);
      assert.throws(
        () => ops.headLogprob(h, w, ops.upload(be, { dtype: 'i32', data: Int32Array.from([0, 1]) }, [2])),
        /targets must have shape/,
      );
      assert.throws(() => ops.headLogprob(h, w, bad, { softcap: -1 }), /softcap must be > 0/);
      const ok = ops.upload(be, { dtype: 'i32', data: Int32Array.from([1]) }, [1]);
      const f = ops.headLogprob(h, w, ok);
      assert.throws(() => ops.headLogprobBackward(h, w, ok, f.lse, f.logp, { dw: ops.zeros(be, 'f32', [3, 2]) }), /dw must have shape/);
    });
  });
}
