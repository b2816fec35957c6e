// The CPU backend's recycling of big host buffers (native/cpu/memory.cc): a freed block is kept for
// a request of the same size, but the kept blocks never raise the footprint above the peak of live
// buffers (docs/memory.md): on a miss, cached blocks are given back first.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import * as ops from '../src/ops/index.js';
import { withSeed } from './helpers/random.js';

const MiB = 2 ** 20;

test('freed big buffers are reused for the same size, and given back before the footprint would grow', async () =>
  withSeed(async (rng) => {
    const be = new CpuBackend();
    const n = be.native;
    const start = n.cachedBytes();
    // a big buffer, freed: kept
    const bigMiB = rng.int(24, 64);
    const big = ops.empty(be, 'f32', [(bigMiB * MiB) / 4]);
    ops.fill(big, rng.normal());
    big.free();
    const afterFree = n.cachedBytes();
    assert.ok(afterFree - start >= bigMiB * MiB, `a freed ${bigMiB} MiB buffer is cached (${afterFree - start} bytes)`);
    // the same size again: the cached block, nothing else changes
    const again = ops.empty(be, 'f32', [(bigMiB * MiB) / 4]);
    assert.equal(n.cachedBytes(), start, 'the same block again');
    again.free();
    assert.equal(n.cachedBytes(), afterFree);
    // a smaller, different size: keeping the big block beside it would exceed the peak, so it goes
    const smallMiB = rng.int(5, 12);
    const small = ops.empty(be, 'f32', [(smallMiB * MiB) / 4]);
    assert.ok(n.cachedBytes() <= afterFree - bigMiB * MiB, `the ${bigMiB} MiB block was given back (cached ${n.cachedBytes()} bytes)`);
    small.free();
    const kept = n.cachedBytes();
    // a repeating pattern still hits the cache
    for (let i = 0; i < 3; i++) {
      const t = ops.empty(be, 'f32', [(smallMiB * MiB) / 4]);
      assert.equal(n.cachedBytes(), kept - Math.ceil(smallMiB / 2) * 2 * MiB, 'the same block again');
      t.free();
      assert.equal(n.cachedBytes(), kept);
    }
  }));

test('releaseCached gives every kept block back; peakLiveBytes tracks the most live bytes since its reset', async () =>
  withSeed(async (rng) => {
    const be = new CpuBackend();
    const n = be.native;
    const live0 = n.liveBytes();
    n.peakLiveBytes(true);
    const mib = rng.int(8, 40);
    const a = ops.empty(be, 'f32', [(mib * MiB) / 4]);
    const b = ops.empty(be, 'bf16', [(mib * MiB) / 2]);
    ops.fill(a, rng.normal());
    ops.fill(b, rng.normal());
    assert.equal(n.liveBytes() - live0, 2 * mib * MiB);
    a.free();
    b.free();
    assert.ok(n.cachedBytes() >= 2 * mib * MiB, 'both freed blocks are kept for reuse');
    assert.equal(n.peakLiveBytes(false) - live0, 2 * mib * MiB, 'the peak saw both buffers at once');
    assert.equal(n.peakLiveBytes(true) - live0, 2 * mib * MiB, 'reading with reset returns the old peak');
    assert.equal(n.peakLiveBytes(false), n.liveBytes(), 'after a reset the peak starts from the live bytes');
    be.releaseCached();
    assert.equal(n.cachedBytes(), 0, 'nothing kept after releaseCached');
    assert.equal(n.liveBytes(), live0, 'live tensors are not touched');
    // a released block is mapped afresh and works
    const c = ops.upload(be, { dtype: 'f32', data: new Float32Array((mib * MiB) / 4).fill(3) }, [(mib * MiB) / 4]);
    assert.equal((await ops.read(c))[(mib * MiB) / 4 - 1], 3);
    c.free();
  }));
