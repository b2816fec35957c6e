// Choosing a device: the backends spinlm knows, whether each can run here and why not, and the one
// `--device cpu|cuda|webgpu|auto` picks (auto: CUDA, then WebGPU, then the CPU).
import { existsSync, readdirSync } from 'node:fs';
import type { Backend, BackendInfo } from './backend.js';
import { cpuBackend } from './cpu/cpu_backend.js';
import { cudaBackend, cudaStatus } from './cuda/cuda_backend.js';
import { probeAdapter } from './webgpu/device.js';
import { WebGpuBackend } from './webgpu/webgpu_backend.js';

export const DEVICES = ['cpu', 'cuda', 'webgpu'] as const;
export type DeviceName = (typeof DEVICES)[number];
export type DeviceChoice = DeviceName | 'auto';

export interface BackendStatus {
  name: DeviceName;
  available: boolean;
  /** Why it is not available (what is missing and what would fix it). */
  reason?: string;
  /** What the backend reports about its device, when available. */
  info?: BackendInfo;
}

/** The NVIDIA kernel driver, as /proc shows it (absent without a driver). */
function nvidiaDriver(): string | null {
  return existsSync('/proc/driver/nvidia/version') ? 'an NVIDIA driver is loaded' : null;
}

let webgpu: Promise<WebGpuBackend> | undefined;
/** The process-wide WebGPU backend (its device lives as long as the process). */
export function webgpuBackend(): Promise<WebGpuBackend> {
  webgpu ??= WebGpuBackend.create();
  return webgpu;
}

async function webgpuStatus(): Promise<BackendStatus> {
  const probe = await probeAdapter();
  if (!probe.ok) return { name: 'webgpu', available: false, reason: probe.reason };
  try {
    return { name: 'webgpu', available: true, info: (await webgpuBackend()).info() };
  } catch (err) {
    return { name: 'webgpu', available: false, reason: (err as Error).message.split('\n')[0] };
  }
}

/** One backend's status (only that backend is probed: no WebGPU device is made for --device cuda). */
async function statusOf(name: DeviceName): Promise<BackendStatus> {
  if (name === 'cpu') {
    try {
      return { name: 'cpu', available: true, info: cpuBackend().info() };
    } catch (err) {
      return { name: 'cpu', available: false, reason: (err as Error).message.split('\n')[0] };
    }
  }
  if (name === 'cuda') {
    const cuda = cudaStatus();
    if (cuda.available) return { name: 'cuda', available: true, info: cuda.info };
    const driver = nvidiaDriver();
    return {
      name: 'cuda',
      available: false,
      reason: `${cuda.reason}${cuda.reason.startsWith('not compiled in') && driver ? ` (${driver})` : ''}`,
    };
  }
  return webgpuStatus();
}

/** Each backend's status on this machine (nothing is started that is not available). */
export async function backendStatus(): Promise<BackendStatus[]> {
  const out: BackendStatus[] = [];
  for (const name of DEVICES) out.push(await statusOf(name));
  return out;
}

/** Thrown when the asked-for device cannot run here; the CLI prints its message and exits with 2. */
export class DeviceUnavailableError extends Error {
  override name = 'DeviceUnavailableError';
}

export function isDeviceChoice(x: unknown): x is DeviceChoice {
  return x === 'auto' || (DEVICES as readonly unknown[]).includes(x);
}

/**
 * Whether this machine likely has a GPU for WebGPU: a DRM render node or the NVIDIA driver on Linux;
 * macOS and Windows always have a Metal / D3D12 device. `auto` probes WebGPU only then: probing loads
 * Dawn, and on a machine with only Mesa's lavapipe the probe prints Dawn's limit warnings for nothing.
 */
function gpuLikely(): boolean {
  if (process.platform !== 'linux') return true;
  if (nvidiaDriver()) return true;
  try {
    return readdirSync('/dev/dri').some((f) => f.startsWith('renderD'));
  } catch {
    return false;
  }
}

/** What `auto` considers for WebGPU: a real GPU only (a fallback/CPU adapter is slower than --device cpu). */
async function webgpuForAuto(): Promise<BackendStatus> {
  if (!gpuLikely()) {
    return {
      name: 'webgpu',
      available: false,
      reason: 'auto passes over it: no GPU device here (no /dev/dri render node or NVIDIA driver); --device webgpu asks for it anyway',
    };
  }
  const probe = await probeAdapter();
  if (probe.ok && probe.adapter.info.isFallbackAdapter) {
    return {
      name: 'webgpu',
      available: false,
      reason: `auto passes over it: the adapter (${probe.adapter.info.description || probe.adapter.info.vendor}) is a fallback/CPU adapter, slower than --device cpu; --device webgpu asks for it anyway`,
    };
  }
  return webgpuStatus();
}

/**
 * The backend for a device choice; `auto` takes the first available of cuda, webgpu (a real GPU
 * only), cpu, and lists in `passed` the ones it passed over and why.
 */
export async function createBackend(choice: DeviceChoice): Promise<{ backend: Backend; status: BackendStatus; passed: BackendStatus[] }> {
  if (!isDeviceChoice(choice)) throw new TypeError(`device must be one of auto, ${DEVICES.join(', ')}; got ${String(choice)}`);
  const order: DeviceName[] = choice === 'auto' ? ['cuda', 'webgpu', 'cpu'] : [choice];
  const all: BackendStatus[] = [];
  for (const name of order) {
    const s = choice === 'auto' && name === 'webgpu' ? await webgpuForAuto() : await statusOf(name);
    all.push(s);
    if (!s.available) continue;
    const passed = all.filter((x) => !x.available);
    if (name === 'cpu') return { backend: cpuBackend(), status: s, passed };
    if (name === 'cuda') return { backend: cudaBackend(), status: s, passed };
    return { backend: await webgpuBackend(), status: s, passed };
  }
  const s = all.find((x) => x.name === order[0])!;
  throw new DeviceUnavailableError(
    choice === 'auto'
      ? `no backend is available: ${all.map((x) => `${x.name}: ${x.reason}`).join('; ')}`
      : `--device ${choice} is not available: ${s.reason}. Use --device cpu (or auto).`,
  );
}
