// The WebGPU backend: tensors are GPUBuffers (storage | copy_src | copy_dst), bf16 stored two per u32
// with f32 math, i32 as i32. Only math: arguments arrive checked by the op layer (src/ops), so the
// preconditions of backend.ts hold here. This class is the Backend; the work is elsewhere:
// runtime.ts (device, buffer pool, parameter arena, dispatch, pipeline cache, reads, error word) and
// one module per op family beside its WGSL file (memory, loss, optim, elementwise, layers, gemm,
// attention, sample), each method below a call into its family.
/// <reference types="@webgpu/types" />
import type { DType, HostArrayOf, HostData } from '../../tensor/dtype.js';
import type { Tensor } from '../../tensor/tensor.js';
import type {
  AdamwHyper,
  Backend,
  BackendInfo,
  HeadOpts,
  LinearsOpts,
  MatmulOpts,
  OptimTensors,
  RmspropHyper,
  RopeOpts,
  SampleOpts,
  SpinLossOpts,
  SpinLossOutputs,
} from '../backend.js';
import { attentionBackwardOnRounded, attentionOnRounded } from '../bf16_compute.js';
import * as attn from './attention.js';
import { describeDevice, openDevice } from './device.js';
import * as ew from './elementwise.js';
import * as gemm from './gemm.js';
import * as head from './head.js';
import * as layers from './layers.js';
import * as loss from './loss.js';
import * as mem from './memory.js';
import * as optim from './optim.js';
import { type WebGpuOptions, WebGpuRuntime } from './runtime.js';
import * as sample from './sample.js';

export type { WebGpuOptions } from './runtime.js';

export class WebGpuBackend implements Backend {
  readonly name = 'webgpu';
  readonly features: readonly string[];
  private readonly rt: WebGpuRuntime;

  private constructor(
    readonly device: GPUDevice,
    readonly adapterInfo: GPUAdapterInfo,
    readonly limits: GPUSupportedLimits,
    features: string[],
    opts: WebGpuOptions,
  ) {
    this.features = features;
    this.rt = new WebGpuRuntime(this, device, limits, features, opts);
  }

  /** A backend on a fresh adapter and device (throws a one-line Error when WebGPU cannot run here). */
  static async create(opts: WebGpuOptions = {}): Promise<WebGpuBackend> {
    const { device, adapterInfo, features } = await openDevice(!!opts.noOptionalFeatures);
    return new WebGpuBackend(device, adapterInfo, device.limits, features, opts);
  }

  /** Subgroup operations are used (the adapter offers them and the options allow them). */
  get subgroups(): boolean {
    return this.rt.subgroups;
  }
  /** Largest binding used (bytes): the device limit, or less when a test asks. */
  get maxBinding(): number {
    return this.rt.maxBinding;
  }
  get poison(): boolean {
    return this.rt.poison;
  }
  /** Live buffers this backend made and has not released (the leak test watches it). */
  get liveBuffers(): number {
    return this.rt.liveBuffers;
  }

  info(): BackendInfo {
    return { name: this.name, ...describeDevice(this.adapterInfo, this.limits, this.features) };
  }

  /** Releases the device and every cached object; the backend cannot be used afterwards. */
  destroy(): void {
    this.rt.destroy();
  }

  /** Submits the recorded work. */
  flush(): void {
    this.rt.flush();
  }

  // ---- memory (runtime.ts, memory.ts) ---------------------------------------------------------
  releaseCached(): void {
    this.rt.releaseCached();
  }
  empty<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
    return mem.empty(this.rt, dtype, shape);
  }
  write<D extends DType>(t: Tensor<D>, host: HostData<D>): void {
    mem.write(this.rt, t, host);
  }
  read<D extends DType>(t: Tensor<D>): Promise<HostArrayOf<D>> {
    return this.rt.read(t);
  }
  takeErrors(): Promise<number> {
    return this.rt.takeErrors();
  }
  free(t: Tensor): void {
    this.rt.releaseBuffer(t.handle as GPUBuffer);
  }
  fillBits(t: Tensor, bits: number): void {
    mem.fillBits(this.rt, t, bits);
  }
  cast(t: Tensor, out: Tensor): void {
    mem.cast(this.rt, t, out);
  }

  // ---- the loss family (loss.ts) ---------------------------------------------------------------
  logprobGather(logits: Tensor, targets: Tensor<'i32'>): { logp: Tensor<'f32'>; lse: Tensor<'f32'> } {
    return loss.logprobGather(this.rt, logits, targets);
  }
  logprobGatherBackward(logits: Tensor, targets: Tensor<'i32'>, lse: Tensor<'f32'>, dlogp: Tensor<'f32'>, out: Tensor): void {
    loss.logprobGatherBackward(this.rt, logits, targets, lse, dlogp, out);
  }
  sequenceLogprob(logp: Tensor<'f32'>, segments: Tensor<'i32'>, numSeqs: number): Tensor<'f32'> {
    return loss.sequenceLogprob(this.rt, logp, segments, numSeqs);
  }
  sequenceLogprobBackward(dseq: Tensor<'f32'>, segments: Tensor<'i32'>): Tensor<'f32'> {
    return loss.sequenceLogprobBackward(this.rt, dseq, segments);
  }
  spinLoss(policy: Tensor<'f32'>, ref: Tensor<'f32'>, opts: SpinLossOpts): SpinLossOutputs {
    return loss.spinLoss(this.rt, policy, ref, opts);
  }
  headLogprob(h: Tensor<'f32'>, w: Tensor, targets: Tensor<'i32'>, opts: HeadOpts): { logp: Tensor<'f32'>; lse: Tensor<'f32'> } {
    return head.headLogprob(this.rt, h, w, targets, opts);
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
    head.headLogprobBackward(this.rt, h, w, targets, lse, dlogp, dh, dw, opts);
  }

  // ---- optimizer ops (optim.ts; scale and accumulate: elementwise.ts) ----------------------------
  rmspropStep(p: OptimTensors & { squareAvg: Tensor<'f32'> }, h: RmspropHyper, clip?: Tensor<'f32'>): void {
    optim.rmspropStep(this.rt, p, h, clip);
  }
  adamwStep(p: OptimTensors & { expAvg: Tensor<'f32'>; expAvgSq: Tensor<'f32'> }, h: AdamwHyper, clip?: Tensor<'f32'>): void {
    optim.adamwStep(this.rt, p, h, clip);
  }
  sumSquares(x: Tensor<'f32'>, out: Tensor<'f32'>, index: number): void {
    optim.sumSquares(this.rt, x, out, index);
  }
  clipCoefficient(sumsq: Tensor<'f32'>, maxNorm: number): Tensor<'f32'> {
    return optim.clipCoefficient(this.rt, sumsq, maxNorm);
  }
  scaleInPlace(x: Tensor<'f32'>, a: number): void {
    ew.scaleInPlace(this.rt, x, a);
  }
  softcapInPlace(x: Tensor<'f32'>, c: number): void {
    ew.softcapInPlace(this.rt, x, c);
  }
  accumulate(acc: Tensor<'f32'>, x: Tensor<'f32'>, alpha: number): void {
    ew.accumulate(this.rt, acc, x, alpha);
  }

  // ---- sampling (sample.ts) --------------------------------------------------------------------
  sampleTokens(logits: Tensor<'f32'>, rng: Tensor<'i32'>, active: Tensor<'i32'>, o: SampleOpts, limit: number): Tensor<'i32'> {
    return sample.sampleTokens(this.rt, logits, rng, active, o, limit);
  }

  // ---- matrix products (gemm.ts) -----------------------------------------------------------------
  linears(x: Tensor, weights: readonly Tensor[], opts: LinearsOpts): Tensor<'f32'>[] {
    return gemm.linears(this.rt, x, weights, opts);
  }
  matmul(a: Tensor, b: Tensor, opts: MatmulOpts = {}): Tensor<'f32'> {
    return gemm.matmul(this.rt, a, b, opts);
  }

  // ---- layers (layers.ts) ------------------------------------------------------------------------
  embedding(ids: Tensor<'i32'>, table: Tensor): Tensor<'f32'> {
    return layers.embedding(this.rt, ids, table);
  }
  embeddingBackward(ids: Tensor<'i32'>, dout: Tensor<'f32'>, dtable: Tensor<'f32'>): void {
    layers.embeddingBackward(this.rt, ids, dout, dtable);
  }
  rmsnorm(...a: Parameters<Backend['rmsnorm']>): ReturnType<Backend['rmsnorm']> {
    return layers.rmsnorm(this.rt, ...a);
  }
  rmsnormBackward(...a: Parameters<Backend['rmsnormBackward']>): Tensor<'f32'> {
    return layers.rmsnormBackward(this.rt, ...a);
  }
  rope(x: Tensor<'f32'>, positions: Tensor<'i32'>, opts: RopeOpts): void {
    layers.rope(this.rt, x, positions, opts);
  }
  scatterRows(src: Tensor<'f32'>, index: Tensor<'i32'>, dst: Tensor): void {
    layers.scatterRows(this.rt, src, index, dst);
  }

  // ---- attention (attention.ts) ------------------------------------------------------------------
  attention(...a: Parameters<Backend['attention']>): ReturnType<Backend['attention']> {
    if (a[4]?.computeDtype === 'bf16') return attentionOnRounded(this, ...a);
    return attn.attention(this.rt, ...a);
  }
  attentionBackward(...a: Parameters<Backend['attentionBackward']>): ReturnType<Backend['attentionBackward']> {
    if (a[7]?.computeDtype === 'bf16') return attentionBackwardOnRounded(this, ...a);
    return attn.attentionBackward(this.rt, ...a);
  }
  attentionDecode(...a: Parameters<Backend['attentionDecode']>): Tensor<'f32'> {
    return attn.attentionDecode(this.rt, ...a);
  }

  // ---- elementwise (elementwise.ts) --------------------------------------------------------------
  swiglu(...a: Parameters<Backend['swiglu']>): Tensor<'f32'> {
    return ew.swiglu(this.rt, ...a);
  }
  swigluBackward(...a: Parameters<Backend['swigluBackward']>): ReturnType<Backend['swigluBackward']> {
    return ew.swigluBackward(this.rt, ...a);
  }
  add(a: Tensor<'f32'>, b: Tensor<'f32'>, out?: Tensor<'f32'>): Tensor<'f32'> {
    return ew.add(this.rt, a, b, out);
  }
  addBias(x: Tensor<'f32'>, bias: Tensor): void {
    ew.addBias(this.rt, x, bias);
  }
  biasBackward(dy: Tensor<'f32'>, dbias: Tensor<'f32'>): void {
    ew.biasBackward(this.rt, dy, dbias);
  }
}
