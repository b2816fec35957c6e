#!/usr/bin/env node
// The node_modules folders the GPU kit's steps load, one path a line (relative to the repository root):
// the package's runtime dependencies (not the optional `webgpu`, 130 MB: the WebGPU step runs only where
// node_modules is installed), tsx (the tests and benchmarks run as TypeScript), tinybench (the benchmarks' harness) and their dependencies,
// found by walking package.json files the way Node resolves them (a nested node_modules first).
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const LEAVE_OUT = new Set(['webgpu']);
const seen = new Set();

function resolveFrom(dir, name) {
  for (let d = dir; ; d = dirname(d)) {
    const p = join(d, 'node_modules', name);
    if (existsSync(join(p, 'package.json'))) return p;
    if (d === root || dirname(d) === d) return undefined;
  }
}

function walk(dir, name, optional) {
  if (LEAVE_OUT.has(name)) return;
  const p = resolveFrom(dir, name);
  if (!p) {
    if (optional) return; // an optional dependency for another platform
    throw new Error(`gpu-kit: ${name} (needed from ${relative(root, dir) || '.'}) is not installed: run npm ci`);
  }
  if (seen.has(p)) return;
  seen.add(p);
  const pkg = JSON.parse(readFileSync(join(p, 'package.json'), 'utf8'));
  for (const d of Object.keys(pkg.dependencies ?? {})) walk(p, d, false);
  for (const d of Object.keys(pkg.optionalDependencies ?? {})) walk(p, d, true);
}

const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
for (const d of Object.keys(pkg.dependencies)) walk(root, d, false);
for (const d of ['tsx', 'tinybench']) walk(root, d, false);
process.stdout.write(
  [...seen]
    .map((p) => relative(root, p))
    .sort()
    .join('\n') + '\n',
);
