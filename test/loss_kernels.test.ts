// The log-prob / SPIN loss kernels of every backend against the float64 reference (test/helpers/loss_ref.ts).
// Error norm: max |got - ref| / max |ref| over the whole output (relErr).
// Tolerances (issue 2): logp and loss <= 1e-6 for f32 logits, <= 1e-5 for bf16 logits; gradients <= 1e-5
// (f32 outputs), one bf16 rounding (2^-8) for bf16 outputs.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { SPIN_LOSS_ROWS } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { freeSpinLossContext, spinLossBackward, spinLossForward, spinLossMetrics } from '../src/spin/loss.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { Tensor } from '../src/tensor/tensor.js';
import type { Rng } from '../src/util/rng.js';
import {
  IGNORE, logprobGatherBackwardRef, logprobGatherRef, relErr, sequenceLogprobRef, spinLossRef,
} from './helpers/loss_ref.js';
import { randn, withSeed } from './helpers/random.js';

const be = new CpuBackend({ poison: true });
const BF16_EPS = 2 ** -8;

type LogitsDType = 'f32' | 'bf16';

/** Random logits [n, v] and their exact f32 values (bf16 logits are rounded first). */
function makeLogits(rng: Rng, n: number, v: number, dtype: LogitsDType, scale: number) {
  const f = randn(rng, n * v, scale);
  if (dtype === 'f32') return { t: be.upload({ dtype: 'f32', data: f }, [n, v]) as Tensor, values: f };
  const h = f32ArrayToBf16(f);
  return { t: be.upload({ dtype: 'bf16', data: h }, [n, v]) as Tensor, values: bf16ArrayToF32(h) };
}

function makeTargets(rng: Rng, n: number, v: number, ignoreFraction: number) {
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) y[i] = rng.next() < ignoreFraction ? IGNORE : rng.int(0, v - 1);
  return { t: be.upload({ dtype: 'i32', data: y }, [n]), values: y };
}

/** Host values of a tensor as f32 (bf16 widened). */
function host(t: Tensor): Float32Array {
  const d = be.readSync(t);
  return d instanceof Uint16Array ? bf16ArrayToF32(d) : Float32Array.from(d);
}

function randomShape(rng: Rng) {
  // V deliberately not a multiple of the 16-lane vectors in most draws; occasionally tiny.
  const n = rng.int(1, 48);
  const v = rng.next() < 0.15 ? rng.int(1, 20) : rng.int(17, 3000);
  const scale = [0.5, 3, 30][rng.int(0, 2)];
  return { n, v, scale };
}

describe('logprobGather', () => {
  for (const dtype of ['f32', 'bf16'] as const) {
    test(`${dtype} logits: logp and lse match float64 (10 random shapes)`, () =>
      withSeed((rng) => {
        const tol = dtype === 'f32' ? 1e-6 : 1e-5;
        for (let k = 0; k < 10; k++) {
          const { n, v, scale } = randomShape(rng);
          const z = makeLogits(rng, n, v, dtype, scale);
          const y = makeTargets(rng, n, v, 0.2);
          const { logp, lse } = be.logprobGather(z.t, y.t);
          const ref = logprobGatherRef(z.values, n, v, y.values);
          const ctx = `n=${n} v=${v} scale=${scale}`;
          assert.ok(relErr(host(logp), ref.logp) <= tol, `logp ${ctx}: err ${relErr(host(logp), ref.logp)}`);
          assert.ok(relErr(host(lse), ref.lse) <= tol, `lse ${ctx}: err ${relErr(host(lse), ref.lse)}`);
        }
      }));
  }

  test('same result on 1 and 2 threads, bit for bit', () =>
    withSeed((rng) => {
      const z = makeLogits(rng, 33, 1000, 'f32', 4);
      const y = makeTargets(rng, 33, 1000, 0.1);
      const saved = be.threads;
      try {
        be.threads = 1;
        const a = be.logprobGather(z.t, y.t);
        be.threads = 2;
        const b = be.logprobGather(z.t, y.t);
        assert.deepEqual(be.readSync(a.logp), be.readSync(b.logp));
        assert.deepEqual(be.readSync(a.lse), be.readSync(b.lse));
      } finally {
        be.threads = saved;
      }
    }));

  test('extreme logits: +-1e4 and -inf entries', () =>
    withSeed((rng) => {
      const n = 6, v = 37;
      const f = randn(rng, n * v, 2);
      for (let j = 0; j < v; j += 3) f[0 * v + j] = -Infinity; // row 0: many -inf
      f[1 * v + 5] = 1e4; // row 1: one dominant logit
      f[2 * v + 7] = -1e4; // row 2: target is extremely unlikely
      for (let j = 0; j < v; j++) f[3 * v + j] = j % 2 ? 1e4 : -1e4; // row 3: half +1e4
      f[4 * v + 9] = -Infinity; // row 4: target is -inf
      const y = new Int32Array([1, 5, 7, 2, 9, 0]);
      const z = be.upload({ dtype: 'f32', data: f }, [n, v]);
      const { logp, lse } = be.logprobGather(z, be.upload({ dtype: 'i32', data: y }, [n]));
      const ref = logprobGatherRef(f, n, v, y);
      const got = host(logp);
      assert.equal(got[4], -Infinity);
      assert.equal(ref.logp[4], -Infinity);
      assert.ok(got.every((x, i) => i === 4 || Number.isFinite(x)), `finite except row 4: ${got}`);
      assert.ok(relErr(got, ref.logp) <= 1e-6, `logp err ${relErr(got, ref.logp)}`);
      assert.ok(relErr(host(lse), ref.lse) <= 1e-6);
    }));

  test('V = 1 gives logp = 0 exactly', () => {
    const z = be.upload({ dtype: 'f32', data: new Float32Array([3.5, -2, 40]) }, [3, 1]);
    const { logp, lse } = be.logprobGather(z, be.upload({ dtype: 'i32', data: new Int32Array([0, 0, 0]) }, [3]));
    assert.deepEqual(Array.from(host(logp)), [0, 0, 0]);
    assert.deepEqual(Array.from(host(lse)), [3.5, -2, 40]);
  });

  test('N = 0 gives empty outputs', () => {
    const { logp, lse } = be.logprobGather(be.empty('bf16', [0, 32000]), be.empty('i32', [0]));
    assert.equal(logp.numel, 0);
    assert.equal(lse.numel, 0);
  });

  test('bad targets and shapes are clear errors, not crashes', () => {
    const z = be.upload({ dtype: 'f32', data: new Float32Array(12) }, [3, 4]);
    const t = (vals: number[]) => be.upload({ dtype: 'i32', data: new Int32Array(vals) }, [vals.length]);
    assert.throws(() => be.logprobGather(z, t([0, 4, 1])), /targets\[1\] = 4 is outside \[0, 4\)/);
    assert.throws(() => be.logprobGather(z, t([0, -1, 1])), /targets\[1\] = -1/);
    assert.throws(() => be.logprobGather(z, t([0, 1])), /one entry per logits row \(3\)/);
    assert.throws(() => be.logprobGather(z, z as never), /targets must have dtype i32/);
    assert.throws(() => be.logprobGather(z.reshape([12]), t([0])), /logits must have 2 dimension/);
    const freed = be.upload({ dtype: 'f32', data: new Float32Array(4) }, [1, 4]);
    freed.free();
    assert.throws(() => be.logprobGather(freed, t([0])), /used after free/);
    assert.throws(() => be.native.logprobGather({ handle: {}, byteOffset: 0 }, 'f32', 1, 4, t([0]), z, z), /not a spinlm buffer handle/);
    assert.throws(() => be.native.logprobGather(z, 'f32', 4, 4, t([0, 0, 0, 0]), z, z), /overrun its buffer/);
  });

  test('element offsets past 2^31 are computed in 64 bits', () => {
    // 70000 rows x 152064 vocab: the last row starts at 10,644,328,064 elements, far past 2^31 and 2^32.
    assert.equal(be.native.rowOffset(69999, 152064), 69999n * 152064n);
    assert.equal(be.native.rowOffset(2 ** 31, 3), BigInt(2 ** 31) * 3n);
    assert.throws(() => be.native.logprobGather(be.empty('f32', [1]), 'f32', 2 ** 40, 2 ** 30, be.empty('i32', [1]), be.empty('f32', [1]), be.empty('f32', [1])), /overflows 64 bits|overrun/);
  });
});

describe('logprobGatherBackward', () => {
  for (const inDt of ['f32', 'bf16'] as const) {
    for (const outDt of ['f32', 'bf16'] as const) {
      test(`${inDt} logits -> ${outDt} dlogits match float64`, () =>
        withSeed((rng) => {
          for (let k = 0; k < 6; k++) {
            const { n, v, scale } = randomShape(rng);
            const z = makeLogits(rng, n, v, inDt, scale);
            const y = makeTargets(rng, n, v, 0.25);
            const dlogp = randn(rng, n, 0.7);
            const { lse } = be.logprobGather(z.t, y.t);
            const d = be.upload({ dtype: 'f32', data: dlogp }, [n]);
            const got = host(be.logprobGatherBackward(z.t, y.t, lse, d, { dtype: outDt }));
            const ref = logprobGatherBackwardRef(z.values, n, v, y.values, dlogp);
            const tol = outDt === 'f32' ? 1e-5 : BF16_EPS;
            assert.ok(relErr(got, ref) <= tol, `n=${n} v=${v} scale=${scale}: err ${relErr(got, ref)}`);
            for (let r = 0; r < n; r++) {
              if (y.values[r] !== IGNORE) continue;
              for (let j = 0; j < v; j++) assert.ok(Object.is(got[r * v + j], 0), `ignored row ${r} not +0 at ${j}`);
            }
          }
        }));
    }
    test(`${inDt}: in place over the logits equals out of place`, () =>
      withSeed((rng) => {
        const n = 19, v = 517;
        const z = makeLogits(rng, n, v, inDt, 3);
        const y = makeTargets(rng, n, v, 0.2);
        const d = be.upload({ dtype: 'f32', data: randn(rng, n) }, [n]);
        const { lse } = be.logprobGather(z.t, y.t);
        const separate = be.readSync(be.logprobGatherBackward(z.t, y.t, lse, d));
        const same = be.logprobGatherBackward(z.t, y.t, lse, d, { out: z.t });
        assert.equal(same, z.t);
        assert.deepEqual(be.readSync(same), separate);
      }));
  }

  test('target column when p_y is close to 1 (1 - p_y as -expm1(logp_y))', () => {
    // Row 0: 1 - p_y = 1.8e-5, where 1 - exp(logp) in fp32 would lose about 3 digits.
    const f = new Float32Array([0, -12, -12, -12, 5, 0, 0, 0]);
    const z = be.upload({ dtype: 'f32', data: f }, [2, 4]);
    const y = be.upload({ dtype: 'i32', data: new Int32Array([0, 1]) }, [2]);
    const { lse } = be.logprobGather(z, y);
    const got = host(be.logprobGatherBackward(z, y, lse, be.upload({ dtype: 'f32', data: new Float32Array([1, 1]) }, [2])));
    const ref = logprobGatherBackwardRef(f, 2, 4, [0, 1], [1, 1]);
    assert.ok(Math.abs(got[0] - ref[0]) <= 1e-2 * Math.abs(ref[0]), `${got[0]} vs ${ref[0]}`);
    assert.ok(relErr(got, ref) <= 1e-6);
  });

  test('every row ignored: zero gradient, no NaN', () => {
    const z = be.upload({ dtype: 'bf16', data: f32ArrayToBf16(new Float32Array(5 * 40).map((_, i) => Math.sin(i) * 9)) }, [5, 40]);
    const y = be.upload({ dtype: 'i32', data: new Int32Array(5).fill(IGNORE) }, [5]);
    const { logp, lse } = be.logprobGather(z, y);
    assert.deepEqual(Array.from(host(logp)), [0, 0, 0, 0, 0]);
    const g = host(be.logprobGatherBackward(z, y, lse, be.upload({ dtype: 'f32', data: new Float32Array(5).fill(3) }, [5]), { dtype: 'f32' }));
    assert.ok(g.every((x) => x === 0));
  });

  test('overlapping but not in-place output is refused', () => {
    const big = be.upload({ dtype: 'f32', data: new Float32Array(3 * 8).fill(1) }, [3, 8]);
    const z = big.view(0, [2, 8]);
    const y = be.upload({ dtype: 'i32', data: new Int32Array([1, 2]) }, [2]);
    const { lse } = be.logprobGather(z, y);
    const d = be.upload({ dtype: 'f32', data: new Float32Array([1, 1]) }, [2]);
    assert.throws(() => be.native.logprobGatherBackward(z, 'f32', 2, 8, y, lse, d, { handle: z.handle, byteOffset: 4 }, 'f32'), /overlaps logits/);
    assert.throws(() => be.logprobGatherBackward(z, y, lse, d, { out: be.empty('f32', [2, 7]) }), /out must have shape \[2, 8\]/);
  });
});

describe('sequenceLogprob and spinLoss', () => {
  test('sequence sums match float64 and the backward scatters', () =>
    withSeed((rng) => {
      const n = 500, s = 13;
      const logp = randn(rng, n, 2);
      const seg = new Int32Array(n).map(() => rng.int(-1, s - 1));
      const got = host(be.sequenceLogprob(be.upload({ dtype: 'f32', data: logp }, [n]), be.upload({ dtype: 'i32', data: seg }, [n]), s));
      assert.ok(relErr(got, sequenceLogprobRef(logp, seg, s)) <= 1e-6);
      const dseq = randn(rng, s);
      const back = host(be.sequenceLogprobBackward(be.upload({ dtype: 'f32', data: dseq }, [s]), be.upload({ dtype: 'i32', data: seg }, [n])));
      for (let r = 0; r < n; r++) assert.equal(back[r], seg[r] >= 0 ? dseq[seg[r]] : 0);
      assert.throws(() => be.sequenceLogprob(be.upload({ dtype: 'f32', data: logp }, [n]), be.upload({ dtype: 'i32', data: seg.map(() => s) }, [n]), s), /segment id 13 at row 0 is outside \[-1, 13\)/);
    }));

  for (const lossType of ['sigmoid', 'hinge'] as const) {
    test(`${lossType}: per-pair loss, rewards, margins, accuracy and gradients match float64`, () =>
      withSeed((rng) => {
        const b = 37;
        const beta = [0.1, 1, 5][rng.int(0, 2)];
        const pr = randn(rng, b, 50).map((x) => x - 200);
        const pg = randn(rng, b, 50).map((x) => x - 200);
        const rr = pr.map((x) => x + rng.normal() * 3);
        const rg = pg.map((x) => x + rng.normal() * 3);
        const mask = new Float32Array(b).map(() => (rng.next() < 0.2 ? 0 : 1));
        const up = (x: Float32Array) => be.upload({ dtype: 'f32', data: x }, [b]);
        const out = host(be.spinLoss(up(pr), up(pg), up(rr), up(rg), { beta, lossType, pairMask: up(mask) }));
        const ref = spinLossRef(pr, pg, rr, rg, beta, lossType, mask);
        for (const [k, name] of SPIN_LOSS_ROWS.entries()) {
          const got = out.subarray(k * b, (k + 1) * b);
          const want = ref.perPair.map((p) => p[name]);
          assert.ok(relErr(got, want) <= 1e-6, `${name} (beta ${beta}): err ${relErr(got, want)}`);
        }
      }));
  }

  test('NLL term on the real answer: loss and dReal match float64', () =>
    withSeed((rng) => {
      const b = 11, beta = 0.2, alpha = 0.7;
      const pr = randn(rng, b, 20).map((x) => x - 100);
      const pg = randn(rng, b, 20).map((x) => x - 100);
      const rr = pr.map((x) => x + rng.normal());
      const rg = pg.map((x) => x + rng.normal());
      const n = new Float32Array(b).map(() => rng.int(1, 80));
      const mask = new Float32Array(b).map((_, i) => (i % 4 === 3 ? 0 : 1));
      const up = (x: Float32Array) => be.upload({ dtype: 'f32', data: x }, [b]);
      const out = host(be.spinLoss(up(pr), up(pg), up(rr), up(rg), { beta, lossType: 'sigmoid', pairMask: up(mask), nllAlpha: alpha, realTokens: up(n) }));
      const ref = spinLossRef(pr, pg, rr, rg, beta, 'sigmoid', mask, { alpha, realTokens: n });
      for (const [k, name] of SPIN_LOSS_ROWS.entries()) {
        const want = ref.perPair.map((p) => p[name]);
        assert.ok(relErr(out.subarray(k * b, (k + 1) * b), want) <= 1e-6, `${name}: err ${relErr(out.subarray(k * b, (k + 1) * b), want)}`);
      }
      assert.throws(() => be.spinLoss(up(pr), up(pg), up(rr), up(rg), { beta, lossType: 'sigmoid', nllAlpha: 1 }), /needs realTokens/);
    }));

  test('u = 0 when policy equals reference: loss is log 2, rewards 0', () => {
    const x = be.upload({ dtype: 'f32', data: new Float32Array([-120.25, -3, -77]) }, [3]);
    const y = be.upload({ dtype: 'f32', data: new Float32Array([-99, -4.5, -1]) }, [3]);
    const out = host(be.spinLoss(x, y, x, y, { beta: 0.1, lossType: 'sigmoid' }));
    assert.deepEqual(Array.from(out.subarray(0, 3)), Array(3).fill(Math.fround(Math.LN2)));
    assert.ok(out.subarray(3, 15).every((v) => v === 0), 'rewards, margins and accuracies are 0 (ties are misses)');
  });

  test('no counted pair: zero loss and zero gradients', () => {
    const x = be.upload({ dtype: 'f32', data: new Float32Array([-1, -2]) }, [2]);
    const out = host(be.spinLoss(x, x, x, x, { beta: 0.1, lossType: 'sigmoid', pairMask: be.upload({ dtype: 'f32', data: new Float32Array(2) }, [2]) }));
    assert.ok(out.every((v) => v === 0));
  });

  test('bad spinLoss arguments', () => {
    const x = be.upload({ dtype: 'f32', data: new Float32Array(3) }, [3]);
    const y = be.upload({ dtype: 'f32', data: new Float32Array(2) }, [2]);
    assert.throws(() => be.spinLoss(x, y, x, x, { beta: 0.1, lossType: 'sigmoid' }), /policyGenerated must have shape \[3\]/);
    assert.throws(() => be.spinLoss(x, x, x, x, { beta: NaN, lossType: 'sigmoid' }), /beta must be a finite number/);
    assert.throws(() => be.spinLoss(x, x, x, x, { beta: 1, lossType: 'ipo' as never }), /lossType must be 'sigmoid' or 'hinge'/);
  });
});

describe('the fused SPIN loss over a batch (src/spin/loss.ts)', () => {
  /** A batch of b pairs: each answer is a run of tokens in one sequence, prompts and padding in none. */
  function makeBatch(rng: Rng, b: number, v: number, dtype: LogitsDType) {
    const segs: number[] = [];
    const targets: number[] = [];
    for (let s = 0; s < 2 * b; s++) {
      const prompt = rng.int(0, 6);
      for (let i = 0; i < prompt; i++) { segs.push(-1); targets.push(IGNORE); }
      const len = rng.int(1, 12);
      for (let i = 0; i < len; i++) { segs.push(s); targets.push(rng.int(0, v - 1)); }
    }
    const n = segs.length;
    const z = makeLogits(rng, n, v, dtype, 2);
    return {
      n, z,
      targets: be.upload({ dtype: 'i32', data: Int32Array.from(targets) }, [n]),
      segments: be.upload({ dtype: 'i32', data: Int32Array.from(segs) }, [n]),
      targetValues: targets, segValues: segs,
    };
  }

  for (const dtype of ['f32', 'bf16'] as const) {
    test(`${dtype}: loss, metrics and dlogits of the whole chain match float64`, () =>
      withSeed(async (rng) => {
        const b = 6, v = 301, beta = 0.5;
        const batch = makeBatch(rng, b, v, dtype);
        const refLp = logprobGatherRef(batch.z.values, batch.n, v, batch.targetValues);
        const S = sequenceLogprobRef(refLp.logp, batch.segValues, 2 * b);
        const refS = Float32Array.from(S, (x) => x + rng.normal());
        const ctx = spinLossForward(be, batch.z.t, batch.targets, batch.segments, be.upload({ dtype: 'f32', data: refS }, [2 * b]), b, { beta, lossType: 'sigmoid' });
        const m = await spinLossMetrics(ctx);
        const ref = spinLossRef(S.subarray(0, b), S.subarray(b), refS.subarray(0, b), refS.subarray(b), beta, 'sigmoid');
        const tol = dtype === 'f32' ? 1e-6 : 1e-5;
        assert.ok(Math.abs(m.loss - ref.loss) <= tol * Math.abs(ref.loss), `loss ${m.loss} vs ${ref.loss}`);
        assert.ok(Math.abs(m['logps/real'] - [...S.subarray(0, b)].reduce((a, c) => a + c) / b) <= tol * 100);
        assert.equal(m.pairs, b);
        const dseqRef = Float64Array.from({ length: 2 * b }, (_, s) => (s < b ? ref.perPair[s].dReal : ref.perPair[s - b].dGenerated));
        const dlogpRef = batch.segValues.map((s) => (s >= 0 ? dseqRef[s] : 0));
        const dzRef = logprobGatherBackwardRef(batch.z.values, batch.n, v, batch.targetValues, dlogpRef);
        const dz = host(spinLossBackward(ctx, { dtype: 'f32' }));
        assert.ok(relErr(dz, dzRef) <= 1e-5, `dlogits err ${relErr(dz, dzRef)}`);
        freeSpinLossContext(ctx);
      }));
  }

  test('the float64 reference gradient agrees with central finite differences', () =>
    withSeed((rng) => {
      const b = 2, v = 7, beta = 0.7;
      const batch = makeBatch(rng, b, v, 'f32');
      const z = Float64Array.from(batch.z.values);
      const refS = Float64Array.from({ length: 2 * b }, () => -10 + rng.normal());
      const lossOf = (zz: Float64Array) => {
        const S = sequenceLogprobRef(logprobGatherRef(zz, batch.n, v, batch.targetValues).logp, batch.segValues, 2 * b);
        return spinLossRef(S.subarray(0, b), S.subarray(b), refS.subarray(0, b), refS.subarray(b), beta, 'sigmoid').loss;
      };
      const S = sequenceLogprobRef(logprobGatherRef(z, batch.n, v, batch.targetValues).logp, batch.segValues, 2 * b);
      const ref = spinLossRef(S.subarray(0, b), S.subarray(b), refS.subarray(0, b), refS.subarray(b), beta, 'sigmoid');
      const dseq = Float64Array.from({ length: 2 * b }, (_, s) => (s < b ? ref.perPair[s].dReal : ref.perPair[s - b].dGenerated));
      const dz = logprobGatherBackwardRef(z, batch.n, v, batch.targetValues, batch.segValues.map((s) => (s >= 0 ? dseq[s] : 0)));
      const h = 1e-6;
      for (let k = 0; k < 40; k++) {
        const i = rng.int(0, z.length - 1);
        const zp = Float64Array.from(z), zm = Float64Array.from(z);
        zp[i] += h;
        zm[i] -= h;
        const fd = (lossOf(zp) - lossOf(zm)) / (2 * h);
        assert.ok(Math.abs(fd - dz[i]) <= 1e-7 + 1e-5 * Math.abs(dz[i]), `element ${i}: fd ${fd} vs analytic ${dz[i]}`);
      }
    }));
});
