// Seeds for tests: fresh every run (SPINLM_TEST_SEED pins one), printed when a test fails.
import { Rng } from '../../src/util/rng.js';

export function testSeed(): number {
  const pinned = process.env.SPINLM_TEST_SEED;
  return pinned !== undefined ? Number(pinned) >>> 0 : (Date.now() ^ (process.pid << 16)) >>> 0;
}

/** Runs fn with a fresh seeded Rng; a failure's message gains the seed that reproduces it. */
export async function withSeed<T>(fn: (rng: Rng, seed: number) => T | Promise<T>): Promise<T> {
  const seed = testSeed();
  try {
    return await fn(new Rng(seed), seed);
  } catch (err) {
    if (err instanceof Error) err.message = `${err.message}\n  (reproduce with SPINLM_TEST_SEED=${seed})`;
    throw err;
  }
}

/** n normal samples times `scale`, as f32 values. */
export function randn(rng: Rng, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.normal() * scale;
  return out;
}
