// Finding a WebGPU adapter through the `webgpu` npm package (Dawn for Node). The package is an
// optional dependency, imported on first use; the object from create() is kept in a module variable
// for the life of the process, because Dawn aborts the process when that object is collected while a
// device made from it is alive.
/// <reference types="@webgpu/types" />

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
  const adapter = await g.requestAdapter({ powerPreference: 'high-performance' });
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
