// The CPU backend: tensors in native 64-byte-aligned memory, kernels in native/cpu (C++, all cores,
// OpenBLAS for GEMMs). Only math: arguments arrive checked by the op layer (src/ops). The N-API layer
// still checks every handle and byte range, so no call from JS can touch memory outside a buffer.
import { availableParallelism } from 'node:os';
import { allocHost, type DType, dtypeSize, type HostArrayOf, type HostData } from '../../tensor/dtype.js';
import { Tensor } from '../../tensor/tensor.js';
import type {
  AdamwHyper,
  Backend,
  BackendInfo,
  MatmulOpts,
  OptimTensors,
  RmspropHyper,
  RopeOpts,
  SampleOpts,
  SpinLossOpts,
  SpinLossOutputs,
} from '../backend.js';
import { loadAddon, type NativeAddon } from './addon.js';

/** NaN bit patterns written into fresh buffers by a poisoning backend. */
export const POISON_BITS = { f32: 0x7fc00000, bf16: 0x7fc0, i32: 0x7fc00000 } as const;

export class CpuBackend implements Backend {
  readonly name = 'cpu';
  readonly native: NativeAddon;
  /** Fill every new buffer with NaN (tests: a kernel that skips an element is caught). */
  readonly poison: boolean;

  constructor(opts: { poison?: boolean } = {}) {
    this.native = loadAddon();
    this.poison = opts.poison ?? false;
  }

  /** Kernel threads (SPINLM_NUM_THREADS at start-up, else all cores). */
  get threads(): number {
    return this.native.numThreads();
  }
  set threads(n: number) {
    this.native.setNumThreads(n);
  }

  info(): BackendInfo {
    return {
      name: this.name,
      device: `CPU, ${this.threads} kernel thread(s) of ${availableParallelism()} core(s)`,
      details: ['GEMM: OpenBLAS', `recycled host memory held: ${(this.native.cachedBytes() / 2 ** 20).toFixed(0)} MiB`],
    };
  }

  empty<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
    const bytes = new Tensor(this, dtype, shape, null).byteLength;
    const out = new Tensor(this, dtype, shape, this.native.alloc(bytes));
    if (this.poison) this.fillBits(out, POISON_BITS[dtype]);
    return out;
  }

  write<D extends DType>(t: Tensor<D>, host: HostData<D>): void {
    this.native.write(t, host.data);
  }

  async read<D extends DType>(t: Tensor<D>): Promise<HostArrayOf<D>> {
    const out = allocHost(t.dtype, t.numel);
    this.native.read(t, out);
    return out;
  }

  async takeErrors(): Promise<number> {
    return this.native.takeErrors();
  }

  free(t: Tensor): void {
    this.native.free(t.handle);
  }

  fillBits(t: Tensor, bits: number): void {
    this.native.fill(t, t.numel, dtypeSize(t.dtype) as 2 | 4, bits >>> 0);
  }

  cast(t: Tensor, out: Tensor): void {
    this.native.cast(t, t.dtype, out, out.dtype, t.numel);
  }

  // ---- the loss family -------------------------------------------------------------------------
  logprobGather(logits: Tensor, targets: Tensor<'i32'>): { logp: Tensor<'f32'>; lse: Tensor<'f32'> } {
    const [n, v] = logits.shape;
    const logp = this.empty('f32', [n]);
    const lse = this.empty('f32', [n]);
    this.native.logprobGather(logits, logits.dtype, n, v, targets, logp, lse);
    return { logp, lse };
  }

  logprobGatherBackward(logits: Tensor, targets: Tensor<'i32'>, lse: Tensor<'f32'>, dlogp: Tensor<'f32'>, out: Tensor): void {
    const [n, v] = logits.shape;
    this.native.logprobGatherBackward(logits, logits.dtype, n, v, targets, lse, dlogp, out, out.dtype);
  }

  sequenceLogprob(logp: Tensor<'f32'>, segments: Tensor<'i32'>, numSeqs: number): Tensor<'f32'> {
    const out = this.empty('f32', [numSeqs]);
    this.native.sequenceLogprob(logp, segments, logp.numel, numSeqs, out);
    return out;
  }

  sequenceLogprobBackward(dseq: Tensor<'f32'>, segments: Tensor<'i32'>): Tensor<'f32'> {
    const out = this.empty('f32', [segments.numel]);
    this.native.sequenceLogprobBackward(dseq, segments, segments.numel, dseq.numel, out);
    return out;
  }

  spinLoss(policy: Tensor<'f32'>, ref: Tensor<'f32'>, opts: SpinLossOpts): SpinLossOutputs {
    const b = policy.numel / 2;
    const perPair = this.empty('f32', [7, b]);
    const means = this.empty('f32', [8]);
    const dseq = this.empty('f32', [2 * b]);
    this.native.spinLoss(
      policy,
      ref,
      opts.pairMask ?? null,
      b,
      opts.beta,
      opts.lossType,
      opts.nllAlpha ?? 0,
      opts.answerTokens ?? null,
      opts.gradScale ?? 1,
      perPair,
      means,
      dseq,
    );
    return { perPair, means, dseq };
  }

  // ---- optimizer ops -------------------------------------------------------------------------
  rmspropStep(p: OptimTensors & { squareAvg: Tensor<'f32'> }, h: RmspropHyper, clip?: Tensor<'f32'>): void {
    this.native.rmspropStep(p.param, p.param.dtype, p.master ?? null, p.grad, p.param.numel, p.squareAvg, h, clip ?? null);
  }

  adamwStep(p: OptimTensors & { expAvg: Tensor<'f32'>; expAvgSq: Tensor<'f32'> }, h: AdamwHyper, clip?: Tensor<'f32'>): void {
    this.native.adamwStep(p.param, p.param.dtype, p.master ?? null, p.grad, p.param.numel, p.expAvg, p.expAvgSq, h, clip ?? null);
  }

  sumSquares(x: Tensor<'f32'>, out: Tensor<'f32'>, index: number): void {
    this.native.sumSquares(x, x.numel, out, index);
  }

  clipCoefficient(sumsq: Tensor<'f32'>, maxNorm: number): Tensor<'f32'> {
    const out = this.empty('f32', [2]);
    this.native.clipCoefficient(sumsq, sumsq.numel, maxNorm, out);
    return out;
  }

  scaleInPlace(x: Tensor<'f32'>, a: number): void {
    this.native.scaleInPlace(x, x.numel, a);
  }

  accumulate(acc: Tensor<'f32'>, x: Tensor<'f32'>, alpha: number): void {
    this.native.accumulate(acc, x, acc.numel, alpha);
  }

  sampleTokens(logits: Tensor<'f32'>, rng: Tensor<'i32'>, active: Tensor<'i32'>, o: SampleOpts): Tensor<'i32'> {
    const [b, v] = logits.shape;
    const out = this.empty('i32', [b]);
    this.native.sampleTokens(logits, b, v, rng, active, o.temperature, o.topK, o.topP, out);
    return out;
  }

  // ---- model ops -----------------------------------------------------------------------------
  matmul(a: Tensor<'f32'>, b: Tensor, opts: MatmulOpts = {}): Tensor<'f32'> {
    const [ar, ac] = a.shape;
    const [br, bc] = b.shape;
    const [m, k] = opts.transA ? [ac, ar] : [ar, ac];
    const n = opts.transB ? br : bc;
    const out = opts.out ?? this.empty('f32', [m, n]);
    this.native.matmul(!!opts.transA, !!opts.transB, m, n, k, opts.alpha ?? 1, a, ac, b, b.dtype, bc, opts.accumulate ? 1 : 0, out, n);
    return out;
  }

  embedding(ids: Tensor<'i32'>, table: Tensor): Tensor<'f32'> {
    const [v, h] = table.shape;
    const out = this.empty('f32', [ids.numel, h]);
    this.native.embedding(ids, ids.numel, table, table.dtype, v, h, out);
    return out;
  }

  embeddingBackward(ids: Tensor<'i32'>, dout: Tensor<'f32'>, dtable: Tensor<'f32'>): void {
    const [v, h] = dtable.shape;
    this.native.embeddingBackward(ids, ids.numel, dout, v, h, dtable);
  }

  rmsnorm(x: Tensor<'f32'>, w: Tensor, eps: number): { y: Tensor<'f32'>; rstd: Tensor<'f32'> } {
    const [t, h] = x.shape;
    const y = this.empty('f32', x.shape);
    const rstd = this.empty('f32', [t]);
    this.native.rmsnorm(x, w, w.dtype, t, h, eps, y, rstd);
    return { y, rstd };
  }

  rmsnormBackward(x: Tensor<'f32'>, w: Tensor, rstd: Tensor<'f32'>, dy: Tensor<'f32'>, dw?: Tensor<'f32'>): Tensor<'f32'> {
    const [t, h] = x.shape;
    const dx = this.empty('f32', x.shape);
    this.native.rmsnormBackward(x, w, w.dtype, rstd, dy, t, h, dx, dw ?? null);
    return dx;
  }

  rope(x: Tensor<'f32'>, positions: Tensor<'i32'>, opts: RopeOpts): void {
    const [t, heads, hd] = x.shape;
    this.native.rope(x, positions, t, heads, hd, opts.theta, opts.scale ?? 1, !!opts.inverse);
  }

  attention(q: Tensor<'f32'>, k: Tensor<'f32'>, v: Tensor<'f32'>, keyMask: Tensor<'i32'>, opts: { scale?: number } = {}) {
    const [b, l, nh, hd] = q.shape;
    const nkv = k.shape[2];
    const out = this.empty('f32', q.shape);
    const lse = this.empty('f32', [b, nh, l]);
    this.native.attention(q, k, v, keyMask, b, l, nh, nkv, hd, opts.scale ?? 1 / Math.sqrt(hd), out, lse);
    return { out, lse };
  }

  attentionBackward(
    q: Tensor<'f32'>,
    k: Tensor<'f32'>,
    v: Tensor<'f32'>,
    keyMask: Tensor<'i32'>,
    out: Tensor<'f32'>,
    lse: Tensor<'f32'>,
    dout: Tensor<'f32'>,
    opts: { scale?: number } = {},
  ) {
    const [b, l, nh, hd] = q.shape;
    const nkv = k.shape[2];
    const dq = this.empty('f32', q.shape);
    const dk = this.empty('f32', k.shape);
    const dv = this.empty('f32', v.shape);
    this.native.attentionBackward(q, k, v, keyMask, out, lse, dout, b, l, nh, nkv, hd, opts.scale ?? 1 / Math.sqrt(hd), dq, dk, dv);
    return { dq, dk, dv };
  }

  attentionDecode(
    q: Tensor<'f32'>,
    kCache: Tensor<'f32'>,
    vCache: Tensor<'f32'>,
    lengths: Tensor<'i32'>,
    keyMask?: Tensor<'i32'>,
    opts: { scale?: number } = {},
  ): Tensor<'f32'> {
    const [b, nh, hd] = q.shape;
    const [, nkv, lmax] = kCache.shape;
    const out = this.empty('f32', q.shape);
    this.native.attentionDecode(q, kCache, vCache, lengths, keyMask ?? null, b, lmax, nh, nkv, hd, opts.scale ?? 1 / Math.sqrt(hd), out);
    return out;
  }

  scatterRows(src: Tensor<'f32'>, index: Tensor<'i32'>, dst: Tensor<'f32'>): void {
    const [rows, cols] = src.shape;
    this.native.scatterRows(src, index, rows, cols, dst, dst.shape[0]);
  }

  swiglu(gate: Tensor<'f32'>, up: Tensor<'f32'>): Tensor<'f32'> {
    const out = this.empty('f32', gate.shape);
    this.native.swiglu(gate, up, gate.numel, out);
    return out;
  }

  swigluBackward(gate: Tensor<'f32'>, up: Tensor<'f32'>, dout: Tensor<'f32'>): { dgate: Tensor<'f32'>; dup: Tensor<'f32'> } {
    const dgate = this.empty('f32', gate.shape);
    const dup = this.empty('f32', gate.shape);
    this.native.swigluBackward(gate, up, dout, gate.numel, dgate, dup);
    return { dgate, dup };
  }

  add(a: Tensor<'f32'>, b: Tensor<'f32'>, out?: Tensor<'f32'>): Tensor<'f32'> {
    const y = out ?? this.empty('f32', a.shape);
    this.native.add(a, b, a.numel, y);
    return y;
  }

  addBias(x: Tensor<'f32'>, bias: Tensor): void {
    const [t, n] = x.shape;
    this.native.addBias(x, bias, bias.dtype, t, n);
  }

  biasBackward(dy: Tensor<'f32'>, dbias: Tensor<'f32'>): void {
    const [t, n] = dy.shape;
    this.native.biasBackward(dy, t, n, dbias);
  }
}

let defaultCpu: CpuBackend | undefined;
/** The process-wide CPU backend. */
export function cpuBackend(): CpuBackend {
  defaultCpu ??= new CpuBackend();
  return defaultCpu;
}
