// Attention spans (AttentionOpts.spans, issue 27) for the tests: items (pairs [prompt | real | generated]
// and plain sequences) packed back to back in rows, and random items (test/attention_spans.test.ts,
// test/attention_spans_cpu.test.ts).
import type { Rng } from '../../src/util/rng.js';

/** One packed item: a pair (prompt p, real r, generated g tokens) or a plain sequence (g = 0, r = its answer). */
export interface Item {
  p: number;
  r: number;
  g: number;
}

/** Spans [rows, L, 3] of items packed back to back in each row (items[row]), the rest padding that sees only itself. */
export function packSpans(rows: Item[][], l: number): { spans: Int32Array; mask: Int32Array; starts: number[][] } {
  const spans = new Int32Array(rows.length * l * 3);
  const mask = new Int32Array(rows.length * l);
  const starts: number[][] = [];
  rows.forEach((items, b) => {
    let o = 0;
    const st: number[] = [];
    const set = (i: number, lo: number, hlo: number, hhi: number) => spans.set([lo, hlo, hhi], (b * l + i) * 3);
    for (const { p, r, g } of items) {
      st.push(o);
      for (let i = o; i < o + p + r; i++) set(i, o, o, o);
      for (let i = o + p + r; i < o + p + r + g; i++) set(i, o, o + p, o + p + r);
      for (let i = o; i < o + p + r + g; i++) mask[b * l + i] = 1;
      o += p + r + g;
    }
    if (o > l) throw new Error(`row ${b} holds ${o} tokens > ${l}`);
    for (let i = o; i < l; i++) set(i, i, i, i); // padding: keyMask 0, sees nothing
    starts.push(st);
  });
  return { spans, mask, starts };
}

export function randomItem(rng: Rng, maxLen: number): Item {
  const p = rng.int(1, Math.max(1, Math.floor(maxLen / 2)));
  const r = rng.int(1, Math.max(1, Math.floor(maxLen / 4)));
  const g = rng.next() < 0.25 ? 0 : rng.int(1, Math.max(1, Math.floor(maxLen / 4)));
  return { p, r, g };
}

/**
 * Random valid spans for every query: 0 <= lo <= hideLo <= hideHi <= i, drawn independently; in row 0,
 * queries 32 to 64 + a few see only their last keys (lo >= i - 3): a whole query tile whose queries see
 * no early key, followed by queries that do (lo not increasing: the dk/dv kernel must not stop there).
 */
export function randomSpans(rng: Rng, b: number, l: number): Int32Array {
  const s = new Int32Array(b * l * 3);
  const localEnd = 64 + rng.int(0, 6);
  for (let r = 0; r < b * l; r++) {
    const i = r % l;
    const local = r < l && i >= 32 && i < localEnd;
    const lo = local ? rng.int(Math.max(0, i - 3), i) : rng.next() < 0.3 ? 0 : rng.int(0, i);
    const hlo = rng.int(lo, i);
    const hhi = rng.next() < 0.3 ? hlo : rng.int(hlo, i);
    s.set([lo, hlo, hhi], 3 * r);
  }
  return s;
}
