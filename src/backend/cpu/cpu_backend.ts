// The CPU backend: tensors in native 64-byte-aligned memory, kernels in native/cpu (C++, both cores).
import { allocHost, checkHostArray, type DType, dtypeSize, type HostArrayOf, type HostData } from '../../tensor/dtype.js';
import { Tensor } from '../../tensor/tensor.js';
import type { AdamwHyper, Backend, OptimTensors, RmspropHyper, SpinLossOpts } from '../backend.js';
import { checkFinite, checkLogprobArgs, expectDType, expectRank, expectShape, expectTensor } from '../validate.js';
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

  empty<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
    const t = new Tensor(this, dtype, shape, null);
    const out = new Tensor(this, dtype, shape, this.native.alloc(t.byteLength));
    if (this.poison) this.fillBits(out, POISON_BITS[dtype]);
    return out;
  }

  upload<D extends DType>(host: HostData<D>, shape: readonly number[]): Tensor<D> {
    checkHostArray(host.dtype, host.data, 'upload');
    const t = this.empty(host.dtype, shape);
    if (host.data.length !== t.numel) {
      t.free();
      throw new RangeError(`upload: ${host.data.length} elements do not fill shape [${shape.join(', ')}] (${t.numel})`);
    }
    this.write(t, host);
    return t;
  }

  write<D extends DType>(t: Tensor<D>, host: HostData<D>): void {
    expectTensor(this, t, 'tensor');
    checkHostArray(host.dtype, host.data, 'write');
    if (host.dtype !== t.dtype) throw new TypeError(`write: ${host.dtype} data into ${t}`);
    if (host.data.length !== t.numel) throw new RangeError(`write: ${host.data.length} elements into ${t} (${t.numel})`);
    this.native.write(t, host.data);
  }

  async read<D extends DType>(t: Tensor<D>): Promise<HostArrayOf<D>> {
    return this.readSync(t);
  }

  /** CPU-only synchronous read (for code that knows it runs on the CPU, e.g. tests of kernels). */
  readSync<D extends DType>(t: Tensor<D>): HostArrayOf<D> {
    expectTensor(this, t, 'tensor');
    const out = allocHost(t.dtype, t.numel);
    this.native.read(t, out);
    return out;
  }

  free(t: Tensor): void {
    expectTensor(this, t, 'tensor');
    if (t.base) throw new Error(`${t} is a view: free the tensor it views instead`);
    this.native.free(t.handle);
  }

  fill(t: Tensor, value: number): void {
    expectTensor(this, t, 'tensor');
    const host: HostData = { dtype: t.dtype, data: allocHost(t.dtype, 1) };
    host.data[0] = value;
    if (t.dtype === 'bf16') {
      const tmp = this.upload({ dtype: 'f32', data: new Float32Array([value]) }, [1]);
      const b = this.cast(tmp, 'bf16');
      host.data[0] = this.readSync(b)[0];
      tmp.free();
      b.free();
    }
    const bits = t.dtype === 'bf16' ? host.data[0] : new Uint32Array(host.data.buffer)[0];
    this.fillBits(t, bits);
  }

  fillBits(t: Tensor, bits: number): void {
    expectTensor(this, t, 'tensor');
    this.native.fill(t, t.numel, dtypeSize(t.dtype) as 2 | 4, bits >>> 0);
  }

  cast<D extends DType>(t: Tensor, dtype: D): Tensor<D> {
    expectTensor(this, t, 'tensor');
    const out = this.empty(dtype, t.shape);
    this.native.cast(t, t.dtype, out, dtype, t.numel);
    return out;
  }

  logprobGather(logits: Tensor, targets: Tensor<'i32'>): { logp: Tensor<'f32'>; lse: Tensor<'f32'> } {
    const { n, v } = checkLogprobArgs(this, logits, targets);
    const logp = this.empty('f32', [n]);
    const lse = this.empty('f32', [n]);
    this.native.logprobGather(logits, logits.dtype, n, v, targets, logp, lse);
    return { logp, lse };
  }

  logprobGatherBackward(
    logits: Tensor,
    targets: Tensor<'i32'>,
    lse: Tensor<'f32'>,
    dlogp: Tensor<'f32'>,
    opts: { out?: Tensor; dtype?: 'f32' | 'bf16' } = {},
  ): Tensor {
    const { n, v } = checkLogprobArgs(this, logits, targets);
    for (const [t, what] of [[lse, 'lse'], [dlogp, 'dlogp']] as const) {
      expectTensor(this, t, what);
      expectDType(t, ['f32'], what);
      expectShape(t, [n], what);
    }
    let out = opts.out;
    if (out) {
      expectTensor(this, out, 'out');
      expectDType(out, ['f32', 'bf16'], 'out');
      expectShape(out, [n, v], 'out');
    } else {
      out = this.empty(opts.dtype ?? logits.dtype, [n, v]);
    }
    this.native.logprobGatherBackward(logits, logits.dtype, n, v, targets, lse, dlogp, out, out.dtype);
    return out;
  }

  sequenceLogprob(logp: Tensor<'f32'>, segments: Tensor<'i32'>, numSeqs: number): Tensor<'f32'> {
    this.checkSegmentArgs(logp, segments, 'logp');
    if (!Number.isSafeInteger(numSeqs) || numSeqs < 0) throw new RangeError(`numSeqs must be a non-negative integer, got ${numSeqs}`);
    const out = this.empty('f32', [numSeqs]);
    this.native.sequenceLogprob(logp, segments, logp.numel, numSeqs, out);
    return out;
  }

  sequenceLogprobBackward(dseq: Tensor<'f32'>, segments: Tensor<'i32'>): Tensor<'f32'> {
    expectTensor(this, dseq, 'dseq');
    expectDType(dseq, ['f32'], 'dseq');
    expectRank(dseq, 1, 'dseq');
    expectTensor(this, segments, 'segments');
    expectDType(segments, ['i32'], 'segments');
    expectRank(segments, 1, 'segments');
    const out = this.empty('f32', [segments.numel]);
    this.native.sequenceLogprobBackward(dseq, segments, segments.numel, dseq.numel, out);
    return out;
  }

  spinLoss(
    policyReal: Tensor<'f32'>,
    policyGenerated: Tensor<'f32'>,
    refReal: Tensor<'f32'>,
    refGenerated: Tensor<'f32'>,
    opts: SpinLossOpts,
  ): Tensor<'f32'> {
    expectTensor(this, policyReal, 'policyReal');
    expectRank(policyReal, 1, 'policyReal');
    const b = policyReal.shape[0];
    const args: Record<string, Tensor> = { policyReal, policyGenerated, refReal, refGenerated };
    if (opts.pairMask) args.pairMask = opts.pairMask;
    if (opts.realTokens) args.realTokens = opts.realTokens;
    const nllAlpha = opts.nllAlpha ?? 0;
    if (!(nllAlpha >= 0) || !Number.isFinite(nllAlpha)) throw new RangeError(`nllAlpha must be a finite number >= 0, got ${nllAlpha}`);
    if (nllAlpha > 0 && !opts.realTokens) throw new TypeError('nllAlpha > 0 needs realTokens (the real answers\' token counts)');
    for (const [what, t] of Object.entries(args)) {
      expectTensor(this, t, what);
      expectDType(t, ['f32'], what);
      expectShape(t, [b], what);
    }
    checkFinite(opts.beta, 'beta');
    if (opts.lossType !== 'sigmoid' && opts.lossType !== 'hinge') {
      throw new RangeError(`lossType must be 'sigmoid' or 'hinge', got '${String(opts.lossType)}'`);
    }
    const out = this.empty('f32', [7, b]);
    this.native.spinLoss(policyReal, policyGenerated, refReal, refGenerated, opts.pairMask ?? null, b, opts.beta, opts.lossType, out, nllAlpha, opts.realTokens ?? null);
    return out;
  }

  // ---- optimizer ops -------------------------------------------------------------------------
  rmspropStep(p: OptimTensors & { squareAvg: Tensor<'f32'> }, h: RmspropHyper, gradScale?: Tensor<'f32'>): void {
    this.checkOptim(p, { squareAvg: p.squareAvg }, gradScale);
    this.native.rmspropStep(p.param, p.param.dtype, p.master ?? null, p.grad, p.param.numel, p.squareAvg, h, gradScale ?? null);
  }

  adamwStep(p: OptimTensors & { expAvg: Tensor<'f32'>; expAvgSq: Tensor<'f32'> }, h: AdamwHyper, gradScale?: Tensor<'f32'>): void {
    this.checkOptim(p, { expAvg: p.expAvg, expAvgSq: p.expAvgSq }, gradScale);
    this.native.adamwStep(p.param, p.param.dtype, p.master ?? null, p.grad, p.param.numel, p.expAvg, p.expAvgSq, h, gradScale ?? null);
  }

  sumSquares(x: Tensor<'f32'>, out: Tensor<'f32'>, index: number): void {
    expectTensor(this, x, 'x');
    expectDType(x, ['f32'], 'x');
    expectTensor(this, out, 'out');
    expectDType(out, ['f32'], 'out');
    if (!Number.isSafeInteger(index) || index < 0 || index >= out.numel) throw new RangeError(`index ${index} is outside out [${out.numel}]`);
    this.native.sumSquares(x, x.numel, out, index);
  }

  clipCoefficient(sumsq: Tensor<'f32'>, maxNorm: number): Tensor<'f32'> {
    expectTensor(this, sumsq, 'sumsq');
    expectDType(sumsq, ['f32'], 'sumsq');
    if (!(maxNorm > 0)) throw new RangeError(`maxNorm must be a positive number (Infinity: no clipping), got ${maxNorm}`);
    const out = this.empty('f32', [2]);
    this.native.clipCoefficient(sumsq, sumsq.numel, maxNorm, out);
    return out;
  }

  scaleInPlace(x: Tensor<'f32'>, a: number): void {
    expectTensor(this, x, 'x');
    expectDType(x, ['f32'], 'x');
    checkFinite(a, 'scale');
    this.native.scaleInPlace(x, x.numel, a);
  }

  private checkOptim(p: OptimTensors, states: Record<string, Tensor>, gradScale?: Tensor): void {
    expectTensor(this, p.param, 'param');
    expectDType(p.param, ['f32', 'bf16'], 'param');
    const f32: Record<string, Tensor> = { grad: p.grad, ...states };
    if (p.master) f32.master = p.master;
    else if (p.param.dtype === 'bf16') throw new TypeError(`a bf16 parameter ${p.param} needs an f32 master copy`);
    for (const [what, t] of Object.entries(f32)) {
      expectTensor(this, t, what);
      expectDType(t, ['f32'], what);
      expectShape(t, p.param.shape, what);
    }
    if (gradScale) {
      expectTensor(this, gradScale, 'gradScale');
      expectDType(gradScale, ['f32'], 'gradScale');
    }
  }

  private checkSegmentArgs(x: Tensor, segments: Tensor, what: string): void {
    expectTensor(this, x, what);
    expectDType(x, ['f32'], what);
    expectRank(x, 1, what);
    expectTensor(this, segments, 'segments');
    expectDType(segments, ['i32'], 'segments');
    expectShape(segments, [x.numel], 'segments');
  }
}

let defaultCpu: CpuBackend | undefined;
/** The process-wide CPU backend. */
export function cpuBackend(): CpuBackend {
  defaultCpu ??= new CpuBackend();
  return defaultCpu;
}
