// The layering rules of docs/design.md, checked on the import statements of src/**/*.ts: no runtime
// import cycle between files nor between top-level folders, and no concrete backend
// (src/backend/cpu|cuda|webgpu/...) imported from outside src/backend/ except by src/index.ts (the
// rest reaches a device through src/backend/registry.ts). Type-only imports (`import type`,
// `export type`, and imports whose every name is `type`) are erased by tsc and so do not count.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'src');

function listTs(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...listTs(p));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** The relative specifiers a file imports at runtime (static imports, re-exports, dynamic import('...')). */
export function runtimeImports(text: string): string[] {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
  const specs: string[] = [];
  const stmt = /(?:^|[;\n])\s*(import|export)\s+(type\s+)?([\s\S]*?)\s*from\s*['"]([^'"]+)['"]/g;
  for (const m of code.matchAll(stmt)) {
    if (m[2]) continue; // import type / export type
    const clause = m[3];
    const braces = /^\{([\s\S]*)\}$/.exec(clause.trim());
    if (braces) {
      const names = braces[1]
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      if (names.length > 0 && names.every((n) => n.startsWith('type '))) continue; // every name is a type
    }
    specs.push(m[4]);
  }
  for (const m of code.matchAll(/(?:^|[;\n])\s*import\s*['"]([^'"]+)['"]/g)) specs.push(m[1]); // side-effect imports
  for (const m of code.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)) specs.push(m[1]);
  return specs.filter((s) => s.startsWith('.'));
}

/** The runtime import graph of a source tree: file (relative to `dir`) -> files it imports. */
export function importGraph(dir: string, files: Record<string, string>): Map<string, string[]> {
  const g = new Map<string, string[]>();
  for (const [file, text] of Object.entries(files)) {
    const targets = runtimeImports(text).map((s) => relative(dir, resolve(dirname(join(dir, file)), s)).replace(/\.js$/, '.ts'));
    g.set(file, [...new Set(targets)]);
  }
  return g;
}

/** One cycle of a directed graph (as a path a -> ... -> a), or null. */
export function findCycle(g: Map<string, string[]>): string[] | null {
  const state = new Map<string, 1 | 2>();
  const stack: string[] = [];
  const visit = (n: string): string[] | null => {
    state.set(n, 1);
    stack.push(n);
    for (const m of g.get(n) ?? []) {
      if (m === n) continue;
      if (state.get(m) === 1) return [...stack.slice(stack.indexOf(m)), m];
      if (!state.has(m)) {
        const c = visit(m);
        if (c) return c;
      }
    }
    stack.pop();
    state.set(n, 2);
    return null;
  };
  for (const n of [...g.keys()].sort()) {
    if (state.has(n)) continue;
    const c = visit(n);
    if (c) return c;
  }
  return null;
}

/** The graph between top-level folders of src/ (src/index.ts is its own node, `index`). */
export function folderGraph(g: Map<string, string[]>): Map<string, string[]> {
  const top = (f: string) => (f.includes('/') ? f.slice(0, f.indexOf('/')) : f.replace(/\.ts$/, ''));
  const fg = new Map<string, string[]>();
  for (const [f, targets] of g) {
    const a = top(f);
    const set = new Set(fg.get(a) ?? []);
    for (const t of targets) if (top(t) !== a) set.add(top(t));
    fg.set(a, [...set]);
  }
  return fg;
}

/** Imports of a concrete backend (src/backend/cpu|cuda|webgpu/) from outside src/backend/, src/index.ts excepted. */
export function concreteBackendImports(g: Map<string, string[]>): string[] {
  const bad: string[] = [];
  for (const [f, targets] of g) {
    if (f.startsWith('backend/') || f === 'index.ts') continue;
    for (const t of targets) if (/^backend\/(cpu|cuda|webgpu)\//.test(t)) bad.push(`src/${f} imports src/${t}`);
  }
  return bad;
}

function sourceTree(): Record<string, string> {
  return Object.fromEntries(listTs(src).map((p) => [relative(src, p), readFileSync(p, 'utf8')]));
}

describe('imports (docs/design.md, layering rules)', () => {
  it('reads runtime imports and skips type-only ones', () => {
    const text = [
      "import type { A } from './a.js';",
      "import { type B, type C } from './b.js';",
      "import { type D, e } from './d.js';",
      "export type { F } from './f.js';",
      "export { g } from './g.js';",
      "import * as h from './h.js';",
      "import './side.js';",
      "// import { x } from './comment.js';",
      "const m = await import('./lazy.js');",
      "import { readFileSync } from 'node:fs';",
      'import {\n  one,\n  two,\n} from "./multi.js";',
    ].join('\n');
    assert.deepEqual(runtimeImports(text).sort(), ['./d.js', './g.js', './h.js', './lazy.js', './multi.js', './side.js'].sort());
  });

  it('finds a planted cycle between files and between folders, and a planted backend import', () => {
    const files = sourceTree();
    // a planted import: model/llama.ts imports spin/self_play.ts, which imports model/llama.ts back
    files['model/llama.ts'] += "\nimport { runSelfPlay } from '../spin/self_play.js';\n";
    files['spin/demo.ts'] += "\nimport { cpuBackend } from '../backend/cpu/cpu_backend.js';\n";
    const g = importGraph(src, files);
    assert.ok(findCycle(g), 'the planted file cycle is found');
    assert.ok(findCycle(folderGraph(g)), 'the planted folder cycle is found');
    assert.deepEqual(concreteBackendImports(g), ['src/spin/demo.ts imports src/backend/cpu/cpu_backend.ts']);
  });

  it('has no runtime import cycle between files of src/', () => {
    const g = importGraph(src, sourceTree());
    for (const [f, ts] of g) for (const t of ts) assert.ok(g.has(t), `src/${f} imports src/${t}, which does not exist`);
    const c = findCycle(g);
    assert.equal(c, null, `import cycle: ${c?.map((x) => `src/${x}`).join(' -> ')}`);
  });

  it('has no runtime import cycle between the top-level folders of src/', () => {
    const c = findCycle(folderGraph(importGraph(src, sourceTree())));
    assert.equal(c, null, `folder cycle: ${c?.join(' -> ')}`);
  });

  it('imports no concrete backend outside src/backend/ (src/index.ts excepted)', () => {
    assert.deepEqual(concreteBackendImports(importGraph(src, sourceTree())), []);
  });
});
