// Choosing a device: the backends spinlm knows, whether each can run here and why not, and the one
// `--device cpu|cuda|webgpu|auto` picks (auto: CUDA, then WebGPU, then the CPU).
import { existsSync } from 'node:fs';
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

/** Each backend's status on this machine (nothing is started that is not available). */
export async function backendStatus(): Promise<BackendStatus[]> {
  const out: BackendStatus[] = [];
  try {
    out.push({ name: 'cpu', available: true, info: cpuBackend().info() });
  } catch (err) {
    out.push({ name: 'cpu', available: false, reason: (err as Error).message.split('\n')[0] });
  }
  const cuda = cudaStatus();
  if (cuda.available) out.push({ name: 'cuda', available: true, info: cuda.info });
  else {
    const driver = nvidiaDriver();
    out.push({ name: 'cuda', available: false, reason: `${cuda.reason}${cuda.reason.startsWith('not compiled in') && driver ? ` (${driver})` : ''}` });
  }
  out.push(await webgpuStatus());
  return out;
}

/** Thrown when the asked-for device cannot run here; the CLI prints its message and exits with 2. */
export class DeviceUnavailableError extends Error {
  override name = 'DeviceUnavailableError';
}

export function isDeviceChoice(x: unknown): x is DeviceChoice {
  return x === 'auto' || (DEVICES as readonly unknown[]).includes(x);
}

/** The backend for a device choice; `auto` takes the first available of cuda, webgpu, cpu. */
export async function createBackend(choice: DeviceChoice): Promise<{ backend: Backend; status: BackendStatus }> {
  if (!isDeviceChoice(choice)) throw new TypeError(`device must be one of auto, ${DEVICES.join(', ')}; got ${String(choice)}`);
  const all = await backendStatus();
  const order: DeviceName[] = choice === 'auto' ? ['cuda', 'webgpu', 'cpu'] : [choice];
  for (const name of order) {
    const s = all.find((x) => x.name === name)!;
    if (!s.available) continue;
    if (name === 'cpu') return { backend: cpuBackend(), status: s };
    if (name === 'cuda') return { backend: cudaBackend(), status: s };
    if (name === 'webgpu') return { backend: await webgpuBackend(), status: s };
  }
  const s = all.find((x) => x.name === order[0])!;
  throw new DeviceUnavailableError(
    choice === 'auto' ? `no backend is available: ${all.map((x) => `${x.name}: ${x.reason}`).join('; ')}` : `--device ${choice} is not available: ${s.reason}. Use --device cpu (or auto).`,
  );
}
