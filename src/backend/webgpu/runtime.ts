// The WebGPU runtime under every op family: the device, the buffer pool, the per-batch parameter
// arena, the dispatch recorder (one open compute pass, submitted at a read, a write, or when the arena
// is full), the pipeline cache (one module per (family, variant constants), one pipeline per entry
// point), reads, and the device error word. The op families (memory.ts, loss.ts, ...) record their
// dispatches through it; WebGpuBackend (webgpu_backend.ts) owns one.
/// <reference types="@webgpu/types" />
import { allocHost, type DType, dtypeSize, type HostArrayOf } from '../../tensor/dtype.js';
import { Tensor } from '../../tensor/tensor.js';
import type { Backend } from '../backend.js';
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
export type Param = number | [number, 'u' | 'i' | 'f'];

export interface Binding {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}
export type Bindable = Tensor | Binding;
/** A binding slot the kernel does not use (its entry point never names it). */
export type Slot = Bindable | null;

export const round4 = (n: number): number => Math.ceil(n / 4) * 4;
const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

export class WebGpuRuntime {
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
  /** Live buffers this runtime made and has not released (the leak test watches it). */
  liveBuffers = 0;

  constructor(
    /** The backend the tensors made here belong to. */
    readonly backend: Backend,
    readonly device: GPUDevice,
    readonly limits: GPUSupportedLimits,
    features: readonly string[],
    opts: WebGpuOptions,
  ) {
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

  /** Releases the device and every cached object; the runtime cannot be used afterwards. */
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
  allocBuffer(bytes: number): GPUBuffer {
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

  releaseBuffer(b: GPUBuffer): void {
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

  /** A tensor of this backend on a new (or recycled) buffer, its contents unspecified (memory.ts's empty poisons). */
  tensor<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
    const bytes = new Tensor(this.backend, dtype, shape, null).byteLength;
    return new Tensor(this.backend, dtype, shape, this.allocBuffer(bytes));
  }

  /** A scratch buffer of `bytes` as a binding (give it back with releaseBuffer(b.buffer)). */
  temp(bytes: number): Binding {
    const buffer = this.allocBuffer(bytes);
    return { buffer, offset: 0, size: Math.max(4, round4(bytes)) };
  }

  // ---- reads ---------------------------------------------------------------------------------
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

  // ---- dispatch machinery ----------------------------------------------------------------------
  enc(): GPUCommandEncoder {
    this.encoder ??= this.device.createCommandEncoder();
    return this.encoder;
  }

  endPass(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  /** Counts a command recorded outside a dispatch (a buffer copy) toward the arena's submit. */
  countDispatch(): void {
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

  /** A whole tensor as one binding (a RangeError when it is larger than one binding may hold). */
  binding(t: Bindable): Binding {
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
  dispatch(
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
  get err(): Binding {
    return { buffer: this.errorWord, offset: 0, size: 4 };
  }
  /** An unused read-only slot. */
  get none(): Binding {
    return { buffer: this.dummy, offset: 0, size: 256 };
  }
  /** An unused read-write slot (a different buffer: one buffer may not be bound writable and read-only at once). */
  get noneRw(): Binding {
    return { buffer: this.dummyRw, offset: 0, size: 256 };
  }

  // ---- chunks of tensors larger than one binding -------------------------------------------------
  /** Elements per chunk of an elementwise op: 4-byte elements, each chunk starting at a 256-byte boundary (128 elements). */
  elementChunk(): number {
    return Math.max(128, Math.floor(this.maxBinding / 4 / 128) * 128);
  }

  /**
   * Rows per chunk for a [rows, rowBytes] tensor bound one chunk at a time: at most maxBinding bytes,
   * starting at 256-byte boundaries.
   */
  rowChunk(rows: number, rowBytes: number, what: string, alignRowBytes = rowBytes): number {
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

  /** Rows [r0, r0 + count) of a [rows, cols] tensor as a binding. */
  rowsOf(t: Tensor, r0: number, count: number, cols: number): Binding {
    const es = dtypeSize(t.dtype);
    return { buffer: t.handle as GPUBuffer, offset: t.byteOffset + r0 * cols * es, size: Math.max(4, round4(count * cols * es)) };
  }

  /** Elements [e0, e0 + cnt) of a tensor (or raw binding of 4-byte elements) as a binding. */
  sub(t: Bindable, e0: number, cnt: number): Binding {
    if (!(t instanceof Tensor))
      return { buffer: t.buffer, offset: t.offset + e0 * 4, size: Math.max(4, round4(Math.min(cnt * 4, t.size - e0 * 4))) };
    const es = dtypeSize(t.dtype);
    return { buffer: t.handle as GPUBuffer, offset: t.byteOffset + e0 * es, size: Math.max(4, round4(cnt * es)) };
  }
}
