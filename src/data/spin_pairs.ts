// SPIN pair files, in the official layout (spin/generate.py writes one JSON object per line):
//   {"real": [{"role":"user","content":p}, {"role":"assistant","content":y}],
//    "generated": [{"role":"user","content":p}, {"role":"assistant","content":y'}]}
// Ours add "prompt": p. Readers take rows with or without it, and the older official key names
// "chosen" / "rejected" for real / generated. Parquet files use the same columns (list<struct>).
import { writeFileAtomic } from '../util/atomic.js';
import { DataError, preview, RowProblem } from './data_error.js';
import type { FormatOption } from './file_format.js';
import { jsonlLines } from './jsonl.js';
import { firstRound, parseMessages, roundMessages, type ChatMessage } from './messages.js';
import { chatListSchema, encodeParquet, stringColumnSchema, type ParquetCodec } from './parquet.js';
import { openRows, writeFormat } from './row_source.js';

export interface SpinPair {
  prompt: string;
  real: string; // the SFT (human) answer
  generated: string; // the opponent model's answer; may be empty
}

export interface SpinPairRow {
  real: ChatMessage[];
  generated: ChatMessage[];
  prompt?: string;
}

export function spinPairToRow(p: SpinPair): Required<SpinPairRow> {
  return { real: roundMessages(p.prompt, p.real), generated: roundMessages(p.prompt, p.generated), prompt: p.prompt };
}

export function spinPairFromRow(row: unknown): SpinPair {
  if (row === null || typeof row !== 'object' || Array.isArray(row)) throw new RowProblem(`row must be a JSON object, got ${preview(row)}`);
  const r = row as Record<string, unknown>;
  const realKey = r.real !== undefined ? 'real' : r.chosen !== undefined ? 'chosen' : null;
  const genKey = r.generated !== undefined ? 'generated' : r.rejected !== undefined ? 'rejected' : null;
  if (realKey === null || genKey === null) {
    throw new RowProblem(`a SPIN pair row needs "real" and "generated" message lists (keys: ${Object.keys(r).join(', ') || 'none'})`);
  }
  const real = firstRound(parseMessages(r[realKey], realKey), realKey);
  const gen = firstRound(parseMessages(r[genKey], genKey), genKey, true);
  if (gen.prompt !== real.prompt) {
    throw new RowProblem(`"${genKey}" and "${realKey}" have different user prompts (${preview(gen.prompt, 40)} vs ${preview(real.prompt, 40)})`);
  }
  if (r.prompt !== undefined && r.prompt !== null) {
    if (typeof r.prompt !== 'string') throw new RowProblem(`"prompt" must be a string, got ${preview(r.prompt)}`);
    if (r.prompt !== real.prompt) throw new RowProblem(`"prompt" differs from the user turn of "${realKey}"`);
  }
  return { prompt: real.prompt, real: real.real, generated: gen.real };
}

function spinColumns(columns: string[]): string[] {
  const realKey = columns.includes('real') ? 'real' : columns.includes('chosen') ? 'chosen' : null;
  const genKey = columns.includes('generated') ? 'generated' : columns.includes('rejected') ? 'rejected' : null;
  if (realKey === null || genKey === null) {
    throw new Error(`missing columns: a SPIN pair file needs "real" and "generated"; the file has ${columns.join(', ') || '(none)'}`);
  }
  return [realKey, genKey, ...(columns.includes('prompt') ? ['prompt'] : [])];
}

/** All pairs of a SPIN pair file (JSON lines, JSON array or Parquet); the first malformed row throws. */
export async function readSpinPairs(path: string, opts: { format?: FormatOption } = {}): Promise<SpinPair[]> {
  const { rows } = await openRows(path, opts.format ?? 'auto', spinColumns);
  const pairs: SpinPair[] = [];
  for await (const raw of rows) {
    try {
      if ('problem' in raw) throw new RowProblem(raw.problem);
      pairs.push(spinPairFromRow(raw.value));
    } catch (err) {
      if (err instanceof RowProblem) throw new DataError(path, raw.where, err.message);
      throw err;
    }
  }
  if (pairs.length === 0) throw new DataError(path, null, 'file has no rows');
  return pairs;
}

/**
 * Writes pairs in the official layout plus "prompt": JSON lines, or Parquet for `.parquet` / format.
 * Items are SpinPair strings or official rows (checked like rows read from a file).
 */
export async function writeSpinPairs(
  path: string,
  items: readonly (SpinPair | SpinPairRow)[],
  opts: { format?: 'jsonl' | 'parquet'; codec?: ParquetCodec; rowGroupSize?: number } = {},
): Promise<void> {
  if (items.length === 0) throw new Error(`${path}: no SPIN pairs to write`);
  const rows = items.map((item, i) => {
    if (item !== null && typeof item === 'object' && Array.isArray((item as SpinPairRow).real)) {
      try {
        return spinPairToRow(spinPairFromRow(item));
      } catch (err) {
        if (err instanceof RowProblem) throw new TypeError(`${path}: pair ${i}: ${err.message}`);
        throw err;
      }
    }
    const p = item as SpinPair;
    for (const k of ['prompt', 'real', 'generated'] as const) {
      if (typeof p?.[k] !== 'string') throw new TypeError(`${path}: pair ${i}: "${k}" must be a string, got ${preview(p?.[k])}`);
    }
    return spinPairToRow(p);
  });
  if (writeFormat(path, opts.format) === 'jsonl') {
    await writeFileAtomic(path, jsonlLines(rows));
    return;
  }
  const columns = [
    { name: 'real', data: rows.map((r) => r.real) },
    { name: 'generated', data: rows.map((r) => r.generated) },
    { name: 'prompt', data: rows.map((r) => r.prompt) },
  ];
  await writeFileAtomic(path, encodeParquet(columns, [chatListSchema('real'), chatListSchema('generated'), stringColumnSchema('prompt')], opts));
}
