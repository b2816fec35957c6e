// The op list (native/op_list.h, generated into src/backend/native/op_list.ts) against everything that
// must follow it: each op has a Backend method on every backend class, an exported function in the
// CPU addon and (when built) the CUDA emulator addon, and a test that calls it. Also the generated
// file is current, and backend.ts and tensor.ts import each other only as types.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Backend } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { CudaBackend } from '../src/backend/cuda/cuda_backend.js';
import { cudaEmulatorNative, cudaNative, emulatorBuilt } from '../src/backend/cuda/native.js';
import { loadAddon, packageRoot } from '../src/backend/native/addon.js';
import { NATIVE_OPS } from '../src/backend/native/op_list.js';
import { WebGpuBackend } from '../src/backend/webgpu/webgpu_backend.js';

// Compile-time: every op's method is a Backend method.
const METHODS: readonly (keyof Backend)[] = NATIVE_OPS.map((o) => o.method);

/** The ops for which `has` is false, as "op (method): what is missing" lines. */
function missing(what: string, has: (op: (typeof NATIVE_OPS)[number]) => boolean): string[] {
  return NATIVE_OPS.filter((o) => !has(o)).map((o) => `${o.name} (${o.method}): ${what}`);
}

test('src/backend/native/op_list.ts is what scripts/gen-op-list.mjs writes from native/op_list.h', () => {
  execFileSync(process.execPath, [join(packageRoot, 'scripts', 'gen-op-list.mjs'), '--check'], { stdio: 'pipe' });
  assert.ok(NATIVE_OPS.length >= 30, `only ${NATIVE_OPS.length} ops parsed from native/op_list.h`);
  assert.equal(new Set(NATIVE_OPS.map((o) => o.name)).size, NATIVE_OPS.length, 'an op is listed twice');
});

test('every op has a kernel on each backend class (CPU, CUDA, WebGPU)', () => {
  const classes = { CpuBackend, CudaBackend, WebGpuBackend } as const;
  const gaps: string[] = [];
  for (const [name, cls] of Object.entries(classes)) {
    const proto = cls.prototype as unknown as Record<string, unknown>;
    gaps.push(...missing(`no method on ${name}`, (o) => typeof proto[o.method] === 'function'));
  }
  assert.deepEqual(gaps, []);
  assert.equal(METHODS.length, NATIVE_OPS.length);
});

test('every op is an exported function of the CPU addon, and of the CUDA addon and its emulator where built', (t) => {
  const registries: [string, Record<string, unknown>][] = [['the CPU addon', loadAddon() as unknown as Record<string, unknown>]];
  const cuda = cudaNative();
  if (cuda) registries.push(['the CUDA addon', cuda as unknown as Record<string, unknown>]);
  if (emulatorBuilt()) registries.push(['the CUDA emulator addon', cudaEmulatorNative() as unknown as Record<string, unknown>]);
  else t.diagnostic('the CUDA emulator addon is not built: only the CPU addon was checked');
  const gaps: string[] = [];
  for (const [where, addon] of registries) gaps.push(...missing(`no function in ${where}`, (o) => typeof addon[o.name] === 'function'));
  assert.deepEqual(gaps, []);
});

test('every op is called by a test', () => {
  const dir = join(packageRoot, 'test');
  const sources = readdirSync(dir)
    .filter((f) => f.endsWith('.test.ts') && f !== 'op_list.test.ts')
    .map((f) => readFileSync(join(dir, f), 'utf8'));
  const gaps = missing('no test calls it', (o) => sources.some((s) => new RegExp(`\\.(${o.name}|${o.method})\\(`).test(s)));
  assert.deepEqual(gaps, []);
});

test('backend.ts and tensor.ts import each other only as types (no runtime cycle)', () => {
  const pairs = [
    ['src/backend/backend.ts', 'tensor/tensor.js'],
    ['src/tensor/tensor.ts', 'backend/backend.js'],
  ];
  for (const [file, target] of pairs) {
    const text = readFileSync(join(packageRoot, file), 'utf8');
    for (const line of text.split('\n').filter((l) => /^import\b/.test(l) && l.includes(target)))
      assert.match(line, /^import type /, `${file}: a runtime import of ${target}: ${line}`);
  }
});
