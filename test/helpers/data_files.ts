// Temp dirs and random text for the data tests.
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Rng } from '../../src/util/rng.js';

/** Runs fn in a fresh directory under os.tmpdir(), removed afterwards. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'spinlm-data-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Names in dir that look like leftover atomic-write temp files. */
export async function tempLeftovers(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((f) => f.includes('.tmp-'));
}

// ASCII, quotes, backslashes, newlines, accents, CJK, emoji (surrogate pairs).
const PIECES = ['a', 'Z', '0', ' ', '"', '\\', '\n', '\t', '{', '}', ',', 'é', 'ß', '中', '文', '😀', '🧪', '\u2028'];

/** Random text of length 1..maxLen pieces with at least one non-space character. */
export function randomText(rng: Rng, maxLen = 40): string {
  let s = '';
  const n = rng.int(1, maxLen);
  for (let i = 0; i < n; i++) s += PIECES[rng.int(0, PIECES.length - 1)];
  return s.trim() === '' ? `${s}x` : s;
}
