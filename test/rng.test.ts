// src/util/rng.ts: reference outputs, reproducibility, uniformity (chi-square), forks, state.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Rng } from '../src/util/rng.js';
import { withSeed } from './helpers/random.js';

// ---- an independent BigInt implementation of splitmix64 + xoshiro128** ----
const M64 = (1n << 64n) - 1n;
const M32 = 0xffffffffn;

function splitmix64(state: bigint): () => bigint {
  return () => {
    state = (state + 0x9e3779b97f4a7c15n) & M64;
    let z = state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
    return z ^ (z >> 31n);
  };
}

function refXoshiro128ss(words: bigint[]): () => number {
  const s = words.slice();
  const rotl = (x: bigint, k: bigint) => ((x << k) | (x >> (32n - k))) & M32;
  return () => {
    const r = (rotl((s[1] * 5n) & M32, 7n) * 9n) & M32;
    const t = (s[1] << 9n) & M32;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11n);
    return Number(r);
  };
}

function refStream(seed: number): () => number {
  const sm = splitmix64(BigInt.asUintN(64, BigInt(seed)));
  const a = sm();
  const b = sm();
  return refXoshiro128ss([a & M32, a >> 32n, b & M32, b >> 32n]);
}

// ---- chi-square ----
/** Upper quantile of chi-square(k) at the normal z (Wilson-Hilferty); z 4.75 ~ p 1e-6. */
function chi2Critical(k: number, z = 4.75): number {
  const c = 2 / (9 * k);
  return k * (1 - c + z * Math.sqrt(c)) ** 3;
}

function chi2(counts: number[], expected: number): number {
  return counts.reduce((acc, c) => acc + (c - expected) ** 2 / expected, 0);
}

function bucketChi2(draw: () => number, buckets: number, n: number): number {
  const counts = new Array(buckets).fill(0);
  for (let i = 0; i < n; i++) {
    const x = draw();
    assert.ok(x >= 0 && x < 1, `value ${x} outside [0, 1)`);
    counts[Math.floor(x * buckets)]++;
  }
  return chi2(counts, n / buckets);
}

describe('rng', () => {
  test('splitmix64 seeding matches the published splitmix64 outputs', () => {
    // splitmix64 from state 1234567: first outputs 6457827717110365317, 3203168211198807973.
    const s = new Rng(1234567).getState().s;
    const a = (BigInt(s[1]) << 32n) | BigInt(s[0]);
    const b = (BigInt(s[3]) << 32n) | BigInt(s[2]);
    assert.equal(a, 6457827717110365317n);
    assert.equal(b, 3203168211198807973n);
  });

  test('xoshiro128** from state {1,2,3,4} gives the reference outputs', () => {
    const r = Rng.fromState({ key: '0', s: [1, 2, 3, 4], spare: null });
    const got = Array.from({ length: 6 }, () => r.nextU32());
    assert.deepEqual(got, [11520, 0, 5927040, 70819200, 2031721883, 1637235492]);
  });

  test('pinned outputs for seed 42 (stable across versions and platforms)', () => {
    const r = new Rng(42);
    assert.deepEqual([r.nextU32(), r.nextU32(), r.nextU32(), r.nextU32()], [1776835114, 4165204688, 17111135, 2317295270]);
    assert.equal(new Rng(42).fork(7).nextU32(), 734319452);
    assert.equal(new Rng(42).fork('gen').nextU32(), 3641458900);
  });

  test('matches an independent BigInt implementation on a random seed', () =>
    withSeed((rng) => {
      const seed = rng.int(0, Number.MAX_SAFE_INTEGER);
      const mine = new Rng(seed);
      const ref = refStream(seed);
      for (let i = 0; i < 2000; i++) assert.equal(mine.nextU32(), ref(), `output ${i} for seed ${seed}`);
    }));

  test('same seed, same stream; different seeds, different streams', () =>
    withSeed((rng) => {
      const seed = rng.int(0, 2 ** 40);
      const a = new Rng(seed);
      const b = new Rng(seed);
      const c = new Rng(seed + 1);
      const xa = Array.from({ length: 100 }, () => a.next());
      assert.deepEqual(
        Array.from({ length: 100 }, () => b.next()),
        xa,
      );
      assert.notDeepEqual(
        Array.from({ length: 100 }, () => c.next()),
        xa,
      );
      assert.equal(new Rng(BigInt(seed)).nextU32(), new Rng(seed).nextU32());
      assert.notEqual(new Rng(`s${seed}`).nextU32(), new Rng(`t${seed}`).nextU32());
    }));

  test('chi-square on buckets rejects a biased source (the uniformity tests can fail)', () =>
    withSeed((rng) => {
      const stat = bucketChi2(() => rng.next() ** 1.05, 64, 200_000);
      assert.ok(stat > chi2Critical(63), `biased source passed: chi2 ${stat.toFixed(1)} <= ${chi2Critical(63).toFixed(1)}`);
    }));

  test('next() is uniform on [0, 1): 64 buckets, and the low bits too', () =>
    withSeed((rng) => {
      const r = rng.fork('next');
      const stat = bucketChi2(() => r.next(), 64, 200_000);
      assert.ok(stat < chi2Critical(63), `chi2 ${stat.toFixed(1)} >= ${chi2Critical(63).toFixed(1)}`);
      // low bits of the 53-bit value: (x * 2^53) mod 64
      const low = bucketChi2(() => ((r.next() * 2 ** 53) % 64) / 64, 64, 100_000);
      assert.ok(low < chi2Critical(63), `low-bit chi2 ${low.toFixed(1)}`);
      // nextU32 top and bottom bytes
      const top = bucketChi2(() => (r.nextU32() >>> 24) / 256, 256, 200_000);
      const bottom = bucketChi2(() => (r.nextU32() & 255) / 256, 256, 200_000);
      assert.ok(top < chi2Critical(255) && bottom < chi2Critical(255), `u32 byte chi2 ${top.toFixed(1)} / ${bottom.toFixed(1)}`);
    }));

  test('int(lo, hi) is uniform over [lo, hi], both ends included', () =>
    withSeed((rng) => {
      const lo = rng.int(-1000, 1000);
      const k = rng.int(3, 40); // a range that does not divide 2^32
      const hi = lo + k - 1;
      const counts = new Array(k).fill(0);
      const n = 2000 * k;
      for (let i = 0; i < n; i++) {
        const x = rng.int(lo, hi);
        assert.ok(Number.isInteger(x) && x >= lo && x <= hi, `int(${lo}, ${hi}) gave ${x}`);
        counts[x - lo]++;
      }
      assert.ok(counts[0] > 0 && counts[k - 1] > 0);
      const stat = chi2(counts, n / k);
      assert.ok(stat < chi2Critical(k - 1), `chi2 ${stat.toFixed(1)} over ${k} values`);
      assert.equal(rng.int(5, 5), 5);
    }));

  test('int over ranges wider than 2^32 stays in bounds and spreads over the range', () =>
    withSeed((rng) => {
      const lo = -(2 ** 50);
      const hi = 2 ** 51;
      const halves = [0, 0];
      for (let i = 0; i < 20000; i++) {
        const x = rng.int(lo, hi);
        assert.ok(Number.isSafeInteger(x) && x >= lo && x <= hi);
        halves[x < (lo + hi) / 2 ? 0 : 1]++;
      }
      // each half ~ 10000 +- 71 (sd); 6 sd bound
      assert.ok(Math.abs(halves[0] - 10000) < 430, `halves ${halves}`);
    }));

  test('normal(): mean, variance and tails', () =>
    withSeed((rng) => {
      const n = 100_000;
      let s = 0;
      let s2 = 0;
      let beyond2 = 0;
      for (let i = 0; i < n; i++) {
        const z = rng.normal();
        assert.ok(Number.isFinite(z));
        s += z;
        s2 += z * z;
        if (Math.abs(z) > 2) beyond2++;
      }
      const mean = s / n;
      const variance = s2 / n - mean * mean;
      assert.ok(Math.abs(mean) < 6 / Math.sqrt(n), `mean ${mean}`);
      assert.ok(Math.abs(variance - 1) < 6 * Math.sqrt(2 / n), `variance ${variance}`);
      // P(|z| > 2) = 0.0455; sd of the count ~ 66
      assert.ok(Math.abs(beyond2 - 0.0455 * n) < 400, `|z|>2 count ${beyond2}`);
      const shifted = Array.from({ length: 20000 }, () => rng.normal(5, 0.5));
      const m = shifted.reduce((a, b) => a + b) / shifted.length;
      assert.ok(Math.abs(m - 5) < (6 * 0.5) / Math.sqrt(20000), `normal(5, 0.5) mean ${m}`);
    }));

  test('shuffle: a permutation, all 24 orders of 4 items equally likely', () =>
    withSeed((rng) => {
      const counts = new Map<string, number>();
      const n = 48_000;
      for (let i = 0; i < n; i++) {
        const key = rng.shuffle([0, 1, 2, 3]).join('');
        counts.set(key, (counts.get(key) ?? 0) + 1);
      }
      assert.equal(counts.size, 24);
      const stat = chi2([...counts.values()], n / 24);
      assert.ok(stat < chi2Critical(23), `chi2 ${stat.toFixed(1)}`);
      const xs = Array.from({ length: 100 }, (_, i) => i * 3);
      const ys = rng.shuffle(xs.slice());
      assert.deepEqual(
        ys.slice().sort((a, b) => a - b),
        xs,
      );
      assert.notDeepEqual(ys, xs);
    }));

  test('fork: depends on key and label only, distinct per label, uncorrelated', () =>
    withSeed((rng) => {
      const seed = rng.int(0, 2 ** 40);
      const parent = new Rng(seed);
      const f1 = parent.fork(3);
      for (let i = 0; i < 57; i++) parent.next(); // drawing from the parent does not move its forks
      const f2 = parent.fork(3);
      const a = Array.from({ length: 50 }, () => f1.nextU32());
      assert.deepEqual(
        Array.from({ length: 50 }, () => f2.nextU32()),
        a,
      );
      assert.notDeepEqual(
        Array.from({ length: 50 }, () => parent.fork(4).nextU32()),
        a,
      );
      assert.notEqual(parent.fork(3).nextU32(), parent.fork('3').nextU32());
      assert.notEqual(parent.fork('x').fork(1).nextU32(), parent.fork(1).fork('x').nextU32());
      assert.notEqual(new Rng(seed + 1).fork(3).nextU32(), new Rng(seed).fork(3).nextU32());
      // first outputs of sibling forks: uniform (chi-square) and uncorrelated with their neighbours
      const firsts = Array.from({ length: 64_000 }, (_, i) => parent.fork(i).next());
      const counts = new Array(64).fill(0);
      for (const x of firsts) counts[Math.floor(x * 64)]++;
      assert.ok(chi2(counts, 1000) < chi2Critical(63), 'first outputs of forks 0..63999 not uniform');
      let cov = 0;
      for (let i = 1; i < firsts.length; i++) cov += (firsts[i] - 0.5) * (firsts[i - 1] - 0.5);
      const corr = cov / (firsts.length - 1) / (1 / 12);
      assert.ok(Math.abs(corr) < 6 / Math.sqrt(firsts.length), `lag-1 correlation of forks ${corr}`);
    }));

  test('getState / fromState resumes exactly (including a cached normal), through JSON', () =>
    withSeed((rng) => {
      const r = rng.fork('state');
      r.normal(); // leaves a spare
      const saved = JSON.parse(JSON.stringify(r.getState()));
      const resumed = Rng.fromState(saved);
      assert.equal(resumed.normal(), r.normal());
      for (let i = 0; i < 20; i++) assert.equal(resumed.nextU32(), r.nextU32());
      assert.equal(resumed.fork(9).nextU32(), r.fork(9).nextU32());
    }));

  test('bad arguments throw clear errors', () => {
    assert.throws(() => new Rng(1.5), /safe integer/);
    assert.throws(() => new Rng(Number.NaN), /safe integer/);
    assert.throws(() => new Rng({} as never), /seed must be/);
    const r = new Rng(1);
    assert.throws(() => r.int(3, 2), /lo <= hi/);
    assert.throws(() => r.int(0, 0.5), /safe integers/);
    assert.throws(() => r.int(0, 2 ** 53), /2\^53|safe/);
    assert.throws(() => r.fork(0.5), /label/);
    assert.throws(() => Rng.fromState({ key: '1', s: [0, 0, 0, 0], spare: null }), /rng state/);
    assert.throws(() => Rng.fromState({ key: 'x', s: [1, 2, 3, 4], spare: null }), /rng state/);
  });
});
