// Seeded sampling and train/test splits. Same seed and same input order -> same result.
import { Rng, type Seed } from '../util/rng.js';

/**
 * Uniform sample of `n` items from a stream of unknown length (Algorithm R), in O(n) memory.
 * `result()` returns the sample shuffled with the same stream.
 */
export class Reservoir<T> {
  private readonly items: T[] = [];
  private seen = 0;
  private readonly rng: Rng;

  constructor(
    readonly n: number,
    seed: Seed,
  ) {
    if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`sample size n must be a positive integer, got ${n}`);
    this.rng = new Rng(seed).fork('reservoir');
  }

  add(item: T): void {
    if (this.seen < this.n) this.items.push(item);
    else {
      const j = this.rng.int(0, this.seen);
      if (j < this.n) this.items[j] = item;
    }
    this.seen++;
  }

  /** How many items were offered. */
  get count(): number {
    return this.seen;
  }

  result(): T[] {
    return this.rng.shuffle(this.items.slice());
  }
}

/** `n` items chosen uniformly without replacement, in random order; the same as streaming them through a Reservoir. */
export function sampleItems<T>(items: readonly T[], n: number, seed: Seed): T[] {
  if (n > items.length) throw new RangeError(`cannot sample ${n} items from ${items.length}`);
  const r = new Reservoir<T>(n, seed);
  for (const x of items) r.add(x);
  return r.result();
}

/** A shuffled copy. */
export function shuffled<T>(items: readonly T[], seed: Seed): T[] {
  return new Rng(seed).fork('shuffle').shuffle(items.slice());
}

export interface SplitOptions {
  seed: Seed;
  testFraction?: number; // in (0, 1): test size = round(fraction * length)
  testCount?: number; // exact test size, 1 .. length-1
}

/**
 * Splits into disjoint train and test sets covering every item; each keeps the input order.
 * The test set is a seeded uniform choice of positions, so the same seed and length give the same split.
 */
export function splitTrainTest<T>(items: readonly T[], opts: SplitOptions): { train: T[]; test: T[] } {
  const len = items.length;
  if ((opts.testFraction === undefined) === (opts.testCount === undefined)) {
    throw new RangeError('splitTrainTest needs exactly one of testFraction or testCount');
  }
  let k: number;
  if (opts.testFraction !== undefined) {
    const f = opts.testFraction;
    if (!(typeof f === 'number' && f > 0 && f < 1)) throw new RangeError(`testFraction must be in (0, 1), got ${f}`);
    k = Math.round(f * len);
  } else {
    k = opts.testCount as number;
    if (!Number.isSafeInteger(k)) throw new RangeError(`testCount must be an integer, got ${k}`);
  }
  if (k < 1 || k > len - 1) {
    throw new RangeError(
      `split of ${len} items would leave an empty train or test set (test size ${k}); need 1 <= test size <= ${len - 1}`,
    );
  }
  const order = new Rng(opts.seed).fork('split').shuffle(Array.from({ length: len }, (_, i) => i));
  const isTest = new Uint8Array(len);
  for (let i = 0; i < k; i++) isTest[order[i]] = 1;
  const train: T[] = [];
  const test: T[] = [];
  for (let i = 0; i < len; i++) (isTest[i] ? test : train).push(items[i]);
  return { train, test };
}
