// Finding a WebGPU adapter through the `webgpu` npm package (Dawn for Node). The package is an
// optional dependency, imported on first use; the object from create() is kept in a module variable
// for the life of the process, because Dawn aborts the process when that object is collected while a
// device made from it is alive. openDevice() asks it for the limits and optional features the kernels use.
/// <reference types="@webgpu/types" />

import { loadAddon } from '../native/addon.js';

/** Dawn's two warnings about limits spinlm never uses, printed with fprintf(stderr) when it enumerates adapters. */
export const DAWN_NOISE =
  /^Warning: maxDynamic(?:Uniform|Storage)BuffersPerPipelineLayout artificially reduced from \d+ to \d+ to fit dynamic offset allocation limit\.\n?/gm;

type Capture = { stderrCaptureBegin?: () => unknown; stderrCaptureEnd?: (token: unknown) => string };

/**
 * Runs `fn` (synchronous native work) with file descriptor 2 captured by the native addon
 * (native/stderr_capture.cc), then writes what it printed back to stderr less DAWN_NOISE. Without the
 * addon (or its capture functions) `fn` just runs.
 */
export function withoutDawnNoise<T>(fn: () => T): T {
  let addon: Capture | null;
  try {
    addon = loadAddon() as unknown as Capture;
  } catch {
    addon = null;
  }
  const token = addon?.stderrCaptureBegin?.() ?? null;
  if (token === null) return fn();
  try {
    return fn();
  } finally {
    const rest = addon!.stderrCaptureEnd!(token).replace(DAWN_NOISE, '');
    if (rest) process.stderr.write(rest);
  }
}

/** What a probe found: an adapter, or why there is none. */
export type Probe = { ok: true; adapter: GPUAdapter } | { ok: false; reason: string };

let gpu: GPU | null | undefined;
let loadFailure = '';
let probe: Promise<Probe> | undefined;

async function loadGpu(): Promise<GPU | null> {
  if (gpu !== undefined) return gpu;
  try {
    const mod = (await import('webgpu')) as unknown as { create(flags: string[]): GPU; globals: Record<string, unknown> };
    for (const [k, v] of Object.entries(mod.globals)) if (!(k in globalThis)) (globalThis as Record<string, unknown>)[k] = v;
    gpu = mod.create([]);
  } catch (err) {
    const code = (err as { code?: string }).code;
    loadFailure =
      code === 'ERR_MODULE_NOT_FOUND' && /'webgpu'/.test((err as Error).message)
        ? "package not installed: the optional dependency 'webgpu' (Dawn) is missing; npm install webgpu"
        : `the 'webgpu' package did not load: ${(err as Error).message.split('\n')[0]}`;
    gpu = null;
  }
  return gpu;
}

/** A fresh adapter (a WebGPU adapter makes one device only), or why there is none. */
export async function requestAdapter(): Promise<Probe> {
  const g = await loadGpu();
  if (!g) return { ok: false, reason: loadFailure };
  // Dawn enumerates the adapters inside this call (synchronously), printing its two limit warnings
  const adapter = await withoutDawnNoise(() => g.requestAdapter({ powerPreference: 'high-performance' }));
  if (!adapter) {
    return {
      ok: false,
      reason: 'no adapter: Dawn found no Vulkan/Metal/D3D12 device (on Debian 12 install Mesa 25 lavapipe, scripts/install-test-deps.sh)',
    };
  }
  return { ok: true, adapter };
}

/** The first probe's answer, cached: whether WebGPU can run here (spinlm info, --device auto). */
export function probeAdapter(): Promise<Probe> {
  probe ??= requestAdapter();
  return probe;
}

/** A device on a fresh adapter, with the limits and optional features spinlm uses (throws a one-line Error when WebGPU cannot run here). */
export async function openDevice(
  noOptionalFeatures: boolean,
): Promise<{ device: GPUDevice; adapterInfo: GPUAdapterInfo; features: string[] }> {
  const probe = await requestAdapter();
  if (!probe.ok) throw new Error(`webgpu is not available: ${probe.reason}`);
  const adapter = probe.adapter;
  const want = noOptionalFeatures ? [] : (['subgroups', 'shader-f16'] as GPUFeatureName[]).filter((f) => adapter.features.has(f));
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
  return { device, adapterInfo: adapter.info, features: want };
}

/** What `spinlm info` prints about a device: its name and the limits and features that matter. */
export function describeDevice(
  i: GPUAdapterInfo,
  l: GPUSupportedLimits,
  features: readonly string[],
): { device: string; details: string[] } {
  const name = i.description || [i.vendor, i.architecture, i.device].filter((x) => x).join(' ') || 'unknown adapter';
  return {
    device: `${name}${i.isFallbackAdapter ? ' (fallback/CPU adapter)' : ''}`,
    details: [
      `vendor ${i.vendor || '?'}`,
      `fallback adapter: ${i.isFallbackAdapter ? 'yes' : 'no'}`,
      `max storage binding ${(l.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB`,
      `max buffer ${(l.maxBufferSize / 2 ** 20).toFixed(0)} MiB`,
      `workgroup memory ${l.maxComputeWorkgroupStorageSize / 1024} KiB`,
      `workgroups per dimension ${l.maxComputeWorkgroupsPerDimension}`,
      `features: ${features.length ? features.join(', ') : 'none used'}`,
    ],
  };
}
