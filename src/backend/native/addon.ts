// The native addons' neutral side, shared by the CPU and CUDA backends: the addon's TypeScript type,
// the views it takes, the poison bits, the package root, and loading. Loads the native addon:
// prebuilds/<platform>-<arch>/ first, then build/Release (the node-gyp build), through node-gyp-build. SPINLM_ADDON=/path/to/spinlm.node loads one file instead (e.g. the cmake-js
// build in build-cmake/Release).
// When nothing loads, one error says what was looked for, what was found and how to fix it.
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeDlopenError } from './load_error.js';
import type { NativeOps } from './op_list.js';

/** A tensor as the addon sees it: a buffer handle and a byte offset into it. */
export interface NativeView {
  readonly handle: unknown;
  readonly byteOffset: number;
}

/** NaN bit patterns written into fresh buffers by a poisoning backend (every backend writes the same). */
export const POISON_BITS = { f32: 0x7fc00000, bf16: 0x7fc0, i32: 0x7fc00000 } as const;

/**
 * The functions of the CPU addon (native/addon.cc): the ops of the op list (NativeOps, generated from
 * native/op_list.h; bindings in native/<family>_ops.cc), then memory, reads and the CPU's probes.
 * Shapes and meanings: native/cpu/kernels.h.
 */
export interface NativeAddon extends NativeOps {
  abiVersion: number;
  alloc(bytes: number): unknown;
  free(handle: unknown): void;
  write(dst: NativeView, src: ArrayBufferView): void;
  read(src: NativeView, dst: ArrayBufferView): void;
  takeErrors(): number;
  /**
   * Benchmark probes: read `bytes` bytes on all threads; evaluate `count` vector exps on all threads
   * ('loss': the loss kernels' exp, the default; 'cephes': simd::exp_neg, the one they used before).
   */
  streamRead(t: NativeView, bytes: number): number;
  expThroughput(count: number, exp?: 'loss' | 'cephes'): number;
  rowOffset(row: number, cols: number): bigint;
  /** Big freed blocks are recycled (native/cpu/memory.h): how many bytes are held for reuse. */
  cachedBytes(): number;
  /** Gives the blocks held for reuse back to the system. */
  releaseCached(): void;
  /** Bytes of the tensors allocated and not yet freed (native/cpu/memory.cc's counter). */
  liveBytes(): number;
  /** The most liveBytes() has been since the last reset; `reset` starts again from the live bytes. */
  peakLiveBytes(reset?: boolean): number;
  numThreads(): number;
  setNumThreads(n: number): void;
  /**
   * The kernel set OpenBLAS picked when it loaded (openblas_get_corename: "SkylakeX", "Haswell", ...):
   * OPENBLAS_CORETYPE in the environment overrides its choice, and the benchmarks report it.
   */
  blasCore(): string;
}

/** The package root: the folder that holds src/backend/native (or dist/backend/native). */
export const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** Bumped whenever a binding's arguments change (native/addon.cc exports the same number). */
const ABI_VERSION = 15;

let cached: NativeAddon | undefined;

function listNodeFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...listNodeFiles(p));
    else if (entry.name.endsWith('.node')) out.push(p);
  }
  return out;
}

export function loadAddon(): NativeAddon {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const override = process.env.SPINLM_ADDON;
  try {
    cached = (override ? require(resolve(override)) : require('node-gyp-build')(packageRoot)) as NativeAddon;
  } catch (err) {
    const found = [...listNodeFiles(join(packageRoot, 'prebuilds')), ...listNodeFiles(join(packageRoot, 'build'))];
    const message = [
      `spinlm: could not load its native addon (${(err as Error).message.split('\n')[0]}).`,
      ...[describeDlopenError((err as Error).message)].filter((line) => line !== undefined),
      override
        ? `Looked for: SPINLM_ADDON=${override}.`
        : `Looked for: ${join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`)}/*.node, then ${join(packageRoot, 'build', 'Release')}/spinlm.node.`,
      `Found: ${found.length ? found.join(', ') : 'no .node files'}.`,
      `Fix: build it from source with \`cd ${packageRoot} && npx node-gyp rebuild\` (needs python3, make, g++),`,
      `or reinstall spinlm on a linux-x64 machine where its prebuilt binary applies.`,
    ].join('\n');
    throw new Error(message, { cause: err });
  }
  if (cached.abiVersion !== ABI_VERSION) {
    const v = cached.abiVersion;
    cached = undefined;
    throw new Error(`spinlm: the native addon speaks ABI ${v}, this code expects ${ABI_VERSION}: rebuild it with \`npx node-gyp rebuild\``);
  }
  return cached;
}
