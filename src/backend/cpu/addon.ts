// Loads the native addon: prebuilds/<platform>-<arch>/ first, then build/Release (the node-gyp build),
// through node-gyp-build. SPINLM_ADDON=/path/to/spinlm.node loads one file instead (e.g. the cmake-js
// build in build-cmake/Release).
// When nothing loads, one error says what was looked for, what was found and how to fix it.
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeDlopenError } from './load_error.js';

/** A tensor as the addon sees it: a buffer handle and a byte offset into it. */
export interface NativeView {
  readonly handle: unknown;
  readonly byteOffset: number;
}

/** The functions of native/addon.cc. Shapes and meanings: native/cpu/kernels.h. */
export interface NativeAddon {
  abiVersion: number;
  alloc(bytes: number): unknown;
  free(handle: unknown): void;
  write(dst: NativeView, src: ArrayBufferView): void;
  read(src: NativeView, dst: ArrayBufferView): void;
  fill(t: NativeView, count: number, elementBytes: 2 | 4, pattern: number): void;
  cast(src: NativeView, srcDtype: string, dst: NativeView, dstDtype: string, count: number): void;
  logprobGather(logits: NativeView, dtype: string, n: number, v: number, targets: NativeView, logp: NativeView, lse: NativeView): void;
  logprobGatherBackward(
    logits: NativeView,
    dtype: string,
    n: number,
    v: number,
    targets: NativeView,
    lse: NativeView,
    dlogp: NativeView,
    dlogits: NativeView,
    outDtype: string,
  ): void;
  sequenceLogprob(logp: NativeView, segments: NativeView, n: number, numSeqs: number, out: NativeView): void;
  sequenceLogprobBackward(dseq: NativeView, segments: NativeView, n: number, numSeqs: number, dlogp: NativeView): void;
  spinLoss(
    policy: NativeView,
    ref: NativeView,
    pairMask: NativeView | null,
    b: number,
    beta: number,
    lossType: string,
    nllAlpha: number,
    answerTokens: NativeView | null,
    gradScale: number,
    perPair: NativeView,
    means: NativeView,
    dseq: NativeView,
  ): void;
  takeErrors(): number;
  accumulate(acc: NativeView, x: NativeView, n: number, alpha: number): void;
  sampleTokens(
    logits: NativeView,
    b: number,
    v: number,
    rng: NativeView,
    active: NativeView,
    temperature: number,
    topK: number,
    topP: number,
    out: NativeView,
  ): void;
  rmspropStep(
    param: NativeView,
    dtype: string,
    master: NativeView | null,
    grad: NativeView,
    n: number,
    squareAvg: NativeView,
    h: { lr: number; alpha: number; eps: number; weightDecay: number },
    clip: NativeView | null,
  ): void;
  adamwStep(
    param: NativeView,
    dtype: string,
    master: NativeView | null,
    grad: NativeView,
    n: number,
    expAvg: NativeView,
    expAvgSq: NativeView,
    h: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number; step: number },
    clip: NativeView | null,
  ): void;
  sumSquares(x: NativeView, n: number, out: NativeView, index: number): void;
  clipCoefficient(sumsq: NativeView, count: number, maxNorm: number, out: NativeView): void;
  scaleInPlace(y: NativeView, n: number, a: number): void;
  matmul(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: NativeView,
    lda: number,
    b: NativeView,
    bDtype: string,
    ldb: number,
    beta: number,
    c: NativeView,
    ldc: number,
    rowInvariant: boolean,
    /** a rounded to bf16, exact bf16 products summed in f32 (b bf16, a linear layer's layout) */
    computeBf16: boolean,
  ): void;
  /** outs[i] [m, ns[i]] = a [m, k] bs[i] [ns[i], k]^T, row-invariant; every b and out contiguous. */
  matmulRowsMany(
    m: number,
    k: number,
    a: NativeView,
    lda: number,
    bs: NativeView[],
    bDtypes: string[],
    ns: number[],
    outs: NativeView[],
    computeBf16: boolean,
  ): void;
  embedding(ids: NativeView, t: number, table: NativeView, dtype: string, vocab: number, hidden: number, out: NativeView): void;
  embeddingBackward(ids: NativeView, t: number, dout: NativeView, vocab: number, hidden: number, dtable: NativeView): void;
  rmsnorm(x: NativeView, w: NativeView, wDtype: string, t: number, h: number, eps: number, y: NativeView, rstd: NativeView): void;
  rmsnormBackward(
    x: NativeView,
    w: NativeView,
    wDtype: string,
    rstd: NativeView,
    dy: NativeView,
    t: number,
    h: number,
    dx: NativeView,
    dw: NativeView | null,
  ): void;
  rope(x: NativeView, positions: NativeView, t: number, heads: number, hd: number, theta: number, scale: number, inverse: boolean): void;
  attention(
    q: NativeView,
    k: NativeView,
    v: NativeView,
    keyMask: NativeView,
    b: number,
    l: number,
    nh: number,
    nkv: number,
    hd: number,
    scale: number,
    out: NativeView,
    lse: NativeView,
  ): void;
  attentionBackward(
    q: NativeView,
    k: NativeView,
    v: NativeView,
    keyMask: NativeView,
    out: NativeView,
    lse: NativeView,
    dout: NativeView,
    b: number,
    l: number,
    nh: number,
    nkv: number,
    hd: number,
    scale: number,
    dq: NativeView,
    dk: NativeView,
    dv: NativeView,
  ): void;
  attentionDecode(
    q: NativeView,
    kCache: NativeView,
    vCache: NativeView,
    cacheDtype: string,
    lengths: NativeView,
    keyMask: NativeView | null,
    b: number,
    lmax: number,
    nh: number,
    nkv: number,
    hd: number,
    scale: number,
    out: NativeView,
  ): void;
  scatterRows(src: NativeView, index: NativeView, rows: number, cols: number, dst: NativeView, dstDtype: string, dstRows: number): void;
  swiglu(gate: NativeView, up: NativeView, n: number, out: NativeView): void;
  swigluBackward(gate: NativeView, up: NativeView, dout: NativeView, n: number, dgate: NativeView, dup: NativeView): void;
  add(a: NativeView, b: NativeView, n: number, y: NativeView): void;
  addBias(x: NativeView, bias: NativeView, biasDtype: string, t: number, n: number): void;
  biasBackward(dy: NativeView, t: number, n: number, dbias: NativeView): void;
  /**
   * Benchmark probes: read `bytes` bytes on all threads; evaluate `count` vector exps on all threads
   * ('loss': the loss kernels' exp, the default; 'cephes': simd::exp_neg, the one they used before).
   */
  streamRead(t: NativeView, bytes: number): number;
  expThroughput(count: number, exp?: 'loss' | 'cephes'): number;
  rowOffset(row: number, cols: number): bigint;
  /** Big freed blocks are recycled (native/cpu/memory.h): how many bytes are held for reuse. */
  cachedBytes(): number;
  /** Gives the blocks held for reuse back to the system. */
  releaseCached(): void;
  /** Bytes of the tensors allocated and not yet freed (native/cpu/memory.cc's counter). */
  liveBytes(): number;
  /** The most liveBytes() has been since the last reset; `reset` starts again from the live bytes. */
  peakLiveBytes(reset?: boolean): number;
  numThreads(): number;
  setNumThreads(n: number): void;
  /**
   * The kernel set OpenBLAS picked when it loaded (openblas_get_corename: "SkylakeX", "Haswell", ...):
   * OPENBLAS_CORETYPE in the environment overrides its choice, and the benchmarks report it.
   */
  blasCore(): string;
}

/** The package root: two levels above src/backend/cpu or dist/backend/cpu. */
export const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** Bumped whenever a binding's arguments change (native/addon.cc exports the same number). */
const ABI_VERSION = 7;

let cached: NativeAddon | undefined;

function listNodeFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...listNodeFiles(p));
    else if (entry.name.endsWith('.node')) out.push(p);
  }
  return out;
}

export function loadAddon(): NativeAddon {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const override = process.env.SPINLM_ADDON;
  try {
    cached = (override ? require(resolve(override)) : require('node-gyp-build')(packageRoot)) as NativeAddon;
  } catch (err) {
    const found = [...listNodeFiles(join(packageRoot, 'prebuilds')), ...listNodeFiles(join(packageRoot, 'build'))];
    const message = [
      `spinlm: could not load its native addon (${(err as Error).message.split('\n')[0]}).`,
      ...[describeDlopenError((err as Error).message)].filter((line) => line !== undefined),
      override
        ? `Looked for: SPINLM_ADDON=${override}.`
        : `Looked for: ${join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`)}/*.node, then ${join(packageRoot, 'build', 'Release')}/spinlm.node.`,
      `Found: ${found.length ? found.join(', ') : 'no .node files'}.`,
      `Fix: build it from source with \`cd ${packageRoot} && npx node-gyp rebuild\` (needs python3, make, g++),`,
      `or reinstall spinlm on a linux-x64 machine where its prebuilt binary applies.`,
    ].join('\n');
    throw new Error(message, { cause: err });
  }
  if (cached.abiVersion !== ABI_VERSION) {
    const v = cached.abiVersion;
    cached = undefined;
    throw new Error(`spinlm: the native addon speaks ABI ${v}, this code expects ${ABI_VERSION}: rebuild it with \`npx node-gyp rebuild\``);
  }
  return cached;
}
