// The CPU backend: tensors in native 64-byte-aligned memory, kernels in native/cpu (C++, both cores).
import { allocHost, checkHostArray, type DType, dtypeSize, type HostArrayOf, type HostData } from '../../tensor/dtype.js';
import { Tensor } from '../../tensor/tensor.js';
import type { AdamwHyper, Backend, MatmulOpts, OptimTensors, RmspropHyper, RopeOpts, SpinLossOpts } from '../backend.js';
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

  // ---- model ops -----------------------------------------------------------------------------
  matmul(a: Tensor<'f32'>, b: Tensor, opts: MatmulOpts = {}): Tensor<'f32'> {
    expectTensor(this, a, 'a');
    expectTensor(this, b, 'b');
    expectDType(a, ['f32'], 'a');
    expectDType(b, ['f32', 'bf16'], 'b');
    expectRank(a, 2, 'a');
    expectRank(b, 2, 'b');
    const [ar, ac] = a.shape;
    const [br, bc] = b.shape;
    const [m, ka] = opts.transA ? [ac, ar] : [ar, ac];
    const [kb, n] = opts.transB ? [bc, br] : [br, bc];
    if (ka !== kb) throw new RangeError(`matmul: inner dimensions differ: op(a) is [${m}, ${ka}], op(b) is [${kb}, ${n}]`);
    let out = opts.out;
    if (out) {
      expectTensor(this, out, 'out');
      expectDType(out, ['f32'], 'out');
      expectShape(out, [m, n], 'out');
    } else {
      if (opts.accumulate) throw new TypeError('matmul: accumulate needs an out tensor');
      out = this.empty('f32', [m, n]);
    }
    const alpha = opts.alpha ?? 1;
    checkFinite(alpha, 'alpha');
    this.native.matmul(!!opts.transA, !!opts.transB, m, n, ka, alpha, a, ac, b, b.dtype, bc, opts.accumulate ? 1 : 0, out, n);
    return out;
  }

  embedding(ids: Tensor<'i32'>, table: Tensor): Tensor<'f32'> {
    this.checkIds(ids);
    expectTensor(this, table, 'table');
    expectDType(table, ['f32', 'bf16'], 'table');
    expectRank(table, 2, 'table');
    const [v, h] = table.shape;
    const out = this.empty('f32', [ids.numel, h]);
    this.native.embedding(ids, ids.numel, table, table.dtype, v, h, out);
    return out;
  }

  embeddingBackward(ids: Tensor<'i32'>, dout: Tensor<'f32'>, dtable: Tensor<'f32'>): void {
    this.checkIds(ids);
    expectTensor(this, dtable, 'dtable');
    expectDType(dtable, ['f32'], 'dtable');
    expectRank(dtable, 2, 'dtable');
    const [v, h] = dtable.shape;
    this.expectF32(dout, 'dout', [ids.numel, h]);
    this.native.embeddingBackward(ids, ids.numel, dout, v, h, dtable);
  }

  rmsnorm(x: Tensor<'f32'>, w: Tensor, eps: number): { y: Tensor<'f32'>; rstd: Tensor<'f32'> } {
    const [t, h] = this.rows(x, 'x');
    this.expectWeight(w, [h], 'weight');
    checkFinite(eps, 'eps');
    const y = this.empty('f32', x.shape);
    const rstd = this.empty('f32', [t]);
    this.native.rmsnorm(x, w, w.dtype, t, h, eps, y, rstd);
    return { y, rstd };
  }

  rmsnormBackward(x: Tensor<'f32'>, w: Tensor, rstd: Tensor<'f32'>, dy: Tensor<'f32'>, dw?: Tensor<'f32'>): Tensor<'f32'> {
    const [t, h] = this.rows(x, 'x');
    this.expectWeight(w, [h], 'weight');
    this.expectF32(rstd, 'rstd', [t]);
    this.expectF32(dy, 'dy', x.shape);
    if (dw) this.expectF32(dw, 'dw', [h]);
    const dx = this.empty('f32', x.shape);
    this.native.rmsnormBackward(x, w, w.dtype, rstd, dy, t, h, dx, dw ?? null);
    return dx;
  }

  rope(x: Tensor<'f32'>, positions: Tensor<'i32'>, opts: RopeOpts): void {
    expectTensor(this, x, 'x');
    expectDType(x, ['f32'], 'x');
    expectRank(x, 3, 'x');
    const [t, heads, hd] = x.shape;
    this.checkIds(positions, 'positions');
    expectShape(positions, [t], 'positions');
    this.native.rope(x, positions, t, heads, hd, opts.theta, opts.scale ?? 1, !!opts.inverse);
  }

  attention(q: Tensor<'f32'>, k: Tensor<'f32'>, v: Tensor<'f32'>, keyMask: Tensor<'i32'>, opts: { scale?: number } = {}) {
    const d = this.attnDims(q, k, v, keyMask);
    const out = this.empty('f32', q.shape);
    const lse = this.empty('f32', [d.b, d.nh, d.l]);
    this.native.attention(q, k, v, keyMask, d.b, d.l, d.nh, d.nkv, d.hd, opts.scale ?? 1 / Math.sqrt(d.hd), out, lse);
    return { out, lse };
  }

  attentionBackward(
    q: Tensor<'f32'>, k: Tensor<'f32'>, v: Tensor<'f32'>, keyMask: Tensor<'i32'>, out: Tensor<'f32'>, lse: Tensor<'f32'>, dout: Tensor<'f32'>,
    opts: { scale?: number } = {},
  ) {
    const d = this.attnDims(q, k, v, keyMask);
    this.expectF32(out, 'out', q.shape);
    this.expectF32(dout, 'dout', q.shape);
    this.expectF32(lse, 'lse', [d.b, d.nh, d.l]);
    const dq = this.empty('f32', q.shape);
    const dk = this.empty('f32', k.shape);
    const dv = this.empty('f32', v.shape);
    this.native.attentionBackward(q, k, v, keyMask, out, lse, dout, d.b, d.l, d.nh, d.nkv, d.hd, opts.scale ?? 1 / Math.sqrt(d.hd), dq, dk, dv);
    return { dq, dk, dv };
  }

  attentionDecode(
    q: Tensor<'f32'>, kCache: Tensor<'f32'>, vCache: Tensor<'f32'>, lengths: Tensor<'i32'>, keyMask?: Tensor<'i32'>,
    opts: { scale?: number } = {},
  ): Tensor<'f32'> {
    expectTensor(this, q, 'q');
    expectDType(q, ['f32'], 'q');
    expectRank(q, 3, 'q');
    const [b, nh, hd] = q.shape;
    expectTensor(this, kCache, 'kCache');
    expectRank(kCache, 4, 'kCache');
    const [cb, nkv, lmax, chd] = kCache.shape;
    if (cb !== b || chd !== hd) throw new RangeError(`kCache ${kCache} does not match q ${q}`);
    this.expectF32(kCache, 'kCache', kCache.shape);
    this.expectF32(vCache, 'vCache', kCache.shape);
    this.checkIds(lengths, 'lengths');
    expectShape(lengths, [b], 'lengths');
    if (keyMask) {
      this.checkIds(keyMask, 'keyMask');
      expectShape(keyMask, [b, lmax], 'keyMask');
    }
    const out = this.empty('f32', q.shape);
    this.native.attentionDecode(q, kCache, vCache, lengths, keyMask ?? null, b, lmax, nh, nkv, hd, opts.scale ?? 1 / Math.sqrt(hd), out);
    return out;
  }

  scatterRows(src: Tensor<'f32'>, index: Tensor<'i32'>, dst: Tensor<'f32'>): void {
    const [rows, cols] = this.rows(src, 'src');
    const [dstRows, dstCols] = this.rows(dst, 'dst');
    if (dstCols !== cols) throw new RangeError(`scatterRows: src rows have ${cols} values, dst rows ${dstCols}`);
    this.checkIds(index, 'index');
    expectShape(index, [rows], 'index');
    this.native.scatterRows(src, index, rows, cols, dst, dstRows);
  }

  swiglu(gate: Tensor<'f32'>, up: Tensor<'f32'>): Tensor<'f32'> {
    this.expectF32(gate, 'gate', gate.shape);
    this.expectF32(up, 'up', gate.shape);
    const out = this.empty('f32', gate.shape);
    this.native.swiglu(gate, up, gate.numel, out);
    return out;
  }

  swigluBackward(gate: Tensor<'f32'>, up: Tensor<'f32'>, dout: Tensor<'f32'>): { dgate: Tensor<'f32'>; dup: Tensor<'f32'> } {
    this.expectF32(gate, 'gate', gate.shape);
    this.expectF32(up, 'up', gate.shape);
    this.expectF32(dout, 'dout', gate.shape);
    const dgate = this.empty('f32', gate.shape);
    const dup = this.empty('f32', gate.shape);
    this.native.swigluBackward(gate, up, dout, gate.numel, dgate, dup);
    return { dgate, dup };
  }

  add(a: Tensor<'f32'>, b: Tensor<'f32'>, out?: Tensor<'f32'>): Tensor<'f32'> {
    this.expectF32(a, 'a', a.shape);
    this.expectF32(b, 'b', a.shape);
    if (out) this.expectF32(out, 'out', a.shape);
    const y = out ?? this.empty('f32', a.shape);
    this.native.add(a, b, a.numel, y);
    return y;
  }

  addBias(x: Tensor<'f32'>, bias: Tensor): void {
    const [t, n] = this.rows(x, 'x');
    this.expectWeight(bias, [n], 'bias');
    this.native.addBias(x, bias, bias.dtype, t, n);
  }

  biasBackward(dy: Tensor<'f32'>, dbias: Tensor<'f32'>): void {
    const [t, n] = this.rows(dy, 'dy');
    this.expectF32(dbias, 'dbias', [n]);
    this.native.biasBackward(dy, t, n, dbias);
  }

  private checkIds(ids: Tensor, what = 'ids'): void {
    expectTensor(this, ids, what);
    expectDType(ids, ['i32'], what);
  }

  private expectF32(t: Tensor, what: string, shape: readonly number[]): void {
    expectTensor(this, t, what);
    expectDType(t, ['f32'], what);
    expectShape(t, shape, what);
  }

  private expectWeight(t: Tensor, shape: readonly number[], what: string): void {
    expectTensor(this, t, what);
    expectDType(t, ['f32', 'bf16'], what);
    expectShape(t, shape, what);
  }

  /** [rows, cols] of a 2-D f32 tensor. */
  private rows(t: Tensor, what: string): [number, number] {
    expectTensor(this, t, what);
    expectDType(t, ['f32'], what);
    expectRank(t, 2, what);
    return [t.shape[0], t.shape[1]];
  }

  private attnDims(q: Tensor, k: Tensor, v: Tensor, keyMask: Tensor) {
    for (const [t, what] of [[q, 'q'], [k, 'k'], [v, 'v']] as const) {
      expectTensor(this, t, what);
      expectDType(t, ['f32'], what);
      expectRank(t, 4, what);
    }
    const [b, l, nh, hd] = q.shape;
    const nkv = k.shape[2];
    expectShape(k, [b, l, nkv, hd], 'k');
    expectShape(v, [b, l, nkv, hd], 'v');
    if (nkv < 1 || nh % nkv !== 0) throw new RangeError(`attention: ${nh} query heads are not a multiple of ${nkv} key-value heads`);
    this.checkIds(keyMask, 'keyMask');
    expectShape(keyMask, [b, l], 'keyMask');
    return { b, l, nh, nkv, hd };
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
