// SPIN pair files. Two row layouts are read; a file uses one of them (its first row decides):
//
// - messages, the official layout (spin/generate.py writes one JSON object per line):
//     {"real": [{"role":"user","content":p}, {"role":"assistant","content":y}],
//      "generated": [{"role":"user","content":p}, {"role":"assistant","content":y'}]}
//   ours add "prompt": p; the older official key names "chosen" / "rejected" stand for real / generated.
// - strings: {"prompt": p, "real": y, "generated": y'} (chosen / rejected accepted here too).
//
// Parquet files use the same columns (list<struct<content, role>> or plain strings). The writer
// always writes the official layout plus "prompt".
import { writeFileAtomic } from '../util/atomic.js';
import { DataError, preview, RowProblem } from './data_error.js';
import type { FormatOption } from './file_format.js';
import { jsonlLines } from './jsonl.js';
import { chatRound, contextOf, parseMessages, type ChatMessage, type Rounds, sameContext } from './messages.js';
import { chatListSchema, encodeParquet, stringColumnSchema, type ParquetCodec } from './parquet.js';
import { openRows, writeFormat } from './row_source.js';

export interface SpinPair {
  prompt: string; // the user turn the answers reply to
  real: string; // the SFT (human) answer
  generated: string; // the opponent model's answer; may be empty
  /** Every turn before the answers (system turns, earlier rounds), when that is more than the user turn `prompt`. */
  messages?: ChatMessage[];
}

export interface SpinPairRow {
  real: ChatMessage[];
  generated: ChatMessage[];
  prompt?: string;
}

/** 'messages': real / generated are [user, assistant] lists; 'strings': prompt / real / generated are strings. */
export type SpinPairLayout = 'messages' | 'strings';

const LAYOUT_NAMES: Record<SpinPairLayout, string> = {
  messages: 'official message lists ("real"/"generated" = [{role, content}, ...])',
  strings: 'plain strings ({prompt, real, generated})',
};

/** The official row: the turns before the answer, then the real (generated) answer as the assistant turn. */
export function spinPairToRow(p: SpinPair): Required<SpinPairRow> {
  const context = contextOf(p);
  return {
    real: [...context, { role: 'assistant', content: p.real }],
    generated: [...contextOf(p), { role: 'assistant', content: p.generated }],
    prompt: p.prompt,
  };
}

function pairKeys(r: Record<string, unknown>): { realKey: string; genKey: string } {
  const realKey = r.real !== undefined ? 'real' : r.chosen !== undefined ? 'chosen' : null;
  const genKey = r.generated !== undefined ? 'generated' : r.rejected !== undefined ? 'rejected' : null;
  if (realKey === null || genKey === null) {
    throw new RowProblem(
      `a SPIN pair row needs "real" and "generated" (message lists, or strings with "prompt") (keys: ${Object.keys(r).join(', ') || 'none'})`,
    );
  }
  return { realKey, genKey };
}

/** The layout of one row, from the type of its real answer; null when it is neither (the parse then says why). */
export function spinPairLayout(row: unknown): SpinPairLayout | null {
  if (row === null || typeof row !== 'object' || Array.isArray(row)) return null;
  const r = row as Record<string, unknown>;
  const real = r.real !== undefined ? r.real : r.chosen;
  return Array.isArray(real) ? 'messages' : typeof real === 'string' ? 'strings' : null;
}

function stringsPair(r: Record<string, unknown>, realKey: string, genKey: string): SpinPair {
  const text = (key: string, allowEmpty: boolean): string => {
    const v = r[key];
    if (typeof v !== 'string') throw new RowProblem(`"${key}" must be a string in a {prompt, real, generated} row, got ${preview(v)}`);
    if (!allowEmpty && v.trim() === '') throw new RowProblem(`"${key}" is empty`);
    return v;
  };
  return { prompt: text('prompt', false), real: text(realKey, false), generated: text(genKey, true) };
}

/**
 * One row (either layout) -> a pair; throws a RowProblem saying what is wrong. Message lists are split
 * by `rounds` (messages.ts chatRound); real and generated must agree on every turn before the answer.
 */
export function spinPairFromRow(row: unknown, rounds: Rounds = 'first'): SpinPair {
  if (row === null || typeof row !== 'object' || Array.isArray(row)) throw new RowProblem(`row must be a JSON object, got ${preview(row)}`);
  const r = row as Record<string, unknown>;
  const { realKey, genKey } = pairKeys(r);
  if (typeof r[realKey] === 'string') return stringsPair(r, realKey, genKey);
  const realMessages = parseMessages(r[realKey], realKey);
  const real = chatRound(realMessages, realKey, rounds);
  const gen = chatRound(parseMessages(r[genKey], genKey), genKey, rounds, true);
  if (gen.prompt !== real.prompt) {
    throw new RowProblem(
      `"${genKey}" and "${realKey}" have different user prompts (${preview(gen.prompt, 40)} vs ${preview(real.prompt, 40)})`,
    );
  }
  if (!sameContext(contextOf(real), contextOf(gen))) {
    throw new RowProblem(`"${genKey}" and "${realKey}" differ before the answer (every turn before it must be the same)`);
  }
  if (r.prompt !== undefined && r.prompt !== null) {
    if (typeof r.prompt !== 'string') throw new RowProblem(`"prompt" must be a string, got ${preview(r.prompt)}`);
    // ours write the user turn the answer replies to; a file may name the conversation's first user turn
    const first = realMessages.find((m) => m.role === 'user')?.content;
    if (r.prompt !== real.prompt && r.prompt !== first) throw new RowProblem(`"prompt" differs from the user turn of "${realKey}"`);
  }
  const pair: SpinPair = { prompt: real.prompt, real: real.real, generated: gen.real };
  if (real.messages) pair.messages = real.messages;
  return pair;
}

function spinColumns(columns: string[]): string[] {
  const realKey = columns.includes('real') ? 'real' : columns.includes('chosen') ? 'chosen' : null;
  const genKey = columns.includes('generated') ? 'generated' : columns.includes('rejected') ? 'rejected' : null;
  if (realKey === null || genKey === null) {
    throw new Error(`missing columns: a SPIN pair file needs "real" and "generated"; the file has ${columns.join(', ') || '(none)'}`);
  }
  return [realKey, genKey, ...(columns.includes('prompt') ? ['prompt'] : [])];
}

/**
 * All pairs of a SPIN pair file (JSON lines, JSON array or Parquet), in either layout; the first
 * row decides the file's layout and a row in the other layout is an error. The first malformed row throws.
 */
export async function readSpinPairs(
  path: string,
  opts: { format?: FormatOption; rounds?: Rounds; strictUtf8?: boolean } = {},
): Promise<SpinPair[]> {
  const { rows } = await openRows(path, opts.format ?? 'auto', spinColumns, { strict: opts.strictUtf8 });
  const pairs: SpinPair[] = [];
  let layout: { kind: SpinPairLayout; where: string } | null = null;
  for await (const raw of rows) {
    try {
      if ('problem' in raw) throw new RowProblem(raw.problem);
      const pair = spinPairFromRow(raw.value, opts.rounds);
      const kind = spinPairLayout(raw.value)!;
      if (layout === null) layout = { kind, where: raw.where };
      else if (kind !== layout.kind) {
        throw new RowProblem(
          `this row uses ${LAYOUT_NAMES[kind]} but the file's first row (${layout.where}) uses ${LAYOUT_NAMES[layout.kind]}; use one layout per file`,
        );
      }
      pairs.push(pair);
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
        return spinPairToRow(spinPairFromRow(item, 'last'));
      } catch (err) {
        if (err instanceof RowProblem) throw new TypeError(`${path}: pair ${i}: ${err.message}`, { cause: err });
        throw err;
      }
    }
    const p = item as SpinPair;
    for (const k of ['prompt', 'real', 'generated'] as const) {
      if (typeof p?.[k] !== 'string') throw new TypeError(`${path}: pair ${i}: "${k}" must be a string, got ${preview(p?.[k])}`);
    }
    if (p.messages !== undefined) {
      try {
        parseMessages(p.messages, 'messages');
      } catch (err) {
        if (err instanceof RowProblem) throw new TypeError(`${path}: pair ${i}: ${err.message}`, { cause: err });
        throw err;
      }
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
  await writeFileAtomic(
    path,
    encodeParquet(columns, [chatListSchema('real'), chatListSchema('generated'), stringColumnSchema('prompt')], opts),
  );
}
