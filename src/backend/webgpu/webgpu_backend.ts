// The WebGPU backend: tensors are GPUBuffers (storage | copy_src | copy_dst), bf16 stored two per u32
// with f32 math, i32 as i32. Ops record compute passes into one command encoder and submit in batches
// (at a read, a write, or when the per-batch parameter arena is full); pipelines are created once per
// (kernel, variant) and cached. Kernels are WGSL files beside this one (kernels.ts). Only math:
// arguments arrive checked by the op layer (src/ops), so the preconditions of backend.ts hold here.
/// <reference types="@webgpu/types" />
import { allocHost, type DType, dtypeSize, type HostArrayOf, type HostData } from '../../tensor/dtype.js';
import { Tensor } from '../../tensor/tensor.js';
import type {
  AdamwHyper,
  Backend,
  BackendInfo,
  LinearsOpts,
  MatmulOpts,
  OptimTensors,
  RmspropHyper,
  RopeOpts,
  SampleOpts,
  SpinLossOpts,
  SpinLossOutputs,
} from '../backend.js';
import { SPIN_LOSS_TYPES } from '../backend.js';
import { roundedToBf16 } from '../bf16_compute.js';
import { requestAdapter } from './device.js';
import { type Defines, FAMILY_DEFAULTS, type KernelFamily, moduleSource } from './kernels.js';

// GPUBufferUsage / GPUMapMode bits (constants of the WebGPU spec).
const STORAGE = 0x80;
const COPY_SRC = 0x04;
const COPY_DST = 0x08;
const MAP_READ = 0x01;
const UNIFORM = 0x40;
const MAP_MODE_READ = 0x1;

/** Bytes of one dispatch's parameter slot (minUniformBufferOffsetAlignment is at most 256). */
const SLOT = 256;
const ARENA_SLOTS = 1024;
/** Recycled buffers kept at most (bytes). */
const POOL_CAP = 256 * 2 ** 20;

/** NaN bit patterns written into fresh buffers by a poisoning backend (as the CPU backend's). */
const POISON_BITS = { f32: 0x7fc00000, bf16: 0x7fc0, i32: 0x7fc00000 } as const;

export interface WebGpuOptions {
  /** Fill every new buffer with NaN (tests: a kernel that skips an element is caught). */
  poison?: boolean;
  /**
   * Bind at most this many bytes of a tensor at once (default and maximum: the device's
   * maxStorageBufferBindingSize). Tests set it small to exercise the chunked paths cheaply.
   */
  maxBindingBytes?: number;
  /** Use no optional features (subgroups, shader-f16) even where the adapter offers them. */
  noOptionalFeatures?: boolean;
}

/** Parameters of one dispatch: [value, 'u' | 'i' | 'f'] in struct order. */
type Param = number | [number, 'u' | 'i' | 'f'];

interface Binding {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}
type Bindable = Tensor | Binding;
/** A binding slot the kernel does not use (its entry point never names it). */
type Slot = Bindable | null;

const round4 = (n: number): number => Math.ceil(n / 4) * 4;
const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

export class WebGpuBackend implements Backend {
  readonly name = 'webgpu';
  readonly features: readonly string[];
  /** Subgroup operations are used (the adapter offers them and the options allow them). */
  readonly subgroups: boolean;
  /** Largest binding used (bytes): the device limit, or less when a test asks. */
  readonly maxBinding: number;
  readonly poison: boolean;
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly modules = new Map<string, GPUShaderModule>();
  private readonly pool = new Map<number, GPUBuffer[]>();
  private pooledBytes = 0;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private readonly arena: GPUBuffer;
  private readonly arenaHost = new ArrayBuffer(SLOT * ARENA_SLOTS);
  private arenaUsed = 0;
  private readonly errorWord: GPUBuffer;
  private readonly dummy: GPUBuffer;
  private readonly dummyRw: GPUBuffer;
  private readonly deviceErrors: string[] = [];
  private destroyed = false;
  /** Live buffers this backend made and has not released (the leak test watches it). */
  liveBuffers = 0;

  private constructor(
    readonly device: GPUDevice,
    readonly adapterInfo: GPUAdapterInfo,
    readonly limits: GPUSupportedLimits,
    features: string[],
    opts: WebGpuOptions,
  ) {
    this.features = features;
    this.subgroups = features.includes('subgroups');
    this.poison = opts.poison ?? false;
    const lim = limits.maxStorageBufferBindingSize;
    if (opts.maxBindingBytes !== undefined && (!(opts.maxBindingBytes >= 2 ** 21) || opts.maxBindingBytes > lim)) {
      throw new RangeError(
        `maxBindingBytes must be in [2 MiB, ${lim}] (the device's maxStorageBufferBindingSize), got ${opts.maxBindingBytes}`,
      );
    }
    this.maxBinding = Math.floor((opts.maxBindingBytes ?? lim) / 256) * 256;
    this.arena = device.createBuffer({ size: SLOT * ARENA_SLOTS, usage: UNIFORM | COPY_DST });
    this.errorWord = device.createBuffer({ size: 16, usage: STORAGE | COPY_SRC | COPY_DST });
    this.dummy = device.createBuffer({ size: 256, usage: STORAGE | COPY_SRC | COPY_DST });
    this.dummyRw = device.createBuffer({ size: 256, usage: STORAGE | COPY_SRC | COPY_DST });
    device.onuncapturederror = (ev: GPUUncapturedErrorEvent) => {
      this.deviceErrors.push(ev.error.message);
    };
    void device.lost.then((info) => {
      if (!this.destroyed) this.deviceErrors.push(`device lost: ${info.message}`);
    });
  }

  /** A backend on a fresh adapter and device (throws a one-line Error when WebGPU cannot run here). */
  static async create(opts: WebGpuOptions = {}): Promise<WebGpuBackend> {
    const probe = await requestAdapter();
    if (!probe.ok) throw new Error(`webgpu is not available: ${probe.reason}`);
    const adapter = probe.adapter;
    const want = opts.noOptionalFeatures ? [] : (['subgroups', 'shader-f16'] as GPUFeatureName[]).filter((f) => adapter.features.has(f));
    const a = adapter.limits;
    // the limits spinlm needs raised above the WebGPU defaults: ask for what the adapter has
    const requiredLimits: Record<string, number> = {
      maxStorageBufferBindingSize: a.maxStorageBufferBindingSize,
      maxBufferSize: a.maxBufferSize,
      maxStorageBuffersPerShaderStage: Math.min(a.maxStorageBuffersPerShaderStage, 10),
      maxComputeWorkgroupStorageSize: a.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: Math.min(a.maxComputeInvocationsPerWorkgroup, 256),
      maxComputeWorkgroupSizeX: Math.min(a.maxComputeWorkgroupSizeX, 256),
    };
    if (a.maxStorageBuffersPerShaderStage < 10 || a.maxComputeInvocationsPerWorkgroup < 256 || a.maxComputeWorkgroupStorageSize < 16384) {
      throw new Error(
        `webgpu: the adapter's limits are below what spinlm's kernels need (10 storage buffers per stage, 256 invocations and 16 KiB of workgroup memory per workgroup; it has ${a.maxStorageBuffersPerShaderStage}, ${a.maxComputeInvocationsPerWorkgroup}, ${a.maxComputeWorkgroupStorageSize})`,
      );
    }
    const device = await adapter.requestDevice({ requiredFeatures: want, requiredLimits });
    return new WebGpuBackend(device, adapter.info, device.limits, want, opts);
  }

  info(): BackendInfo {
    const i = this.adapterInfo;
    const l = this.limits;
    const name = i.description || [i.vendor, i.architecture, i.device].filter((x) => x).join(' ') || 'unknown adapter';
    return {
      name: this.name,
      device: `${name}${i.isFallbackAdapter ? ' (fallback/CPU adapter)' : ''}`,
      details: [
        `vendor ${i.vendor || '?'}`,
        `fallback adapter: ${i.isFallbackAdapter ? 'yes' : 'no'}`,
        `max storage binding ${(l.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB`,
        `max buffer ${(l.maxBufferSize / 2 ** 20).toFixed(0)} MiB`,
        `workgroup memory ${l.maxComputeWorkgroupStorageSize / 1024} KiB`,
        `workgroups per dimension ${l.maxComputeWorkgroupsPerDimension}`,
        `features: ${this.features.length ? this.features.join(', ') : 'none used'}`,
      ],
    };
  }

  /** Releases the device and every cached object; the backend cannot be used afterwards. */
  destroy(): void {
    if (this.destroyed) return;
    this.flush();
    this.destroyed = true;
    for (const list of this.pool.values()) for (const b of list) b.destroy();
    this.pool.clear();
    this.pooledBytes = 0;
    this.pipelines.clear();
    this.modules.clear();
    this.device.destroy();
  }

  // ---- buffers -------------------------------------------------------------------------------
  private allocBuffer(bytes: number): GPUBuffer {
    if (this.destroyed) throw new Error('webgpu: the backend was destroyed');
    const size = Math.max(256, Math.ceil(bytes / 256) * 256);
    if (size > this.limits.maxBufferSize) {
      throw new RangeError(
        `webgpu: a tensor of ${bytes} bytes is larger than the device's maxBufferSize (${this.limits.maxBufferSize} bytes); use a smaller batch or --device cpu`,
      );
    }
    const list = this.pool.get(size);
    if (list && list.length > 0) {
      this.pooledBytes -= size;
      return list.pop()!;
    }
    this.liveBuffers++;
    return this.device.createBuffer({ size, usage: STORAGE | COPY_SRC | COPY_DST });
  }

  private releaseBuffer(b: GPUBuffer): void {
    if (this.destroyed) return;
    if (this.pooledBytes + b.size <= POOL_CAP) {
      let list = this.pool.get(b.size);
      if (!list) this.pool.set(b.size, (list = []));
      list.push(b);
      this.pooledBytes += b.size;
    } else {
      this.flush();
      b.destroy();
      this.liveBuffers--;
    }
  }

  /** Destroys the recycled buffers. */
  releaseCached(): void {
    this.flush();
    for (const list of this.pool.values())
      for (const b of list) {
        b.destroy();
        this.liveBuffers--;
      }
    this.pool.clear();
    this.pooledBytes = 0;
  }

  empty<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
    const bytes = new Tensor(this, dtype, shape, null).byteLength;
    const out = new Tensor(this, dtype, shape, this.allocBuffer(bytes));
    if (this.poison) this.fillBits(out, POISON_BITS[dtype]);
    return out;
  }

  private temp(bytes: number): Binding {
    const buffer = this.allocBuffer(bytes);
    return { buffer, offset: 0, size: Math.max(4, round4(bytes)) };
  }

  write<D extends DType>(t: Tensor<D>, host: HostData<D>): void {
    if (t.numel === 0) return;
    this.flush();
    const data = host.data;
    const buf = t.handle as GPUBuffer;
    if (t.dtype === 'bf16' && t.numel % 2 === 1) {
      // a 4-byte write would clobber the next element: stage it, then copy the halves exactly
      const padded = new Uint16Array(t.numel + 1);
      padded.set(data as Uint16Array);
      const tmp = new Tensor(this, 'bf16', [t.numel + 1], this.allocBuffer(padded.byteLength));
      this.device.queue.writeBuffer(tmp.handle as GPUBuffer, 0, padded.buffer, 0, padded.byteLength);
      this.memory('copy16', t.numel, [t, tmp], 0, true);
      this.releaseBuffer(tmp.handle as GPUBuffer);
      return;
    }
    this.device.queue.writeBuffer(buf, t.byteOffset, data.buffer, data.byteOffset, data.byteLength);
  }

  async read<D extends DType>(t: Tensor<D>): Promise<HostArrayOf<D>> {
    const out = allocHost(t.dtype, t.numel);
    if (t.numel === 0) {
      this.throwDeviceErrors();
      return out;
    }
    const bytes = round4(t.byteLength);
    const staging = this.device.createBuffer({ size: bytes, usage: MAP_READ | COPY_DST });
    this.endPass();
    this.enc().copyBufferToBuffer(t.handle as GPUBuffer, t.byteOffset, staging, 0, bytes);
    this.flush();
    await staging.mapAsync(MAP_MODE_READ);
    new Uint8Array(out.buffer, out.byteOffset, out.byteLength).set(new Uint8Array(staging.getMappedRange(), 0, out.byteLength));
    staging.unmap();
    staging.destroy();
    this.throwDeviceErrors();
    return out;
  }

  async takeErrors(): Promise<number> {
    const staging = this.device.createBuffer({ size: 16, usage: MAP_READ | COPY_DST });
    this.endPass();
    const enc = this.enc();
    enc.copyBufferToBuffer(this.errorWord, 0, staging, 0, 16);
    enc.clearBuffer(this.errorWord, 0, 16);
    this.flush();
    await staging.mapAsync(MAP_MODE_READ);
    const bits = new Uint32Array(staging.getMappedRange())[0];
    staging.unmap();
    staging.destroy();
    this.throwDeviceErrors();
    return bits;
  }

  private throwDeviceErrors(): void {
    if (this.deviceErrors.length) {
      const msg = this.deviceErrors.splice(0).join('; ');
      throw new Error(`webgpu: the device reported an error: ${msg}`);
    }
  }

  free(t: Tensor): void {
    this.releaseBuffer(t.handle as GPUBuffer);
  }

  fillBits(t: Tensor, bits: number): void {
    if (t.dtype === 'bf16') this.memory('fill16', t.numel, [t], bits & 0xffff, true);
    else this.memory('fill32', t.numel, [t], bits >>> 0, false);
  }

  cast(t: Tensor, out: Tensor): void {
    if (t.numel === 0) return;
    if (t.dtype === out.dtype) {
      if (t.dtype === 'bf16') {
        this.memory('copy16', t.numel, [out, t], 0, true);
      } else {
        this.endPass();
        this.enc().copyBufferToBuffer(t.handle as GPUBuffer, t.byteOffset, out.handle as GPUBuffer, out.byteOffset, t.byteLength);
        this.countDispatch();
      }
    } else if (t.dtype === 'f32') {
      this.memory('f32_to_bf16', t.numel, [out, t], 0, true);
    } else {
      this.memory('bf16_to_f32', t.numel, [out, t], 0, false);
    }
  }

  /**
   * A memory kernel over n elements of [dst, src?], chunked so that no binding passes maxBinding.
   * perWord: one invocation per 32-bit word of a bf16 destination.
   */
  private memory(entry: string, n: number, ts: Bindable[], bits: number, perWord: boolean): void {
    if (n === 0) return;
    // chunks of elements that start every binding at a 256-byte boundary (multiples of 128 elements)
    const chunk = Math.max(128, Math.floor(this.maxBinding / 4 / 128) * 128);
    for (let e0 = 0; e0 < n; e0 += chunk) {
      const cnt = Math.min(chunk, n - e0);
      const bs = ts.map((t) => this.sub(t, e0, cnt));
      const inv = perWord ? Math.ceil(cnt / 2) : cnt;
      this.dispatch('memory', {}, entry, [cnt, bits, 0, 0], bs, Math.ceil(inv / 256));
    }
  }

  /** Elements [e0, e0 + cnt) of a tensor (or raw binding of 4-byte elements) as a binding. */
  private sub(t: Bindable, e0: number, cnt: number): Binding {
    if (!(t instanceof Tensor))
      return { buffer: t.buffer, offset: t.offset + e0 * 4, size: Math.max(4, round4(Math.min(cnt * 4, t.size - e0 * 4))) };
    const es = dtypeSize(t.dtype);
    return { buffer: t.handle as GPUBuffer, offset: t.byteOffset + e0 * es, size: Math.max(4, round4(cnt * es)) };
  }

  // ---- dispatch machinery ----------------------------------------------------------------------
  private enc(): GPUCommandEncoder {
    this.encoder ??= this.device.createCommandEncoder();
    return this.encoder;
  }

  private endPass(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  private countDispatch(): void {
    if (this.arenaUsed >= this.arenaHost.byteLength) this.flush();
  }

  /** Submits the recorded work (and the parameter arena it reads). */
  flush(): void {
    if (this.destroyed) return;
    this.endPass();
    if (!this.encoder) return;
    if (this.arenaUsed > 0) this.device.queue.writeBuffer(this.arena, 0, this.arenaHost, 0, this.arenaUsed);
    this.device.queue.submit([this.encoder.finish()]);
    this.encoder = null;
    this.arenaUsed = 0;
  }

  private pipeline(family: KernelFamily, defines: Defines, entry: string): GPUComputePipeline {
    const all = { ...FAMILY_DEFAULTS[family], ...defines };
    const mkey = `${family}|${JSON.stringify(all)}`;
    const key = `${mkey}|${entry}`;
    let p = this.pipelines.get(key);
    if (!p) {
      let mod = this.modules.get(mkey);
      if (!mod) {
        mod = this.device.createShaderModule({ code: moduleSource(family, all), label: mkey });
        this.modules.set(mkey, mod);
      }
      p = this.device.createComputePipeline({ layout: 'auto', compute: { module: mod, entryPoint: entry }, label: key });
      this.pipelines.set(key, p);
    }
    return p;
  }

  private binding(t: Bindable): Binding {
    if (!(t instanceof Tensor)) return t;
    const size = Math.max(4, round4(t.byteLength));
    if (size > this.maxBinding) {
      throw new RangeError(
        `webgpu: ${t} is ${t.byteLength} bytes, more than one storage binding may hold on this device (${this.maxBinding}); this op does not split it: use smaller batches`,
      );
    }
    if (t.numel === 0) return { buffer: this.dummy, offset: 0, size: 4 };
    return { buffer: t.handle as GPUBuffer, offset: t.byteOffset, size };
  }

  /** The grid for `groups` workgroups: 1-D up to the per-dimension limit, else 2-D. */
  private grid(groups: number): [number, number] {
    const lim = this.limits.maxComputeWorkgroupsPerDimension;
    if (groups <= lim) return [groups, 1];
    const y = Math.ceil(groups / lim);
    if (y > lim) throw new RangeError(`webgpu: ${groups} workgroups do not fit a ${lim} x ${lim} grid`);
    return [Math.ceil(groups / y), y];
  }

  /**
   * Records one dispatch: params (binding 0, a uniform struct of 4-byte fields), then the bindings
   * 1, 2, ... in order; `groups` workgroups (or an explicit [x, y] grid).
   */
  private dispatch(
    family: KernelFamily,
    defines: Defines,
    entry: string,
    params: Param[],
    bindings: Slot[],
    groups: number | [number, number],
  ): void {
    if (this.destroyed) throw new Error('webgpu: the backend was destroyed');
    const [gx, gy] = typeof groups === 'number' ? this.grid(groups) : groups;
    if (gx === 0 || gy === 0) return;
    const pipe = this.pipeline(family, defines, entry);
    if (this.arenaUsed + SLOT > this.arenaHost.byteLength) this.flush();
    const off = this.arenaUsed;
    const view = new DataView(this.arenaHost, off, SLOT);
    params.forEach((p, i) => {
      const [v, ty] = typeof p === 'number' ? [p, 'u'] : p;
      if (ty === 'f') view.setFloat32(i * 4, v, true);
      else if (ty === 'i') view.setInt32(i * 4, v, true);
      else view.setUint32(i * 4, v >>> 0, true);
    });
    this.arenaUsed += SLOT;
    const entries: GPUBindGroupEntry[] = [
      { binding: 0, resource: { buffer: this.arena, offset: off, size: Math.max(16, Math.ceil((params.length * 4) / 16) * 16) } },
    ];
    bindings.forEach((b, i) => {
      if (b === null) return;
      const x = this.binding(b);
      // every binding, chunks included, within the limit (a forced small limit makes this a test of the chunking)
      if (x.size > this.maxBinding)
        throw new RangeError(
          `webgpu: ${entry} binds ${x.size} bytes at binding ${i + 1}, more than one storage binding may hold (${this.maxBinding})`,
        );
      entries.push({ binding: i + 1, resource: { buffer: x.buffer, offset: x.offset, size: x.size } });
    });
    const group = this.device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries });
    if (!this.pass) this.pass = this.enc().beginComputePass();
    this.pass.setPipeline(pipe);
    this.pass.setBindGroup(0, group);
    this.pass.dispatchWorkgroups(gx, gy);
  }

  /** The device error word as a binding. */
  private get err(): Binding {
    return { buffer: this.errorWord, offset: 0, size: 4 };
  }
  /** An unused read-only slot. */
  private get none(): Binding {
    return { buffer: this.dummy, offset: 0, size: 256 };
  }
  /** An unused read-write slot (a different buffer: one buffer may not be bound writable and read-only at once). */
  private get noneRw(): Binding {
    return { buffer: this.dummyRw, offset: 0, size: 256 };
  }

  /**
   * Rows per chunk for a [rows, rowBytes] tensor bound one chunk at a time: at most maxBinding bytes,
   * starting at 256-byte boundaries.
   */
  private rowChunk(rows: number, rowBytes: number, what: string, alignRowBytes = rowBytes): number {
    if (rows * rowBytes <= this.maxBinding) return Math.max(rows, 1);
    // alignRowBytes: the smallest row among the chunked tensors (the strictest 256-byte alignment)
    const align = 256 / gcd(alignRowBytes, 256);
    const per = Math.floor(this.maxBinding / rowBytes / align) * align;
    if (per < 1) {
      throw new RangeError(
        `webgpu: ${what} has rows of ${rowBytes} bytes; ${align} of them (the fewest that keep chunks 256-byte aligned) exceed one storage binding (${this.maxBinding} bytes)`,
      );
    }
    return per;
  }

  private rowsOf(t: Tensor, r0: number, count: number, cols: number): Binding {
    const es = dtypeSize(t.dtype);
    return { buffer: t.handle as GPUBuffer, offset: t.byteOffset + r0 * cols * es, size: Math.max(4, round4(count * cols * es)) };
  }

  // ---- the loss family -------------------------------------------------------------------------
  logprobGather(logits: Tensor, targets: Tensor<'i32'>): { logp: Tensor<'f32'>; lse: Tensor<'f32'> } {
    const [n, v] = logits.shape;
    const logp = this.empty('f32', [n]);
    const lse = this.empty('f32', [n]);
    if (n === 0) return { logp, lse };
    const zb = logits.dtype === 'bf16';
    const d = { Z_BF16: zb, SUBGROUPS: this.subgroups };
    const chunk = this.rowChunk(n, v * dtypeSize(logits.dtype), 'logprobGather logits');
    // long rows: split each row over several workgroups and merge their (max, sum) pairs
    const splits = v >= 16384 ? Math.min(64, Math.ceil(v / 8192)) : 1;
    for (let r0 = 0; r0 < n; r0 += chunk) {
      const rows = Math.min(chunk, n - r0);
      const z = this.rowsOf(logits, r0, rows, v);
      if (splits === 1) {
        this.dispatch('loss', d, 'gather', [rows, v, r0, 1, 0], [z, targets, logp, lse, this.err], rows);
      } else {
        const part = this.temp(rows * splits * 8);
        this.dispatch('loss', d, 'gather_split', [rows, v, r0, splits, 0], [z, null, part], rows * splits);
        this.dispatch('loss', d, 'gather_merge', [rows, v, r0, splits, 0], [part, targets, logp, lse, this.err, z], Math.ceil(rows / 64));
        this.releaseBuffer(part.buffer);
      }
    }
    return { logp, lse };
  }

  logprobGatherBackward(logits: Tensor, targets: Tensor<'i32'>, lse: Tensor<'f32'>, dlogp: Tensor<'f32'>, out: Tensor): void {
    const [n, v] = logits.shape;
    if (n === 0 || v === 0) return;
    const inPlace = logits.handle === out.handle && logits.byteOffset === out.byteOffset;
    const zb = logits.dtype === 'bf16';
    const ob = out.dtype === 'bf16';
    const es = Math.max(dtypeSize(logits.dtype), dtypeSize(out.dtype));
    // bf16 rows set the alignment (so chunks also hold an even number of elements: no bf16 word straddles two)
    const chunk = this.rowChunk(n, v * es, 'logprobGatherBackward logits', v * Math.min(dtypeSize(logits.dtype), dtypeSize(out.dtype)));
    for (let r0 = 0; r0 < n; r0 += chunk) {
      const rows = Math.min(chunk, n - r0);
      const cnt = rows * v;
      const z = inPlace ? this.none : this.rowsOf(logits, r0, rows, v);
      const o = this.rowsOf(out, r0, rows, v);
      const inv = ob ? Math.ceil(cnt / 2) : cnt;
      this.dispatch(
        'loss',
        { Z_BF16: zb, OUT_BF16: ob, IN_PLACE: inPlace },
        'backward',
        [rows, v, r0, 1, cnt],
        [z, targets, lse, dlogp, this.err, o],
        Math.ceil(inv / 256),
      );
    }
  }

  sequenceLogprob(logp: Tensor<'f32'>, segments: Tensor<'i32'>, numSeqs: number): Tensor<'f32'> {
    const out = this.empty('f32', [numSeqs]);
    if (numSeqs === 0) return out;
    this.dispatch('loss', {}, 'sequence_sum', [numSeqs, 0, 0, 0, logp.numel], [logp, segments, out, this.err], numSeqs);
    return out;
  }

  sequenceLogprobBackward(dseq: Tensor<'f32'>, segments: Tensor<'i32'>): Tensor<'f32'> {
    const n = segments.numel;
    const out = this.empty('f32', [n]);
    if (n === 0) return out;
    this.dispatch('loss', {}, 'sequence_backward', [dseq.numel, 0, 0, 0, n], [dseq, segments, out, this.err], Math.ceil(n / 256));
    return out;
  }

  spinLoss(policy: Tensor<'f32'>, ref: Tensor<'f32'>, opts: SpinLossOpts): SpinLossOutputs {
    const b = policy.numel / 2;
    const perPair = this.empty('f32', [7, b]);
    const means = this.empty('f32', [8]);
    const dseq = this.empty('f32', [2 * b]);
    const params: Param[] = [
      b,
      SPIN_LOSS_TYPES.indexOf(opts.lossType),
      opts.pairMask ? 1 : 0,
      [opts.beta, 'f'],
      [opts.nllAlpha ?? 0, 'f'],
      [opts.gradScale ?? 1, 'f'],
      0,
      0,
    ];
    this.dispatch(
      'loss',
      {},
      'spin_loss',
      params,
      [policy, ref, opts.pairMask ?? this.none, opts.answerTokens ?? this.none, perPair, means, dseq],
      1,
    );
    return { perPair, means, dseq };
  }

  // ---- optimizer ops -------------------------------------------------------------------------
  private optim(
    entry: 'rmsprop' | 'adamw',
    p: OptimTensors,
    s1: Tensor<'f32'>,
    s2: Tensor<'f32'> | null,
    hyper: number[],
    clip?: Tensor<'f32'>,
  ): void {
    const n = p.param.numel;
    if (n === 0) return;
    const pb = p.param.dtype === 'bf16';
    const defines = { MASTER: !!p.master, P_BF16: pb, CLIP: !!clip };
    // chunks of whole words, starting at 256-byte boundaries of every tensor
    const chunk = Math.max(128, Math.floor(this.maxBinding / 4 / 128) * 128);
    for (let e0 = 0; e0 < n; e0 += chunk) {
      const cnt = Math.min(chunk, n - e0);
      const params: Param[] = [cnt, 0, 0, 0, ...hyper.map((x): Param => [x, 'f'])];
      const inv = pb ? Math.ceil(cnt / 2) : cnt;
      const bs: Slot[] = [
        this.sub(p.param, e0, cnt),
        p.master ? this.sub(p.master, e0, cnt) : this.noneRw,
        this.sub(p.grad, e0, cnt),
        this.sub(s1, e0, cnt),
        s2 ? this.sub(s2, e0, cnt) : null,
        clip ?? this.none,
      ];
      this.dispatch('optim', defines, entry, params, bs, Math.ceil(inv / 256));
    }
  }

  rmspropStep(p: OptimTensors & { squareAvg: Tensor<'f32'> }, h: RmspropHyper, clip?: Tensor<'f32'>): void {
    this.optim('rmsprop', p, p.squareAvg, null, [h.lr, h.alpha, h.eps, h.weightDecay, 0, 0, 0, 0, 0, 1 - h.alpha, 0, 0], clip);
  }

  adamwStep(p: OptimTensors & { expAvg: Tensor<'f32'>; expAvgSq: Tensor<'f32'> }, h: AdamwHyper, clip?: Tensor<'f32'>): void {
    const bc1 = 1 - h.beta1 ** h.step;
    const bc2 = 1 - h.beta2 ** h.step;
    this.optim(
      'adamw',
      p,
      p.expAvg,
      p.expAvgSq,
      [h.lr, 0, h.eps, h.weightDecay, h.beta1, h.beta2, h.lr / bc1, Math.sqrt(bc2), 1 - h.lr * h.weightDecay, 0, 1 - h.beta1, 1 - h.beta2],
      clip,
    );
  }

  sumSquares(x: Tensor<'f32'>, out: Tensor<'f32'>, index: number): void {
    const n = x.numel;
    const chunk = 8192;
    const parts = Math.max(1, Math.ceil(n / chunk));
    const part = this.temp(parts * 4);
    // bound in pieces of 64 chunks at least, so the partials' offsets stay 256-byte aligned too
    const piece = chunk * 64;
    const bind = Math.max(piece, Math.floor(this.maxBinding / 4 / piece) * piece);
    if (n === 0) this.dispatch('optim', {}, 'sumsq_partial', [0, 0, chunk, 1, 0], [this.none, part], 1);
    for (let e0 = 0; e0 < n; e0 += bind) {
      const cnt = Math.min(bind, n - e0);
      const np = Math.ceil(cnt / chunk);
      this.dispatch('optim', {}, 'sumsq_partial', [cnt, 0, chunk, np, 0], [this.sub(x, e0, cnt), this.sub(part, e0 / chunk, np)], np);
    }
    this.dispatch('optim', {}, 'sum_parts', [parts, index, chunk, parts, 0], [part, out], 1);
    this.releaseBuffer(part.buffer);
  }

  clipCoefficient(sumsq: Tensor<'f32'>, maxNorm: number): Tensor<'f32'> {
    const out = this.empty('f32', [2]);
    this.dispatch('optim', {}, 'clip_coefficient', [sumsq.numel, 0, 0, 0, [maxNorm, 'f']], [sumsq.numel ? sumsq : this.none, out], 1);
    return out;
  }

  /** An elementwise f32 kernel over n elements of same-shaped tensors, chunked by binding size. */
  private ew(entry: string, ts: Tensor[], a: number, b: number, defines: Defines = {}): void {
    const n = ts[0].numel;
    if (n === 0) return;
    const chunk = Math.max(128, Math.floor(this.maxBinding / 4 / 128) * 128);
    for (let e0 = 0; e0 < n; e0 += chunk) {
      const cnt = Math.min(chunk, n - e0);
      this.dispatch(
        'elementwise',
        defines,
        entry,
        [cnt, 0, 0, 0, [a, 'f'], [b, 'f'], 0, 0],
        ts.map((t) => this.sub(t, e0, cnt)),
        Math.ceil(cnt / 256),
      );
    }
  }

  scaleInPlace(x: Tensor<'f32'>, a: number): void {
    this.ew('scale', [x], a, 0);
  }

  accumulate(acc: Tensor<'f32'>, x: Tensor<'f32'>, alpha: number): void {
    const hi = Math.fround(alpha);
    this.ew('accumulate', [acc, x], hi, alpha - hi);
  }

  // ---- sampling ------------------------------------------------------------------------------
  sampleTokens(logits: Tensor<'f32'>, rng: Tensor<'i32'>, active: Tensor<'i32'>, o: SampleOpts): Tensor<'i32'> {
    const [b, v] = logits.shape;
    const out = this.empty('i32', [b]);
    if (b === 0) return out;
    const greedy = o.temperature === 0 || o.topK === 1;
    let chunk = this.rowChunk(b, v * 4, 'sampleTokens logits');
    if (chunk < b) chunk = Math.floor(chunk / 64) * 64; // the per-row tensors start at 256-byte boundaries too
    if (chunk === 0) this.binding(logits.view(0, [64, v])); // throws: 64 rows exceed one binding
    for (let r0 = 0; r0 < b; r0 += chunk) {
      const rows = Math.min(chunk, b - r0);
      const params: Param[] = [rows, v, greedy ? 1 : 0, o.topK, [o.temperature, 'f'], [o.topP, 'f'], 0, 0];
      // the small per-row tensors are bound at the chunk's row too: chunks are multiples of 64 rows
      const bs: Bindable[] = [
        this.rowsOf(logits, r0, rows, v),
        this.rowsOf(rng, r0, rows, 4),
        this.rowsOf(active, r0, rows, 1),
        this.rowsOf(out, r0, rows, 1),
      ];
      if (greedy) this.dispatch('sample', {}, 'argmax', params, [bs[0], null, bs[2], bs[3]], rows);
      else this.dispatch('sample', {}, 'sample', params, bs, Math.ceil(rows / 64));
    }
    return out;
  }

  // ---- model ops -----------------------------------------------------------------------------
  // One GEMM dispatch per weight: the submits are batched already, and a fused kernel would need the
  // weights' rows in one binding.
  linears(x: Tensor<'f32'>, weights: readonly Tensor[], opts: LinearsOpts): Tensor<'f32'>[] {
    return weights.map((w) => this.matmul(x, w, { transB: true, ...opts }));
  }

  // opts.rowInvariant needs nothing here: gemm.wgsl sums each output over k in order and its variants
  // depend on K only, so a row never depends on M (test/model_ops.test.ts checks it on this backend).
  matmul(a: Tensor<'f32'>, b: Tensor, opts: MatmulOpts = {}): Tensor<'f32'> {
    if (opts.computeDtype === 'bf16') {
      // a rounded to bf16 first (bf16_compute.ts), then this f32 GEMM: the same products
      const r = roundedToBf16(this, a);
      const y = this.matmul(r, b, { ...opts, computeDtype: 'f32' });
      this.free(r);
      return y;
    }
    const [ar, ac] = a.shape;
    const [br, bc] = b.shape;
    const ta = !!opts.transA;
    const tb = !!opts.transB;
    const [m, k] = ta ? [ac, ar] : [ar, ac];
    const n = tb ? br : bc;
    const out = opts.out ?? this.empty('f32', [m, n]);
    if (m === 0 || n === 0) return out;
    const acc = opts.accumulate ? 1 : 0;
    const bb = b.dtype === 'bf16';
    // 4-wide loads where rows are whole vec4s: A row-major, B the transposed [N, K] weight, K % 4 = 0
    const bVec = tb && k % 4 === 0;
    const gemmDefines = { B_BF16: bb, A_VEC: !ta && k % 4 === 0, B_VEC: bVec && !bb, B_VEC_BF16: bVec && bb, B_SCALAR: !bVec };
    // rows of A (when not transposed) and of C go in chunks; B (and a transposed A) are bound whole
    if (ta) this.binding(a); // a transposed A larger than one binding: the clear error
    this.binding(b);
    const chunk = this.rowChunk(m, Math.max(ta ? 4 : ac * 4, n * 4), 'matmul operand');
    for (let r0 = 0; r0 < m; r0 += chunk) {
      const rows = Math.min(chunk, m - r0);
      if (ta && r0 > 0)
        throw new RangeError(`webgpu: matmul with transA whose output (${m} x ${n}) is larger than one binding is not supported`);
      const abind: Bindable = ta ? a : this.rowsOf(a, r0, rows, ac);
      const params: Param[] = [rows, n, k, ac, bc, n, 0, ta ? 1 : 0, tb ? 1 : 0, acc, [opts.alpha ?? 1, 'f'], 0];
      this.dispatch(
        'gemm',
        gemmDefines,
        'gemm',
        params,
        [abind, b, this.rowsOf(out, r0, rows, n)],
        [Math.ceil(n / 64), Math.ceil(rows / 64)],
      );
    }
    return out;
  }

  embedding(ids: Tensor<'i32'>, table: Tensor): Tensor<'f32'> {
    const [v, h] = table.shape;
    const t = ids.numel;
    const out = this.empty('f32', [t, h]);
    if (t * h === 0) return out;
    this.dispatch(
      'elementwise',
      { W_BF16: table.dtype === 'bf16' },
      'embedding',
      [t * h, h, v, 0, [0, 'f'], [0, 'f'], 0, 0],
      [ids, table, out, this.err],
      Math.ceil((t * h) / 256),
    );
    return out;
  }

  embeddingBackward(ids: Tensor<'i32'>, dout: Tensor<'f32'>, dtable: Tensor<'f32'>): void {
    const [v, h] = dtable.shape;
    const t = ids.numel;
    if (t === 0 || h === 0) return;
    this.dispatch(
      'elementwise',
      {},
      'embedding_backward',
      [t, h, v, 0, [0, 'f'], [0, 'f'], 0, 0],
      [ids, dout, dtable, this.err],
      Math.ceil(h / 64),
    );
  }

  rmsnorm(x: Tensor<'f32'>, w: Tensor, eps: number): { y: Tensor<'f32'>; rstd: Tensor<'f32'> } {
    const [t, h] = x.shape;
    const y = this.empty('f32', x.shape);
    const rstd = this.empty('f32', [t]);
    if (t === 0) return { y, rstd };
    this.dispatch('elementwise', { W_BF16: w.dtype === 'bf16' }, 'rmsnorm', [0, h, t, 0, [eps, 'f'], [0, 'f'], 0, 0], [x, w, y, rstd], t);
    return { y, rstd };
  }

  rmsnormBackward(x: Tensor<'f32'>, w: Tensor, rstd: Tensor<'f32'>, dy: Tensor<'f32'>, dw?: Tensor<'f32'>): Tensor<'f32'> {
    const [t, h] = x.shape;
    const dx = this.empty('f32', x.shape);
    if (t === 0) return dx;
    const wb = w.dtype === 'bf16';
    const params: Param[] = [0, h, t, 0, [0, 'f'], [0, 'f'], 0, 0];
    this.dispatch('elementwise', { W_BF16: wb }, 'rmsnorm_backward', params, [x, w, rstd, dy, dx], t);
    if (dw) this.dispatch('elementwise', {}, 'rmsnorm_dw', params, [x, rstd, dy, dw], Math.ceil(h / 64));
    return dx;
  }

  rope(x: Tensor<'f32'>, positions: Tensor<'i32'>, opts: RopeOpts): void {
    const [t, heads, hd] = x.shape;
    const half = hd / 2;
    if (t * heads * half === 0) return;
    // inverse frequencies as HF computes them in fp32: 1 / theta^(2i / hd), divided by the linear factor
    const freq = new Float32Array(half);
    const th = Math.fround(opts.theta);
    const scale = opts.scale ?? 1;
    for (let i = 0; i < half; i++) {
      const expo = Math.fround(Math.fround(2 * i) / Math.fround(hd));
      let f = Math.fround(1 / Math.fround(th ** expo));
      if (scale !== 1) f = Math.fround(f / Math.fround(scale));
      freq[i] = f;
    }
    const fb = this.temp(freq.byteLength);
    this.flush();
    this.device.queue.writeBuffer(fb.buffer, 0, freq.buffer, 0, freq.byteLength);
    const n = t * heads * half;
    this.dispatch(
      'elementwise',
      {},
      'rope',
      [n, hd, heads, opts.inverse ? 1 : 0, [0, 'f'], [0, 'f'], 0, 0],
      [positions, fb, x, this.err],
      Math.ceil(n / 256),
    );
    this.releaseBuffer(fb.buffer);
  }

  /** Keys per attention tile: as many as fit half the workgroup memory for K and V together (max 32). */
  private attnTile(hd: number): number {
    return Math.max(1, Math.min(32, Math.floor((this.limits.maxComputeWorkgroupStorageSize - 256) / (8 * hd))));
  }

  attention(q: Tensor<'f32'>, k: Tensor<'f32'>, v: Tensor<'f32'>, keyMask: Tensor<'i32'>, opts: { scale?: number } = {}) {
    const [b, l, nh, hd] = q.shape;
    const nkv = k.shape[2];
    const out = this.empty('f32', q.shape);
    const lse = this.empty('f32', [b, nh, l]);
    if (b * l * nh === 0) return { out, lse };
    const blocks = Math.ceil(l / 64);
    const params: Param[] = [b, l, nh, nkv, blocks, 1, 0, 0, [opts.scale ?? 1 / Math.sqrt(hd), 'f'], 0, 0, 0];
    this.dispatch('attention', { HD: hd, KT: this.attnTile(hd) }, 'forward', params, [q, k, v, keyMask, out, lse], b * nh * blocks);
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
    if (b * l * nh === 0) return { dq, dk, dv };
    const blocks = Math.ceil(l / 64);
    const defines = { HD: hd, KT: this.attnTile(hd) };
    const params: Param[] = [b, l, nh, nkv, blocks, 1, 0, 0, [opts.scale ?? 1 / Math.sqrt(hd), 'f'], 0, 0, 0];
    const delta = this.temp(b * nh * l * 4);
    this.dispatch('attention', defines, 'delta', params, [out, dout, delta], Math.ceil((b * l * nh) / 64));
    this.dispatch('attention', defines, 'backward_dq', params, [q, k, v, keyMask, lse, delta, dout, dq], b * nh * blocks);
    this.dispatch('attention', defines, 'backward_dkdv', params, [q, k, v, keyMask, lse, delta, dout, dk, dv], b * nkv * blocks);
    this.releaseBuffer(delta.buffer);
    return { dq, dk, dv };
  }

  attentionDecode(
    q: Tensor<'f32'>,
    kCache: Tensor,
    vCache: Tensor,
    lengths: Tensor<'i32'>,
    keyMask?: Tensor<'i32'>,
    opts: { scale?: number } = {},
  ): Tensor<'f32'> {
    const [b, nh, hd] = q.shape;
    const [, nkv, lmax] = kCache.shape;
    const out = this.empty('f32', q.shape);
    if (b * nh === 0) return out;
    const params: Param[] = [b, lmax, nh, nkv, 1, keyMask ? 1 : 0, 0, 0, [opts.scale ?? 1 / Math.sqrt(hd), 'f'], 0, 0, 0];
    const defines: Defines = { HD: hd, KT: this.attnTile(hd) };
    if (kCache.dtype === 'bf16') defines.KV_BF16 = true; // set only where true: an f32 decode shares the forward's module
    this.dispatch(
      'attention',
      defines,
      'decode',
      params,
      [q, kCache, vCache, keyMask ?? this.none, lengths, out, this.err],
      Math.ceil((b * nh) / 64),
    );
    return out;
  }

  scatterRows(src: Tensor<'f32'>, index: Tensor<'i32'>, dst: Tensor): void {
    const [rows, cols] = src.shape;
    if (rows * cols === 0) return;
    if (dst.dtype === 'bf16') {
      // one invocation per (row, 32-bit word of its dst row): a bf16 pair is written whole
      const n = rows * Math.ceil(cols / 2);
      this.dispatch(
        'elementwise',
        {},
        'scatter_rows_bf16',
        [n, cols, dst.shape[0], 0, [0, 'f'], [0, 'f'], 0, 0],
        [index, src, dst, this.err],
        Math.ceil(n / 256),
      );
      return;
    }
    this.dispatch(
      'elementwise',
      {},
      'scatter_rows',
      [rows * cols, cols, dst.shape[0], 0, [0, 'f'], [0, 'f'], 0, 0],
      [index, src, dst, this.err],
      Math.ceil((rows * cols) / 256),
    );
  }

  swiglu(gate: Tensor<'f32'>, up: Tensor<'f32'>): Tensor<'f32'> {
    const out = this.empty('f32', gate.shape);
    this.ew('swiglu', [gate, up, out], 0, 0);
    return out;
  }

  swigluBackward(gate: Tensor<'f32'>, up: Tensor<'f32'>, dout: Tensor<'f32'>): { dgate: Tensor<'f32'>; dup: Tensor<'f32'> } {
    const dgate = this.empty('f32', gate.shape);
    const dup = this.empty('f32', gate.shape);
    this.ew('swiglu_backward', [gate, up, dout, dgate, dup], 0, 0);
    return { dgate, dup };
  }

  add(a: Tensor<'f32'>, b: Tensor<'f32'>, out?: Tensor<'f32'>): Tensor<'f32'> {
    const y = out ?? this.empty('f32', a.shape);
    const same = (x: Tensor, z: Tensor): boolean => x.handle === z.handle && x.byteOffset === z.byteOffset;
    if (same(y, a)) this.ew('add_inplace', [y, b], 0, 0);
    else if (same(y, b)) this.ew('add_inplace', [y, a], 0, 0);
    else this.ew('add', [a, b, y], 0, 0);
    return y;
  }

  addBias(x: Tensor<'f32'>, bias: Tensor): void {
    const [t, n] = x.shape;
    if (t * n === 0) return;
    this.dispatch(
      'elementwise',
      { W_BF16: bias.dtype === 'bf16' },
      'add_bias',
      [t * n, n, t, 0, [0, 'f'], [0, 'f'], 0, 0],
      [x, bias],
      Math.ceil((t * n) / 256),
    );
  }

  biasBackward(dy: Tensor<'f32'>, dbias: Tensor<'f32'>): void {
    const [t, n] = dy.shape;
    if (n === 0) return;
    this.dispatch('elementwise', {}, 'bias_backward', [0, n, t, 0, [0, 'f'], [0, 'f'], 0, 0], [dbias, dy], Math.ceil(n / 64));
  }
}
