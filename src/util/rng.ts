// Seeded PRNG: xoshiro128** (Blackman & Vigna) whose 128-bit state is filled by splitmix64 from a
// 64-bit key. Only 32-bit integer ops (Math.imul, shifts), so every platform gives the same stream.
//
// Streams: `new Rng(seed)` is one stream; `rng.fork(label)` derives another from the key and the
// label alone (not from how many numbers the parent has drawn), so per-item streams such as
// `root.fork(promptIndex)` give the same numbers whatever the batch size or order of work.

const MASK64 = (1n << 64n) - 1n;
const GOLDEN64 = 0x9e3779b97f4a7c15n;

/** splitmix64's output function: a bijective 64-bit mixer. */
function mix64(z: bigint): bigint {
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

/** FNV-1a 64 over the UTF-8 bytes of a label. */
function hashLabel(label: string): bigint {
  let h = 0xcbf29ce484222325n;
  for (const b of new TextEncoder().encode(label)) h = ((h ^ BigInt(b)) * 0x100000001b3n) & MASK64;
  return h;
}

export type Seed = number | bigint | string;

/** A seed as a 64-bit key: integers (safe integers or bigint) wrap to 64 bits; strings are hashed. */
export function seedKey(seed: Seed): bigint {
  if (typeof seed === 'bigint') return BigInt.asUintN(64, seed);
  if (typeof seed === 'number') {
    if (!Number.isSafeInteger(seed)) throw new RangeError(`rng seed must be a safe integer, a bigint or a string, got ${seed}`);
    return BigInt.asUintN(64, BigInt(seed));
  }
  if (typeof seed === 'string') return mix64(hashLabel(seed) ^ 0x5eed5eed5eed5eedn);
  throw new TypeError(`rng seed must be a number, a bigint or a string, got ${typeof seed}`);
}

/** Serializable generator state (for resuming runs exactly). */
export interface RngState {
  key: string; // 64-bit key as a decimal string
  s: [number, number, number, number]; // xoshiro128** state words (uint32)
  spare: number | null; // cached second Box-Muller normal
}

const TWO_POW_32 = 4294967296;
const TWO_POW_53 = 9007199254740992;

export class Rng {
  /** The 64-bit key this stream was seeded from; forks derive from it. */
  readonly key: bigint;
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;
  private spare: number | null = null;

  constructor(seed: Seed) {
    this.key = seedKey(seed);
    // splitmix64: state += golden; output mix64(state). Two outputs fill the four 32-bit words.
    const a = mix64((this.key + GOLDEN64) & MASK64);
    const b = mix64((this.key + 2n * GOLDEN64) & MASK64);
    this.s0 = Number(a & 0xffffffffn);
    this.s1 = Number(a >> 32n);
    this.s2 = Number(b & 0xffffffffn);
    this.s3 = Number(b >> 32n);
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // the one forbidden state
  }

  /** Uniform integer in [0, 2^32). */
  nextU32(): number {
    const s1 = this.s1;
    const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return r;
  }

  /** Uniform double in [0, 1) with 53 random bits (two draws). */
  next(): number {
    const hi = this.nextU32() >>> 5; // 27 bits
    const lo = this.nextU32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / TWO_POW_53;
  }

  /** Uniform integer in [lo, hi], both ends included; unbiased (rejection sampling). */
  int(lo: number, hi: number): number {
    if (!Number.isSafeInteger(lo) || !Number.isSafeInteger(hi) || hi < lo) {
      throw new RangeError(`rng.int(lo, hi) needs safe integers with lo <= hi, got (${lo}, ${hi})`);
    }
    const range = hi - lo + 1;
    if (range <= TWO_POW_32) {
      const limit = TWO_POW_32 - (TWO_POW_32 % range); // accept [0, limit): a multiple of range
      for (;;) {
        const x = this.nextU32();
        if (x < limit) return lo + (x % range);
      }
    }
    if (range > TWO_POW_53) throw new RangeError(`rng.int range ${range} exceeds 2^53`);
    const limit = TWO_POW_53 - (TWO_POW_53 % range);
    for (;;) {
      const x = this.next() * TWO_POW_53; // exact integer in [0, 2^53)
      if (x < limit) return lo + (x % range);
    }
  }

  /** Normal deviate (Box-Muller; the second value of each pair is kept for the next call). */
  normal(mean = 0, std = 1): number {
    if (this.spare !== null) {
      const z = this.spare;
      this.spare = null;
      return mean + std * z;
    }
    const u1 = 1 - this.next(); // (0, 1]: log stays finite
    const u2 = this.next();
    const r = Math.sqrt(-2 * Math.log(u1));
    const theta = 2 * Math.PI * u2;
    this.spare = r * Math.sin(theta);
    return mean + std * r * Math.cos(theta);
  }

  /** Fisher-Yates shuffle in place; returns the same array. */
  shuffle<T>(array: T[]): T[] {
    for (let i = array.length - 1; i > 0; i--) {
      const j = this.int(0, i);
      const tmp = array[i];
      array[i] = array[j];
      array[j] = tmp;
    }
    return array;
  }

  /**
   * An independent stream named by `label`, derived from this stream's key only: the same label
   * gives the same stream however many numbers this one has drawn. Numbers and their decimal
   * strings are different labels (`fork(1)` != `fork('1')`).
   */
  fork(label: string | number): Rng {
    let tag: bigint;
    if (typeof label === 'number') {
      if (!Number.isSafeInteger(label)) throw new RangeError(`rng.fork label must be a safe integer or a string, got ${label}`);
      tag = mix64(BigInt.asUintN(64, BigInt(label)) ^ 0x6e756d6265720000n);
    } else if (typeof label === 'string') {
      tag = mix64(hashLabel(label));
    } else {
      throw new TypeError(`rng.fork label must be a number or a string, got ${typeof label}`);
    }
    return new Rng(mix64(((this.key ^ tag) + GOLDEN64) & MASK64));
  }

  getState(): RngState {
    return { key: this.key.toString(), s: [this.s0 >>> 0, this.s1 >>> 0, this.s2 >>> 0, this.s3 >>> 0], spare: this.spare };
  }

  static fromState(state: RngState): Rng {
    const ok =
      state !== null &&
      typeof state === 'object' &&
      typeof state.key === 'string' &&
      /^[0-9]+$/.test(state.key) &&
      Array.isArray(state.s) &&
      state.s.length === 4 &&
      state.s.every((w) => Number.isInteger(w) && w >= 0 && w < TWO_POW_32) &&
      state.s.some((w) => w !== 0) &&
      (state.spare === null || Number.isFinite(state.spare));
    if (!ok)
      throw new TypeError(
        `rng state must be {key: decimal string, s: 4 uint32 (not all 0), spare: number|null}, got ${JSON.stringify(state)}`,
      );
    const rng = new Rng(BigInt(state.key));
    [rng.s0, rng.s1, rng.s2, rng.s3] = state.s;
    rng.spare = state.spare;
    return rng;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
