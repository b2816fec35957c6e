// The Backend math shared by the backends whose native addon exposes the CPU addon's kernel functions
// (the CPU addon, and the CUDA addon and its emulator, which keep the same names and arguments): one
// copy of the glue from tensors to kernel calls. A subclass owns memory and says how an op's outputs
// are allocated (`output`: the CUDA backend names the op in out-of-memory errors).
import type {
  AdamwHyper,
  AttentionOpts,
  Backend,
  GluOpts,
  HeadOpts,
  LinearsOpts,
  MatmulOpts,
  OptimTensors,
  RmsNormOpts,
  RmspropHyper,
  RopeOpts,
  SampleOpts,
  SpinLossOpts,
  SpinLossOutputs,
} from './backend.js';
import { asBf16, attentionBackwardOnRounded, attentionOnRounded, matmulOnRounded } from './bf16_compute.js';
import type { NativeOps } from './native/op_list.js';
import type { DType } from '../tensor/dtype.js';
import type { Tensor } from '../tensor/tensor.js';

export abstract class NativeKernels {
  /** The addon's ops: the op list (native/op_list.h), the same functions and arguments in both addons. */
  abstract readonly native: NativeOps;
  /**
   * Which computeDtype 'bf16' GEMMs the addon runs itself: 'linear' (the CPU: the linear layer form
   * with an f32 a and a bf16 b; other forms go through bf16_compute.ts's rounding) or 'all' (CUDA: every
   * form and dtype mix, cuBLASLt on a GPU). Both take headLogprobBackward's computeBf16.
   */
  protected abstract readonly nativeBf16Compute: 'linear' | 'all';
  /** attention with computeDtype 'bf16' runs a bf16 kernel (else: attentionOnRounded) */
  protected readonly nativeBf16Attention: boolean = false;
  /** the head dims the native bf16 attention kernels take (the others: attentionOnRounded) */
  protected bf16AttentionTakes(hd: number): boolean {
    return hd % 16 === 0 && hd > 0 && hd <= 256;
  }
  /**
   * attentionBackward with computeDtype 'bf16' runs a bf16 kernel (else: attentionBackwardOnRounded), for
   * head dims that are multiples of 16 (the tensor-core tiles; others: attentionBackwardOnRounded too)
   */
  protected readonly nativeBf16AttentionBackward: boolean = false;

  abstract empty<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D>;
  abstract cast(t: Tensor, out: Tensor): void;
  abstract free(t: Tensor): void;

  /** A new tensor for an output of `op`. */
  protected abstract output<D extends DType>(dtype: D, shape: readonly number[], op: string): Tensor<D>;

  // ---- the loss family -------------------------------------------------------------------------
  logprobGather(logits: Tensor, targets: Tensor<'i32'>): { logp: Tensor<'f32'>; lse: Tensor<'f32'> } {
    const [n, v] = logits.shape;
    const logp = this.output('f32', [n], 'logprobGather');
    const lse = this.output('f32', [n], 'logprobGather');
    this.native.logprobGather(logits, logits.dtype, n, v, targets, logp, lse);
    return { logp, lse };
  }

  logprobGatherBackward(logits: Tensor, targets: Tensor<'i32'>, lse: Tensor<'f32'>, dlogp: Tensor<'f32'>, out: Tensor): void {
    const [n, v] = logits.shape;
    this.native.logprobGatherBackward(logits, logits.dtype, n, v, targets, lse, dlogp, out, out.dtype);
  }

  /** Whether the addon's computeBf16 GEMM takes this form and these dtypes (nativeBf16Compute). */
  private bf16Kernel(transA: boolean, transB: boolean, a: DType, b: DType): boolean {
    return this.nativeBf16Compute === 'all' || (!transA && transB && a === 'f32' && b === 'bf16');
  }

  headLogprob(h: Tensor<'f32'>, w: Tensor, targets: Tensor<'i32'>, opts: HeadOpts): { logp: Tensor<'f32'>; lse: Tensor<'f32'> } {
    if (opts.computeDtype === 'bf16' && !this.bf16Kernel(false, true, 'f32', w.dtype)) {
      const w16 = asBf16(this, w); // the CPU's bf16 head takes a bf16 w: an f32 one rounded first
      const out = this.headLogprob(h, w16, targets, opts);
      this.free(w16);
      return out;
    }
    const [n, hdim] = h.shape;
    const logp = this.output('f32', [n], 'headLogprob');
    const lse = this.output('f32', [n], 'headLogprob');
    const bf16 = opts.computeDtype === 'bf16';
    this.native.headLogprob(h, n, hdim, w, w.dtype, w.shape[0], targets, opts.softcap ?? 0, !!opts.rowInvariant, bf16, logp, lse);
    return { logp, lse };
  }

  headLogprobBackward(
    h: Tensor<'f32'>,
    w: Tensor,
    targets: Tensor<'i32'>,
    lse: Tensor<'f32'>,
    dlogp: Tensor<'f32'>,
    dh: Tensor<'f32'>,
    dw: Tensor<'f32'> | null,
    opts: HeadOpts,
  ): void {
    const [n, hdim] = h.shape;
    const bf16 = opts.computeDtype === 'bf16';
    this.native.headLogprobBackward(h, n, hdim, w, w.dtype, w.shape[0], targets, opts.softcap ?? 0, lse, dlogp, dh, dw, bf16);
  }

  sequenceLogprob(logp: Tensor<'f32'>, segments: Tensor<'i32'>, numSeqs: number): Tensor<'f32'> {
    const out = this.output('f32', [numSeqs], 'sequenceLogprob');
    this.native.sequenceLogprob(logp, segments, logp.numel, numSeqs, out);
    return out;
  }

  sequenceLogprobBackward(dseq: Tensor<'f32'>, segments: Tensor<'i32'>): Tensor<'f32'> {
    const out = this.output('f32', [segments.numel], 'sequenceLogprobBackward');
    this.native.sequenceLogprobBackward(dseq, segments, segments.numel, dseq.numel, out);
    return out;
  }

  spinLoss(policy: Tensor<'f32'>, ref: Tensor<'f32'>, opts: SpinLossOpts): SpinLossOutputs {
    const b = policy.numel / 2;
    const perPair = this.output('f32', [7, b], 'spinLoss');
    const means = this.output('f32', [8], 'spinLoss');
    const dseq = this.output('f32', [2 * b], 'spinLoss');
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
    const out = this.output('f32', [2], 'clipCoefficient');
    this.native.clipCoefficient(sumsq, sumsq.numel, maxNorm, out);
    return out;
  }

  scaleInPlace(x: Tensor<'f32'>, a: number): void {
    this.native.scaleInPlace(x, x.numel, a);
  }

  softcapInPlace(x: Tensor<'f32'>, c: number): void {
    this.native.softcapInPlace(x, x.numel, c);
  }

  accumulate(acc: Tensor<'f32'>, x: Tensor<'f32'>, alpha: number): void {
    this.native.accumulate(acc, x, acc.numel, alpha);
  }

  sampleTokens(logits: Tensor<'f32'>, rng: Tensor<'i32'>, active: Tensor<'i32'>, o: SampleOpts, limit: number): Tensor<'i32'> {
    const [b, v] = logits.shape;
    const out = this.output('i32', [b], 'sampleTokens');
    this.native.sampleTokens(logits, b, v, limit, rng, active, o.temperature, o.topK, o.topP, out);
    return out;
  }

  // ---- model ops -----------------------------------------------------------------------------
  matmul(a: Tensor, b: Tensor, opts: MatmulOpts = {}): Tensor<'f32'> {
    const bf16 = opts.computeDtype === 'bf16';
    if (bf16 && !this.bf16Kernel(!!opts.transA, !!opts.transB, a.dtype, b.dtype)) return matmulOnRounded(this, a, b, opts);
    const [ar, ac] = a.shape;
    const [br, bc] = b.shape;
    const [m, k] = opts.transA ? [ac, ar] : [ar, ac];
    const n = opts.transB ? br : bc;
    const out = opts.out ?? this.output('f32', [m, n], 'matmul');
    const acc = opts.accumulate ? 1 : 0;
    this.native.matmul(
      !!opts.transA,
      !!opts.transB,
      m,
      n,
      k,
      opts.alpha ?? 1,
      a,
      ac,
      b,
      b.dtype,
      bc,
      acc,
      out,
      n,
      !!opts.rowInvariant,
      bf16,
      a.dtype,
    );
    return out;
  }

  linears(x: Tensor, weights: readonly Tensor[], opts: LinearsOpts): Tensor<'f32'>[] {
    const bf16 = opts.computeDtype === 'bf16';
    // one native call: the row-invariant GEMM (f32 x), also the CPU's bf16 kernel (row-invariant
    // itself); CUDA's bf16 GEMMs that need not be row-invariant go to cuBLASLt one weight at a time
    const rows = bf16
      ? x.dtype === 'f32' &&
        (opts.rowInvariant || this.nativeBf16Compute === 'linear') &&
        weights.every((w) => this.bf16Kernel(false, true, 'f32', w.dtype))
      : opts.rowInvariant;
    if (!rows) return weights.map((w) => this.matmul(x, w, { transB: true, ...opts }));
    const [m, k] = x.shape;
    const outs = weights.map((w) => this.output('f32', [m, w.shape[0]], 'linears'));
    this.native.matmulRowsMany(
      m,
      k,
      x,
      k,
      [...weights],
      weights.map((w) => w.dtype),
      weights.map((w) => w.shape[0]),
      outs,
      bf16,
    );
    return outs;
  }

  embedding(ids: Tensor<'i32'>, table: Tensor): Tensor<'f32'> {
    const [v, h] = table.shape;
    const out = this.output('f32', [ids.numel, h], 'embedding');
    this.native.embedding(ids, ids.numel, table, table.dtype, v, h, out);
    return out;
  }

  embeddingBackward(ids: Tensor<'i32'>, dout: Tensor<'f32'>, dtable: Tensor<'f32'>): void {
    const [v, h] = dtable.shape;
    this.native.embeddingBackward(ids, ids.numel, dout, v, h, dtable);
  }

  rmsnorm(x: Tensor<'f32'>, w: Tensor, eps: number, opts: RmsNormOpts = {}): { y: Tensor<'f32'>; rstd: Tensor<'f32'> } {
    const [t, h] = x.shape;
    const y = this.output('f32', x.shape, 'rmsnorm');
    const rstd = this.output('f32', [t], 'rmsnorm');
    this.native.rmsnorm(x, w, w.dtype, t, h, eps, y, rstd, opts.unitOffset === true);
    return { y, rstd };
  }

  rmsnormBackward(
    x: Tensor<'f32'>,
    w: Tensor,
    rstd: Tensor<'f32'>,
    dy: Tensor<'f32'>,
    dw?: Tensor<'f32'>,
    opts: RmsNormOpts = {},
  ): Tensor<'f32'> {
    const [t, h] = x.shape;
    const dx = this.output('f32', x.shape, 'rmsnormBackward');
    this.native.rmsnormBackward(x, w, w.dtype, rstd, dy, t, h, dx, dw ?? null, opts.unitOffset === true);
    return dx;
  }

  rope(x: Tensor<'f32'>, positions: Tensor<'i32'>, opts: RopeOpts): void {
    const [t, heads, hd] = x.shape;
    this.native.rope(x, positions, opts.invFreq, t, heads, hd, opts.attentionScale ?? 1, !!opts.inverse);
  }

  attention(q: Tensor<'f32'>, k: Tensor<'f32'>, v: Tensor<'f32'>, keyMask: Tensor<'i32'>, opts: AttentionOpts = {}) {
    const [b, l, nh, hd] = q.shape;
    const bf16 = opts.computeDtype === 'bf16';
    if (bf16 && !(this.nativeBf16Attention && this.bf16AttentionTakes(hd))) return attentionOnRounded(this, q, k, v, keyMask, opts);
    const nkv = k.shape[2];
    const out = this.output('f32', q.shape, 'attention');
    const lse = this.output('f32', [b, nh, l], 'attention');
    this.native.attention(
      q,
      k,
      v,
      keyMask,
      opts.spans ?? null,
      b,
      l,
      nh,
      nkv,
      hd,
      opts.scale ?? 1 / Math.sqrt(hd),
      opts.window ?? 0,
      opts.softcap ?? 0,
      out,
      lse,
      bf16,
    );
    return { out, lse };
  }

  attentionBackward(...[q, k, v, keyMask, out, lse, dout, opts = {}]: Parameters<Backend['attentionBackward']>) {
    const [b, l, nh, hd] = q.shape;
    const bf16 = opts.computeDtype === 'bf16';
    if (bf16 && !(this.nativeBf16AttentionBackward && hd % 16 === 0))
      return attentionBackwardOnRounded(this, q, k, v, keyMask, out, lse, dout, opts);
    const nkv = k.shape[2];
    const dq = this.output('f32', q.shape, 'attentionBackward');
    const dk = this.output('f32', k.shape, 'attentionBackward');
    const dv = this.output('f32', v.shape, 'attentionBackward');
    this.native.attentionBackward(
      q,
      k,
      v,
      keyMask,
      opts.spans ?? null,
      out,
      lse,
      dout,
      b,
      l,
      nh,
      nkv,
      hd,
      opts.scale ?? 1 / Math.sqrt(hd),
      opts.window ?? 0,
      opts.softcap ?? 0,
      dq,
      dk,
      dv,
      bf16,
    );
    return { dq, dk, dv };
  }

  attentionDecode(...[q, kCache, vCache, lengths, keyMask, opts = {}]: Parameters<Backend['attentionDecode']>): Tensor<'f32'> {
    const [b, nh, hd] = q.shape;
    const [, nkv, lmax] = kCache.shape;
    const out = this.output('f32', q.shape, 'attentionDecode');
    this.native.attentionDecode(
      q,
      kCache,
      vCache,
      kCache.dtype,
      lengths,
      keyMask ?? null,
      b,
      lmax,
      nh,
      nkv,
      hd,
      opts.scale ?? 1 / Math.sqrt(hd),
      opts.window ?? 0,
      opts.softcap ?? 0,
      out,
    );
    return out;
  }

  scatterRows(src: Tensor<'f32'>, index: Tensor<'i32'>, dst: Tensor): void {
    const [rows, cols] = src.shape;
    this.native.scatterRows(src, index, rows, cols, dst, dst.dtype, dst.shape[0]);
  }

  swiglu(gate: Tensor<'f32'>, up: Tensor<'f32'>, opts: GluOpts = {}): Tensor<'f32'> {
    const out = this.output('f32', gate.shape, 'swiglu');
    this.native.swiglu(gate, up, gate.numel, out, opts.activation ?? 'silu');
    return out;
  }

  swigluBackward(
    gate: Tensor<'f32'>,
    up: Tensor<'f32'>,
    dout: Tensor<'f32'>,
    opts: GluOpts = {},
  ): { dgate: Tensor<'f32'>; dup: Tensor<'f32'> } {
    const dgate = this.output('f32', gate.shape, 'swigluBackward');
    const dup = this.output('f32', gate.shape, 'swigluBackward');
    this.native.swigluBackward(gate, up, dout, gate.numel, dgate, dup, opts.activation ?? 'silu');
    return { dgate, dup };
  }

  add(a: Tensor<'f32'>, b: Tensor<'f32'>, out?: Tensor<'f32'>): Tensor<'f32'> {
    const y = out ?? this.output('f32', a.shape, 'add');
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
