// The log-prob / SPIN loss ops on every test backend (test/helpers/backends.ts) against the float64
// reference (test/helpers/loss_ref.ts) and, for backends other than the CPU, the CPU backend.
// Error norm: max |got - ref| / max |ref| over the whole output (relErr); for logp the denominator is at least
// max |lse|, the size of the numbers whose difference logp is; for dlogits it is at least what an f32 lse
// can carry (dlogitsFloor: a near-one-hot row's 1 - p_y is known only to |dlogp| |lse| 2^-24).
// Tolerances (issue 2): logp and loss <= 1e-6 for f32 logits, <= 1e-5 for bf16 logits; gradients <= 1e-5
// (f32 outputs), one bf16 rounding (2^-8) for bf16 outputs.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { SPIN_LOSS_MEANS, SPIN_LOSS_ROWS, SPIN_LOSS_TYPES, type SpinLossType } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import * as ops from '../src/ops/index.js';
import { freeSpinLossContext, spinLossBackward, spinLossForward, spinLossMetrics } from '../src/spin/loss.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { Tensor } from '../src/tensor/tensor.js';
import type { Rng } from '../src/util/rng.js';
import {
  dlogitsFloor,
  IGNORE,
  logprobGatherBackwardRef,
  logprobGatherRef,
  relErr,
  sequenceLogprobRef,
  spinLossRef,
} from './helpers/loss_ref.js';
import { testBackends } from './helpers/backends.js';
import { randn, withSeed } from './helpers/random.js';

const BF16_EPS = 2 ** -8;

type LogitsDType = 'f32' | 'bf16';

/** A second backend object: tensors of one backend are refused by ops on another. */
const otherBackend = new CpuBackend();

for (const be of await testBackends()) {
  const cpu = be instanceof CpuBackend ? be : null;
  /** Random logits [n, v] and their exact f32 values (bf16 logits are rounded first). */
  function makeLogits(rng: Rng, n: number, v: number, dtype: LogitsDType, scale: number) {
    const f = randn(rng, n * v, scale);
    if (dtype === 'f32') return { t: ops.upload(be, { dtype: 'f32', data: f }, [n, v]) as Tensor, values: f };
    const h = f32ArrayToBf16(f);
    return { t: ops.upload(be, { dtype: 'bf16', data: h }, [n, v]) as Tensor, values: bf16ArrayToF32(h) };
  }

  function makeTargets(rng: Rng, n: number, v: number, ignoreFraction: number) {
    const y = new Int32Array(n);
    for (let i = 0; i < n; i++) y[i] = rng.next() < ignoreFraction ? IGNORE : rng.int(0, v - 1);
    return { t: ops.upload(be, { dtype: 'i32', data: y }, [n]), values: y };
  }

  /** Host values of a tensor as f32 (bf16 widened). */
  async function host(t: Tensor): Promise<Float32Array> {
    const d = await ops.read(t);
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
        withSeed(async (rng) => {
          const tol = dtype === 'f32' ? 1e-6 : 1e-5;
          for (let k = 0; k < 10; k++) {
            const { n, v, scale } = randomShape(rng);
            const z = makeLogits(rng, n, v, dtype, scale);
            const y = makeTargets(rng, n, v, 0.2);
            const { logp, lse } = ops.logprobGather(z.t, y.t);
            const ref = logprobGatherRef(z.values, n, v, y.values);
            const ctx = `n=${n} v=${v} scale=${scale}`;
            // logp = z_y - lse is a difference of numbers of size |lse|: its error is relative to
            // max |lse|, not to |logp| (a row whose target holds nearly all mass has logp ~ -1e-11,
            // which f32 rounds to 0).
            const lseScale = Math.max(1e-30, ...Array.from(ref.lse, Math.abs));
            const logpErr = relErr(await host(logp), ref.logp, lseScale);
            assert.ok(logpErr <= tol, `logp ${ctx}: err ${logpErr}`);
            assert.ok(relErr(await host(lse), ref.lse) <= tol, `lse ${ctx}: err ${relErr(await host(lse), ref.lse)}`);
          }
        }));
    }

    if (cpu)
      test('same result on 1 and 2 threads, bit for bit (CPU)', () =>
        withSeed(async (rng) => {
          const be = cpu;
          const z = makeLogits(rng, 33, 1000, 'f32', 4);
          const y = makeTargets(rng, 33, 1000, 0.1);
          const saved = be.threads;
          try {
            be.threads = 1;
            const a = ops.logprobGather(z.t, y.t);
            be.threads = 2;
            const b = ops.logprobGather(z.t, y.t);
            assert.deepEqual(await ops.read(a.logp), await ops.read(b.logp));
            assert.deepEqual(await ops.read(a.lse), await ops.read(b.lse));
          } finally {
            be.threads = saved;
          }
        }));

    test('extreme logits: +-1e4 and -inf entries', () =>
      withSeed(async (rng) => {
        const n = 6,
          v = 37;
        const f = randn(rng, n * v, 2);
        for (let j = 0; j < v; j += 3) f[0 * v + j] = -Infinity; // row 0: many -inf
        f[1 * v + 5] = 1e4; // row 1: one dominant logit
        f[2 * v + 7] = -1e4; // row 2: target is extremely unlikely
        for (let j = 0; j < v; j++) f[3 * v + j] = j % 2 ? 1e4 : -1e4; // row 3: half +1e4
        f[4 * v + 9] = -Infinity; // row 4: target is -inf
        const y = new Int32Array([1, 5, 7, 2, 9, 0]);
        const z = ops.upload(be, { dtype: 'f32', data: f }, [n, v]);
        const { logp, lse } = ops.logprobGather(z, ops.upload(be, { dtype: 'i32', data: y }, [n]));
        const ref = logprobGatherRef(f, n, v, y);
        const got = await host(logp);
        assert.equal(got[4], -Infinity);
        assert.equal(ref.logp[4], -Infinity);
        assert.ok(
          got.every((x, i) => i === 4 || Number.isFinite(x)),
          `finite except row 4: ${got}`,
        );
        assert.ok(relErr(got, ref.logp) <= 1e-6, `logp err ${relErr(got, ref.logp)}`);
        assert.ok(relErr(await host(lse), ref.lse) <= 1e-6);
      }));

    test('long rows (several 2048-logit chunks): the max anywhere, -inf stretches, NaN and +inf; backward -inf -> 0', () =>
      withSeed(async (rng) => {
        // The CPU forward takes each row in chunks of 2048 logits with a running max per lane (native/cpu/loss.cc):
        // rows whose max grows chunk after chunk, sits in the last partial block, or follows chunks of -inf.
        const v = 5 * 2048 + 37;
        const rows: ((j: number) => number)[] = [
          () => rng.normal() * 3,
          (j) => j * 0.01 + rng.normal(), // rising: every chunk raises every lane's max
          (j) => -j * 0.01 + rng.normal(), // falling
          (j) => (j < 3 * 2048 ? -Infinity : rng.normal() * 4), // lanes that see only -inf for three chunks
          (j) => (j >= v - 20 ? 30 + rng.normal() : rng.normal()), // the max in the partial block at the end
          (j) => (j === 3 * 2048 + 5 ? 1e4 : rng.normal() * 3), // one dominant logit
          (j) => (j % 3 === 0 ? -Infinity : rng.normal() * 30), // -inf interleaved, wide spread
        ];
        const finite = rows.map((_, r) => r);
        // Rows whose lse is NaN, as in the float64 reference: the CPU kernels' contract (the other backends
        // differ here: WebGPU loses a NaN among -inf; CUDA (emulated) and WebGPU give -inf for a row of -inf).
        const special = cpu
          ? [
              (j: number) => (j < 2048 ? (j === 7 ? NaN : -Infinity) : rng.normal()), // NaN among -inf, finite later
              (j: number) => (j === 2 * 2048 + 1 ? Infinity : rng.normal()), // +inf (inf - inf)
              () => -Infinity, // all -inf
            ]
          : [];
        const nanRows = special.map((_, k) => rows.length + k);
        rows.push(...special);
        const n = rows.length;
        const f = new Float32Array(n * v);
        rows.forEach((row, r) => {
          for (let j = 0; j < v; j++) f[r * v + j] = row(j);
        });
        const y = new Int32Array(n).map(() => rng.int(0, v - 1));
        y[3] = 3 * 2048 + rng.int(0, 2047); // a finite target where there are finite logits
        y[6] = 3 * rng.int(0, (v - 2) / 3) + 1;
        for (const dtype of ['f32', 'bf16'] as const) {
          const h = dtype === 'f32' ? f : f32ArrayToBf16(f);
          const values = dtype === 'f32' ? f : bf16ArrayToF32(h as Uint16Array);
          const z = ops.upload(be, { dtype, data: h } as never, [n, v]) as Tensor;
          const t = ops.upload(be, { dtype: 'i32', data: y }, [n]);
          const { logp, lse } = ops.logprobGather(z, t);
          const ref = logprobGatherRef(values, n, v, y);
          const gotLse = await host(lse),
            gotLogp = await host(logp);
          for (const r of nanRows) {
            assert.ok(Number.isNaN(ref.lse[r]), `reference row ${r}`);
            assert.ok(Number.isNaN(gotLse[r]), `${dtype} row ${r}: lse ${gotLse[r]}, want NaN`);
          }
          const tol = dtype === 'f32' ? 1e-6 : 1e-5;
          const pick = (a: ArrayLike<number>) => finite.map((r) => a[r]);
          const lseScale = Math.max(...pick(ref.lse).map(Math.abs));
          assert.ok(relErr(pick(gotLse), pick(ref.lse)) <= tol, `${dtype} lse err ${relErr(pick(gotLse), pick(ref.lse))}`);
          assert.ok(relErr(pick(gotLogp), pick(ref.logp), lseScale) <= tol, `${dtype} logp err`);
          // the backward of the finite rows: -inf logits get exactly 0, the rest match float64
          const dl = randn(rng, n);
          for (const r of nanRows) dl[r] = 0;
          const dz = await host(ops.logprobGatherBackward(z, t, lse, ops.upload(be, { dtype: 'f32', data: dl }, [n]), { dtype: 'f32' }));
          const dzRef = logprobGatherBackwardRef(values, n, v, y, dl);
          const rowsOf = (a: ArrayLike<number>) => finite.flatMap((r) => Array.from({ length: v }, (_, j) => a[r * v + j]));
          const dzErr = relErr(rowsOf(dz), rowsOf(dzRef), dlogitsFloor(n, v, values, y, dl, 1e-5));
          assert.ok(dzErr <= 1e-5, `${dtype} dlogits err ${dzErr}`);
          for (const r of finite)
            for (let j = 0; j < v; j++)
              if (values[r * v + j] === -Infinity && j !== y[r])
                assert.ok(dz[r * v + j] === 0, `${dtype} row ${r} col ${j}: ${dz[r * v + j]}`); // +0 or -0 (-dlogp * 0)
        }
      }));

    test('V = 1 gives logp = 0 exactly', async () => {
      const z = ops.upload(be, { dtype: 'f32', data: new Float32Array([3.5, -2, 40]) }, [3, 1]);
      const { logp, lse } = ops.logprobGather(z, ops.upload(be, { dtype: 'i32', data: new Int32Array([0, 0, 0]) }, [3]));
      assert.deepEqual(Array.from(await host(logp)), [0, 0, 0]);
      assert.deepEqual(Array.from(await host(lse)), [3.5, -2, 40]);
    });

    test('N = 0 gives empty outputs', async () => {
      const { logp, lse } = ops.logprobGather(ops.empty(be, 'bf16', [0, 32000]), ops.empty(be, 'i32', [0]));
      assert.equal(logp.numel, 0);
      assert.equal(lse.numel, 0);
    });

    test('out-of-range targets on the device: outputs poisoned, the next read throws naming the op', async () => {
      const z = ops.upload(be, { dtype: 'f32', data: new Float32Array(12).map((_, i) => Math.sin(i)) }, [3, 4]);
      const t = (vals: number[]) => ops.upload(be, { dtype: 'i32', data: new Int32Array(vals) }, [vals.length]);
      for (const bad of [
        [0, 4, 1],
        [0, -1, 1],
        [2 ** 31 - 1, 0, 0],
        [-(2 ** 31), 0, 0],
      ]) {
        const { logp } = ops.logprobGather(z, t(bad));
        await assert.rejects(ops.read(logp), /logprobGather\/headLogprob \(or their backward\): a target is outside \[0, vocab\)/);
        // the error word was cleared by that read: good data reads fine again
        assert.ok((await ops.read(ops.logprobGather(z, t([0, 1, 2])).logp)).every(Number.isFinite));
      }
      const lse = ops.logprobGather(z, t([0, 1, 2])).lse;
      const d = ops.upload(be, { dtype: 'f32', data: new Float32Array([1, 1, 1]) }, [3]);
      const g = ops.logprobGatherBackward(z, t([0, 9, 2]), lse, d, { dtype: 'f32' });
      await assert.rejects(ops.read(g), /a target is outside/);
    });

    test('bad shapes and handles are clear errors, not crashes', async () => {
      const z = ops.upload(be, { dtype: 'f32', data: new Float32Array(12) }, [3, 4]);
      const t = (vals: number[]) => ops.upload(be, { dtype: 'i32', data: new Int32Array(vals) }, [vals.length]);
      assert.throws(() => ops.logprobGather(z, t([0, 1])), /one entry per logits row \(3\)/);
      assert.throws(() => ops.logprobGather(z, z as never), /targets must have dtype i32/);
      assert.throws(() => ops.logprobGather(z.reshape([12]), t([0])), /logits must have 2 dimension/);
      assert.throws(() => ops.logprobGather({} as never, t([0])), /logits must be a Tensor/);
      assert.throws(
        () => ops.logprobGather(z, ops.upload(otherBackend, { dtype: 'i32', data: new Int32Array(3) }, [3])),
        /lives on backend/,
      );
      if (!cpu) return;
      const freed = ops.upload(be, { dtype: 'f32', data: new Float32Array(4) }, [1, 4]);
      freed.free();
      assert.throws(() => ops.logprobGather(freed, t([0])), /used after free/);
      assert.throws(() => cpu.native.logprobGather({ handle: {}, byteOffset: 0 }, 'f32', 1, 4, t([0]), z, z), /not a spinlm buffer handle/);
      assert.throws(() => cpu.native.logprobGather(z, 'f32', 4, 4, t([0, 0, 0, 0]), z, z), /overrun its buffer/);
    });

    if (cpu)
      test('element offsets past 2^31 are computed in 64 bits (CPU)', async () => {
        const be = cpu;
        // 70000 rows x 152064 vocab: the last row starts at 10,644,328,064 elements, far past 2^31 and 2^32.
        assert.equal(be.native.rowOffset(69999, 152064), 69999n * 152064n);
        assert.equal(be.native.rowOffset(2 ** 31, 3), BigInt(2 ** 31) * 3n);
        assert.throws(
          () =>
            be.native.logprobGather(
              ops.empty(be, 'f32', [1]),
              'f32',
              2 ** 40,
              2 ** 30,
              ops.empty(be, 'i32', [1]),
              ops.empty(be, 'f32', [1]),
              ops.empty(be, 'f32', [1]),
            ),
          /overflows 64 bits|overrun/,
        );
      });
  });

  describe('logprobGatherBackward', () => {
    for (const inDt of ['f32', 'bf16'] as const) {
      for (const outDt of ['f32', 'bf16'] as const) {
        test(`${inDt} logits -> ${outDt} dlogits match float64`, () =>
          withSeed(async (rng) => {
            for (let k = 0; k < 6; k++) {
              const { n, v, scale } = randomShape(rng);
              const z = makeLogits(rng, n, v, inDt, scale);
              const y = makeTargets(rng, n, v, 0.25);
              const dlogp = randn(rng, n, 0.7);
              const { lse } = ops.logprobGather(z.t, y.t);
              const d = ops.upload(be, { dtype: 'f32', data: dlogp }, [n]);
              const got = await host(ops.logprobGatherBackward(z.t, y.t, lse, d, { dtype: outDt }));
              const ref = logprobGatherBackwardRef(z.values, n, v, y.values, dlogp);
              const tol = outDt === 'f32' ? 1e-5 : BF16_EPS;
              const err = relErr(got, ref, dlogitsFloor(n, v, z.values, y.values, dlogp, tol));
              assert.ok(err <= tol, `n=${n} v=${v} scale=${scale}: err ${err}`);
              for (let r = 0; r < n; r++) {
                if (y.values[r] !== IGNORE) continue;
                for (let j = 0; j < v; j++) assert.ok(Object.is(got[r * v + j], 0), `ignored row ${r} not +0 at ${j}`);
              }
            }
          }));
      }
      test(`${inDt}: in place over the logits equals out of place`, () =>
        withSeed(async (rng) => {
          const n = 19,
            v = 517;
          const z = makeLogits(rng, n, v, inDt, 3);
          const y = makeTargets(rng, n, v, 0.2);
          const d = ops.upload(be, { dtype: 'f32', data: randn(rng, n) }, [n]);
          const { lse } = ops.logprobGather(z.t, y.t);
          const separate = await ops.read(ops.logprobGatherBackward(z.t, y.t, lse, d));
          const same = ops.logprobGatherBackward(z.t, y.t, lse, d, { out: z.t });
          assert.equal(same, z.t);
          assert.deepEqual(await ops.read(same), separate);
        }));
    }

    if (cpu)
      test('bf16 dlogits are the f32 dlogits rounded, bit for bit, NaN payloads included (CPU)', () =>
        withSeed(async (rng) => {
          // The CPU backward rounds its f32 values in blocks of 32 (bf16 logits split into even/odd halves
          // and put back in order). Reference: bf16.h's f32_to_bf16 on the bits of the f32 output (NaN:
          // quieted, never rounded, so a payload 0x7fffffff does not carry into the sign).
          const toBf16 = (u: number) =>
            (u & 0x7fffffff) > 0x7f800000 ? ((u >>> 16) | 0x40) & 0xffff : ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
          const n = 4,
            v = 32 * 40 + 13;
          for (const inDt of ['f32', 'bf16'] as const) {
            const z = makeLogits(rng, n, v, inDt, 3);
            if (inDt === 'f32') {
              const bits = new Uint32Array(n * v);
              new Float32Array(bits.buffer).set(z.values);
              bits[v + 5] = 0x7fffffff; // row 1: a NaN logit whose payload would round into the sign
              z.t = ops.upload(be, { dtype: 'f32', data: new Float32Array(bits.buffer) }, [n, v]);
            }
            const y = makeTargets(rng, n, v, 0);
            const { lse } = ops.logprobGather(z.t, y.t);
            const d = ops.upload(be, { dtype: 'f32', data: randn(rng, n) }, [n]);
            const f = (await ops.read(ops.logprobGatherBackward(z.t, y.t, lse, d, { dtype: 'f32' }))) as Float32Array;
            const h = (await ops.read(ops.logprobGatherBackward(z.t, y.t, lse, d, { dtype: 'bf16' }))) as Uint16Array;
            const fb = new Uint32Array(f.buffer, f.byteOffset, f.length);
            if (inDt === 'f32') assert.equal(fb[v + 5], 0x7fffffff, 'the payload reaches the output');
            assert.deepEqual(Array.from(h), Array.from(fb, toBf16), `${inDt} logits`);
          }
        }));

    test('target column when p_y is close to 1 (1 - p_y as -expm1(logp_y))', async () => {
      // Row 0: 1 - p_y = 1.8e-5, where 1 - exp(logp) in fp32 would lose about 3 digits.
      const f = new Float32Array([0, -12, -12, -12, 5, 0, 0, 0]);
      const z = ops.upload(be, { dtype: 'f32', data: f }, [2, 4]);
      const y = ops.upload(be, { dtype: 'i32', data: new Int32Array([0, 1]) }, [2]);
      const { lse } = ops.logprobGather(z, y);
      const got = await host(ops.logprobGatherBackward(z, y, lse, ops.upload(be, { dtype: 'f32', data: new Float32Array([1, 1]) }, [2])));
      const ref = logprobGatherBackwardRef(f, 2, 4, [0, 1], [1, 1]);
      assert.ok(Math.abs(got[0] - ref[0]) <= 1e-2 * Math.abs(ref[0]), `${got[0]} vs ${ref[0]}`);
      assert.ok(relErr(got, ref) <= 1e-6);
    });

    test('every row ignored: zero gradient, no NaN', async () => {
      const z = ops.upload(be, { dtype: 'bf16', data: f32ArrayToBf16(new Float32Array(5 * 40).map((_, i) => Math.sin(i) * 9)) }, [5, 40]);
      const y = ops.upload(be, { dtype: 'i32', data: new Int32Array(5).fill(IGNORE) }, [5]);
      const { logp, lse } = ops.logprobGather(z, y);
      assert.deepEqual(Array.from(await host(logp)), [0, 0, 0, 0, 0]);
      const g = await host(
        ops.logprobGatherBackward(z, y, lse, ops.upload(be, { dtype: 'f32', data: new Float32Array(5).fill(3) }, [5]), { dtype: 'f32' }),
      );
      assert.ok(g.every((x) => x === 0));
    });

    test('overlapping but not in-place output is refused', async () => {
      // 64 f32 = 256 bytes: the smallest shift a view may take (VIEW_ALIGNMENT)
      const big = ops.upload(be, { dtype: 'f32', data: new Float32Array(20 * 8).fill(1) }, [20, 8]);
      const z = big.view(0, [9, 8]);
      const y = ops.upload(be, { dtype: 'i32', data: new Int32Array(9).fill(2) }, [9]);
      const { lse } = ops.logprobGather(z, y);
      const d = ops.upload(be, { dtype: 'f32', data: new Float32Array(9).fill(1) }, [9]);
      assert.throws(
        () => ops.logprobGatherBackward(z, y, lse, d, { out: big.view(64, [9, 8]) }),
        /overlaps logits without being exactly in place/,
      );
      assert.throws(() => ops.logprobGatherBackward(z, y, lse, d, { out: ops.empty(be, 'f32', [9, 7]) }), /out must have shape \[9, 8\]/);
      assert.throws(() => big.view(1, [8]), /views must start at multiples of 256 bytes/);
    });
  });

  describe('sequenceLogprob and spinLoss', () => {
    test('sequence sums match float64 and the backward scatters', () =>
      withSeed(async (rng) => {
        const n = 500,
          s = 13;
        const logp = randn(rng, n, 2);
        const seg = new Int32Array(n).map(() => rng.int(-1, s - 1));
        const got = await host(
          ops.sequenceLogprob(ops.upload(be, { dtype: 'f32', data: logp }, [n]), ops.upload(be, { dtype: 'i32', data: seg }, [n]), s),
        );
        assert.ok(relErr(got, sequenceLogprobRef(logp, seg, s)) <= 1e-6);
        const dseq = randn(rng, s);
        const back = await host(
          ops.sequenceLogprobBackward(ops.upload(be, { dtype: 'f32', data: dseq }, [s]), ops.upload(be, { dtype: 'i32', data: seg }, [n])),
        );
        for (let r = 0; r < n; r++) assert.equal(back[r], seg[r] >= 0 ? dseq[seg[r]] : 0);
        const bad = ops.sequenceLogprob(
          ops.upload(be, { dtype: 'f32', data: logp }, [n]),
          ops.upload(be, { dtype: 'i32', data: seg.map(() => s) }, [n]),
          s,
        );
        await assert.rejects(ops.read(bad), /sequenceLogprob\/sequenceLogprobBackward: a segment id is outside \[-1, numSeqs\)/);
        const badBack = ops.sequenceLogprobBackward(
          ops.upload(be, { dtype: 'f32', data: dseq }, [s]),
          ops.upload(be, { dtype: 'i32', data: seg.map(() => -2) }, [n]),
        );
        await assert.rejects(ops.read(badBack), /a segment id is outside/);
      }));

    /** spinLoss on host arrays (each [B]) -> its three outputs on the host. */
    async function spin(
      pr: Float32Array,
      pg: Float32Array,
      rr: Float32Array,
      rg: Float32Array,
      opts: {
        beta: number;
        lossType: SpinLossType;
        mask?: Float32Array;
        nllAlpha?: number;
        answerTokens?: Float32Array;
        gradScale?: number;
      },
    ) {
      const b = pr.length;
      const cat = (x: Float32Array, y: Float32Array) => ops.upload(be, { dtype: 'f32', data: Float32Array.from([...x, ...y]) }, [2 * b]);
      const one = (x: Float32Array | undefined) => (x ? ops.upload(be, { dtype: 'f32', data: x }, [b]) : undefined);
      const out = ops.spinLoss(cat(pr, pg), cat(rr, rg), {
        beta: opts.beta,
        lossType: opts.lossType,
        pairMask: one(opts.mask),
        nllAlpha: opts.nllAlpha,
        answerTokens: one(opts.answerTokens),
        gradScale: opts.gradScale,
      });
      return { perPair: await host(out.perPair), means: await host(out.means), dseq: await host(out.dseq) };
    }

    /** Per-pair rows, means over counted pairs and dseq (times gradScale) against the float64 reference. */
    function checkSpin(got: Awaited<ReturnType<typeof spin>>, ref: ReturnType<typeof spinLossRef>, b: number, gradScale = 1, what = '') {
      for (const [k, name] of SPIN_LOSS_ROWS.entries()) {
        const row = got.perPair.subarray(k * b, (k + 1) * b);
        const want = ref.perPair.map((p) => p[name]);
        assert.ok(relErr(row, want) <= 1e-6, `${name} ${what}: err ${relErr(row, want)}`);
        const mean = ref.count ? want.reduce((x, y) => x + y, 0) / ref.count : 0;
        assert.ok(
          Math.abs(got.means[k] - mean) <= 1e-6 * Math.max(1, Math.abs(mean)) + 1e-6 * Math.max(...want.map(Math.abs)),
          `mean ${SPIN_LOSS_MEANS[k]} ${what}: ${got.means[k]} vs ${mean}`,
        );
      }
      assert.ok(Math.abs(got.means[7] - ref.count / b) <= 1e-7, `pairs/counted ${got.means[7]} vs ${ref.count / b}`);
      const dWant = [...ref.perPair.map((p) => p.dReal * gradScale), ...ref.perPair.map((p) => p.dGenerated * gradScale)];
      assert.ok(relErr(got.dseq, dWant) <= 1e-6, `dseq ${what}: err ${relErr(got.dseq, dWant)}`);
    }

    for (const lossType of SPIN_LOSS_TYPES) {
      test(`${lossType}: per-pair rows, means over counted pairs and dseq match float64`, () =>
        withSeed(async (rng) => {
          const b = rng.int(1, 70);
          const beta = [0.1, 1, 5][rng.int(0, 2)];
          const gradScale = [1, 0.25, rng.next()][rng.int(0, 2)];
          const pr = randn(rng, b, 50).map((x) => x - 200);
          const pg = randn(rng, b, 50).map((x) => x - 200);
          const rr = pr.map((x) => x + rng.normal() * 3);
          const rg = pg.map((x) => x + rng.normal() * 3);
          const mask = new Float32Array(b).map(() => (rng.next() < 0.2 ? 0 : 1));
          const got = await spin(pr, pg, rr, rg, { beta, lossType, mask, gradScale });
          checkSpin(got, spinLossRef(pr, pg, rr, rg, beta, lossType, mask), b, gradScale, `(b ${b}, beta ${beta}, scale ${gradScale})`);
        }));
    }

    for (const lossType of SPIN_LOSS_TYPES)
      test(`${lossType} + NLL term on the real answer: loss and dReal match float64`, () =>
        withSeed(async (rng) => {
          const b = 11,
            beta = 0.2,
            alpha = 0.7;
          const pr = randn(rng, b, 20).map((x) => x - 100);
          const pg = randn(rng, b, 20).map((x) => x - 100);
          const rr = pr.map((x) => x + rng.normal());
          const rg = pg.map((x) => x + rng.normal());
          const n = new Float32Array(b).map(() => rng.int(1, 80));
          const mask = new Float32Array(b).map((_, i) => (i % 4 === 3 ? 0 : 1));
          const got = await spin(pr, pg, rr, rg, { beta, lossType, mask, nllAlpha: alpha, answerTokens: n });
          checkSpin(got, spinLossRef(pr, pg, rr, rg, beta, lossType, mask, { alpha, realTokens: n }), b);
          const x = ops.upload(be, { dtype: 'f32', data: Float32Array.from([...pr, ...pg]) }, [2 * b]);
          assert.throws(() => ops.spinLoss(x, x, { beta, lossType, nllAlpha: 1 }), /needs answerTokens/);
        }));

    test('u = 0 when policy equals reference: loss is log 2, rewards 0', async () => {
      const x = new Float32Array([-120.25, -3, -77]);
      const y = new Float32Array([-99, -4.5, -1]);
      const got = await spin(x, y, x, y, { beta: 0.1, lossType: 'sigmoid' });
      assert.deepEqual(Array.from(got.perPair.subarray(0, 3)), Array(3).fill(Math.fround(Math.LN2)));
      assert.ok(
        got.perPair.subarray(3, 15).every((v) => v === 0),
        'rewards, margins and accuracies are 0 (ties are misses)',
      );
      assert.equal(got.means[0], Math.fround(Math.LN2));
    });

    for (const lossType of SPIN_LOSS_TYPES)
      test(`${lossType}: no counted pair gives zero loss, zero means and zero gradients`, async () => {
        const x = new Float32Array([-1, -2]);
        const got = await spin(x, x, x, x, { beta: 0.1, lossType, mask: new Float32Array(2) });
        for (const out of [got.perPair, got.means, got.dseq])
          assert.ok(
            out.every((v) => Object.is(v, 0)),
            `${out}`,
          );
      });

    test('ipo and sppo_hard when policy equals reference: losses 1/(4 beta^2) and 1/(2 beta^2), zero rewards, dS = -+1/(beta B)', () =>
      withSeed(async (rng) => {
        const b = rng.int(1, 9);
        const beta = [0.1, 0.5, 3][rng.int(0, 2)];
        const x = randn(rng, b, 30).map((v) => v - 100);
        const y = randn(rng, b, 30).map((v) => v - 100);
        for (const lossType of ['ipo', 'sppo_hard'] as const) {
          const got = await spin(x, y, x, y, { beta, lossType });
          // r_w = r_l = 0: ipo (0 - 1/(2 beta))^2; sppo_hard (-1/(2 beta))^2 + (1/(2 beta))^2; both have
          // d/dr_w = -1/beta and d/dr_l = +1/beta, divided by the B pairs
          const want = lossType === 'ipo' ? 1 / (4 * beta ** 2) : 1 / (2 * beta ** 2);
          const what = `${lossType} b=${b} beta=${beta}`;
          for (let i = 0; i < b; i++) {
            assert.ok(Math.abs(got.perPair[i] - want) <= 1e-6 * want, `${what}: loss ${got.perPair[i]} vs ${want}`);
            assert.ok(Math.abs(got.dseq[i] + 1 / (beta * b)) <= 1e-6 / (beta * b), `${what}: dReal ${got.dseq[i]}`);
            assert.ok(Math.abs(got.dseq[b + i] - 1 / (beta * b)) <= 1e-6 / (beta * b), `${what}: dGenerated ${got.dseq[b + i]}`);
          }
          assert.ok(
            got.perPair.subarray(b, 5 * b).every((v) => v === 0),
            `${what}: rewards, margins and accuracies are 0 (ties are misses)`,
          );
          assert.ok(Math.abs(got.means[0] - want) <= 1e-6 * want, `${what}: mean loss ${got.means[0]}`);
          checkSpin(got, spinLossRef(x, y, x, y, beta, lossType), b, 1, what);
        }
      }));

    test('ipo and sppo_hard: zero loss and gradient at their targets; past the target the gradient turns', () =>
      withSeed(async (rng) => {
        // integer log-probs and beta = 2^-k keep every difference exact in f32
        const b = rng.int(2, 12);
        const beta = 2 ** -rng.int(1, 4);
        const target = 1 / (2 * beta);
        const int = (n: number) => new Float32Array(n).map(() => Math.round(rng.normal() * 50) - 200);
        const pr = int(b),
          pg = int(b),
          d = int(b);
        // ipo's optimum: r_w - r_l = 1/(2 beta), whatever each log-ratio is
        const ipo = await spin(
          pr,
          pg,
          pr.map((v, i) => v - d[i] - target),
          pg.map((v, i) => v - d[i]),
          { beta, lossType: 'ipo' },
        );
        // sppo_hard's optimum: r_w = 1/(2 beta), r_l = -1/(2 beta)
        const sppo = await spin(
          pr,
          pg,
          pr.map((v) => v - target),
          pg.map((v) => v + target),
          { beta, lossType: 'sppo_hard' },
        );
        for (const [name, got] of [
          ['ipo', ipo],
          ['sppo_hard', sppo],
        ] as const) {
          assert.ok(
            got.perPair.subarray(0, b).every((v) => v === 0),
            `${name} beta=${beta}: loss at the target ${got.perPair.subarray(0, b)}`,
          );
          assert.ok(
            got.dseq.every((v) => v === 0),
            `${name} beta=${beta}: gradient at the target ${got.dseq}`,
          );
          // the margin u = beta (r_w - r_l) at the target: 1/2 (ipo), 1 (sppo_hard)
          const margin = name === 'ipo' ? 0.5 : 1;
          assert.ok(
            got.perPair.subarray(3 * b, 4 * b).every((v) => Math.abs(v - margin) <= 1e-6),
            `${name}: margins ${got.perPair.subarray(3 * b, 4 * b)}, want ${margin}`,
          );
        }
        // ipo one nat past its target: loss 1, and the gradient now lowers the real answer (dS_real = +2/B)
        // while the margin and the accuracy say the pair is won: unlike sigmoid, ipo does not reward a larger margin
        const past = await spin(
          pr,
          pg,
          pr.map((v) => v - target - 1),
          pg,
          { beta, lossType: 'ipo' },
        );
        for (let i = 0; i < b; i++) {
          assert.equal(past.perPair[i], 1);
          assert.ok(Math.abs(past.dseq[i] - 2 / b) <= 1e-6 * (2 / b), `dReal ${past.dseq[i]}`);
          assert.ok(Math.abs(past.dseq[b + i] + 2 / b) <= 1e-6 * (2 / b), `dGenerated ${past.dseq[b + i]}`);
          assert.equal(past.perPair[4 * b + i], 1, 'accuracy');
        }
      }));

    for (const lossType of SPIN_LOSS_TYPES)
      test(`${lossType}: large log-ratios and a small beta match float64`, () =>
        withSeed(async (rng) => {
          const b = rng.int(1, 40);
          const beta = [0.01, 0.02][rng.int(0, 1)];
          const pr = randn(rng, b, 300).map((x) => x - 3000);
          const pg = randn(rng, b, 300).map((x) => x - 3000);
          const rr = pr.map((x) => x + rng.normal() * 400);
          const rg = pg.map((x) => x + rng.normal() * 400);
          const got = await spin(pr, pg, rr, rg, { beta, lossType });
          checkSpin(got, spinLossRef(pr, pg, rr, rg, beta, lossType), b, 1, `(b ${b}, beta ${beta})`);
        }));

    test('bad spinLoss arguments', async () => {
      const x = ops.upload(be, { dtype: 'f32', data: new Float32Array(6) }, [6]);
      const y = ops.upload(be, { dtype: 'f32', data: new Float32Array(4) }, [4]);
      assert.throws(() => ops.spinLoss(x, y, { beta: 0.1, lossType: 'sigmoid' }), /ref must have shape \[6\]/);
      assert.throws(
        () => ops.spinLoss(ops.upload(be, { dtype: 'f32', data: new Float32Array(3) }, [3]), y, { beta: 0.1, lossType: 'sigmoid' }),
        /must hold 2 x B/,
      );
      assert.throws(() => ops.spinLoss(x, x, { beta: NaN, lossType: 'sigmoid' }), /beta must be a finite number/);
      assert.throws(
        () => ops.spinLoss(x, x, { beta: 1, lossType: 'dpo' as never }),
        /lossType must be one of 'sigmoid', 'hinge', 'ipo', 'sppo_hard', got 'dpo'/,
      );
      for (const lossType of ['ipo', 'sppo_hard'] as const)
        for (const beta of [0, -0.5])
          assert.throws(() => ops.spinLoss(x, x, { beta, lossType }), /beta must be > 0 for lossType '(ipo|sppo_hard)'/);
      assert.throws(() => ops.spinLoss(x, x, { beta: 1, lossType: 'sigmoid', gradScale: Infinity }), /gradScale must be a finite number/);
      assert.throws(() => ops.spinLoss(x, x, { beta: 1, lossType: 'sigmoid', pairMask: y }), /pairMask must have shape \[3\]/);
    });
  });

  describe('the fused SPIN loss over a batch (src/spin/loss.ts)', () => {
    /** A batch of b pairs: each answer is a run of tokens in one sequence, prompts and padding in none. */
    function makeBatch(rng: Rng, b: number, v: number, dtype: LogitsDType) {
      const segs: number[] = [];
      const targets: number[] = [];
      for (let s = 0; s < 2 * b; s++) {
        const prompt = rng.int(0, 6);
        for (let i = 0; i < prompt; i++) {
          segs.push(-1);
          targets.push(IGNORE);
        }
        const len = rng.int(1, 12);
        for (let i = 0; i < len; i++) {
          segs.push(s);
          targets.push(rng.int(0, v - 1));
        }
      }
      const n = segs.length;
      const z = makeLogits(rng, n, v, dtype, 2);
      return {
        n,
        z,
        targets: ops.upload(be, { dtype: 'i32', data: Int32Array.from(targets) }, [n]),
        segments: ops.upload(be, { dtype: 'i32', data: Int32Array.from(segs) }, [n]),
        targetValues: targets,
        segValues: segs,
      };
    }

    for (const dtype of ['f32', 'bf16'] as const) {
      for (const lossType of SPIN_LOSS_TYPES)
        test(`${dtype}, ${lossType}: loss, metrics and dlogits of the whole chain match float64`, () =>
          withSeed(async (rng) => {
            const b = 6,
              v = 301,
              beta = 0.5;
            const batch = makeBatch(rng, b, v, dtype);
            const refLp = logprobGatherRef(batch.z.values, batch.n, v, batch.targetValues);
            const S = sequenceLogprobRef(refLp.logp, batch.segValues, 2 * b);
            const refS = Float32Array.from(S, (x) => x + rng.normal());
            const ctx = spinLossForward(
              batch.z.t,
              batch.targets,
              batch.segments,
              ops.upload(be, { dtype: 'f32', data: refS }, [2 * b]),
              b,
              {
                beta,
                lossType,
              },
            );
            const m = await spinLossMetrics(ctx);
            const ref = spinLossRef(S.subarray(0, b), S.subarray(b), refS.subarray(0, b), refS.subarray(b), beta, lossType);
            const tol = dtype === 'f32' ? 1e-6 : 1e-5;
            const dseqRef = Float64Array.from({ length: 2 * b }, (_, s) => (s < b ? ref.perPair[s].dReal : ref.perPair[s - b].dGenerated));
            // The f32 sums S carry a relative error (storing S ~ -35 in f32 alone rounds it by up to 2e-6),
            // which reaches the loss times |dloss/dS|: the loss's error is relative to
            // sum_s |dloss/dS_s| |S_s| (first-order propagation), not to the loss itself (seed 868339421:
            // hinge, 1.0067896 vs 1.0067907; the squared losses are 0 at their targets).
            const lossScale = Math.max(
              Math.abs(ref.loss),
              dseqRef.reduce((a, d, s) => a + Math.abs(d * S[s]), 0),
            );
            assert.ok(Math.abs(m.loss - ref.loss) <= tol * lossScale, `loss ${m.loss} vs ${ref.loss} (scale ${lossScale})`);
            assert.ok(Math.abs(m['logps/real'] - [...S.subarray(0, b)].reduce((a, c) => a + c) / b) <= tol * 100);
            assert.equal(m['pairs/counted'], 1);
            // The sums S are checked on their own (each within 1e-6 |S|, the f32 rounding the sums carry); the
            // gradient is then checked against float64 from the kernel's own S. Taken from the float64 S instead,
            // an ipo or sppo_hard pair near its target would ask dloss/dS for more than the f32 sums hold: one
            // rounding of S ~ -70 moves 2 (a - b - 1/(2 beta)) / B by 1e-6 when it is itself ~1e-2 (seed 1246491646).
            const gotS = await ops.read(ctx.seqLogps);
            assert.ok(relErr(gotS, S) <= 1e-6, `sequence sums err ${relErr(gotS, S)}`);
            const fromGot = spinLossRef(gotS.subarray(0, b), gotS.subarray(b), refS.subarray(0, b), refS.subarray(b), beta, lossType);
            const dseqGot = Float64Array.from({ length: 2 * b }, (_, s) =>
              s < b ? fromGot.perPair[s].dReal : fromGot.perPair[s - b].dGenerated,
            );
            const dlogpRef = batch.segValues.map((s) => (s >= 0 ? dseqGot[s] : 0));
            const dzRef = logprobGatherBackwardRef(batch.z.values, batch.n, v, batch.targetValues, dlogpRef);
            const dz = await host(spinLossBackward(ctx, { dtype: 'f32' }));
            const dzErr = relErr(dz, dzRef, dlogitsFloor(batch.n, v, batch.z.values, batch.targetValues, dlogpRef, 1e-5));
            assert.ok(dzErr <= 1e-5, `dlogits err ${dzErr}`);
            freeSpinLossContext(ctx);
          }));
    }

    for (const lossType of SPIN_LOSS_TYPES)
      test(`${lossType}: the float64 reference gradient agrees with central finite differences`, () =>
        withSeed(async (rng) => {
          const b = 2,
            v = 7,
            beta = 0.7;
          const batch = makeBatch(rng, b, v, 'f32');
          const z = Float64Array.from(batch.z.values);
          const S = sequenceLogprobRef(logprobGatherRef(z, batch.n, v, batch.targetValues).logp, batch.segValues, 2 * b);
          // reference log-probs near the policy's: log-ratios of order 1, where every loss is curved (the
          // rounding noise of a difference quotient grows with the loss, which the squared losses make large
          // for large log-ratios)
          const refS = Float64Array.from(S, (x) => x + rng.normal());
          const lossOf = (zz: Float64Array) => {
            const S = sequenceLogprobRef(logprobGatherRef(zz, batch.n, v, batch.targetValues).logp, batch.segValues, 2 * b);
            return spinLossRef(S.subarray(0, b), S.subarray(b), refS.subarray(0, b), refS.subarray(b), beta, lossType).loss;
          };
          const ref = spinLossRef(S.subarray(0, b), S.subarray(b), refS.subarray(0, b), refS.subarray(b), beta, lossType);
          const dseq = Float64Array.from({ length: 2 * b }, (_, s) => (s < b ? ref.perPair[s].dReal : ref.perPair[s - b].dGenerated));
          const dz = logprobGatherBackwardRef(
            z,
            batch.n,
            v,
            batch.targetValues,
            batch.segValues.map((s) => (s >= 0 ? dseq[s] : 0)),
          );
          const h = 1e-6;
          for (let k = 0; k < 40; k++) {
            const i = rng.int(0, z.length - 1);
            const zp = Float64Array.from(z),
              zm = Float64Array.from(z);
            zp[i] += h;
            zm[i] -= h;
            const fd = (lossOf(zp) - lossOf(zm)) / (2 * h);
            assert.ok(Math.abs(fd - dz[i]) <= 1e-7 + 1e-5 * Math.abs(dz[i]), `element ${i}: fd ${fd} vs analytic ${dz[i]}`);
          }
        }));
  });
}
