// The repository stands alone: code and docs cite only files that are in it (docs/*.md), never design
// notes kept outside the repository.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { test } from 'node:test';

const ROOT = new URL('..', import.meta.url).pathname;
const SCAN = ['src', 'native', 'test', 'docs', 'bench', 'scripts', 'README.md', 'CMakeLists.txt', 'binding.gyp', 'package.json'];
const TEXT = /\.(ts|js|mjs|cc|h|py|md|json|gyp|txt|sh)$/;

function files(path: string): string[] {
  const full = join(ROOT, path);
  if (!existsSync(full)) return [];
  if (statSync(full).isFile()) return [full];
  return readdirSync(full).flatMap((f) => (f === 'node_modules' ? [] : files(join(path, f))));
}

test('no citation of notes outside the repository; every cited docs/ file exists', () => {
  // spelled in pieces so that this file does not match itself
  const outside = new RegExp(['DESIGN', 'TOOLCHAIN'].map((n) => `\\b${n}\\.md`).join('|') + '|\\.\\./shared/');
  const bad: string[] = [];
  const missing: string[] = [];
  let scanned = 0;
  for (const file of SCAN.flatMap(files).filter((f) => TEXT.test(f))) {
    scanned++;
    const text = readFileSync(file, 'utf8');
    text.split('\n').forEach((line, i) => {
      if (outside.test(line)) bad.push(`${relative(ROOT, file)}:${i + 1}: ${line.trim()}`);
      for (const m of line.matchAll(/\bdocs\/([a-z_]+\.md)/g))
        if (!existsSync(join(ROOT, 'docs', m[1]))) missing.push(`${relative(ROOT, file)}:${i + 1}: docs/${m[1]}`);
    });
  }
  assert.ok(scanned > 50, `scanned ${scanned} files`);
  assert.deepEqual(bad, [], 'cite docs/ instead');
  assert.deepEqual(missing, [], 'cited docs files that do not exist');
});
