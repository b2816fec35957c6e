// SFT data in: rows of several common layouts -> first-round (prompt, real answer) pairs.
import { writeFileAtomic } from '../util/atomic.js';
import type { Seed } from '../util/rng.js';
import { DataError, preview, RowProblem } from './data_error.js';
import type { FormatOption } from './file_format.js';
import { jsonlLines } from './jsonl.js';
import { chatRound, parseMessages, type ChatMessage, type Rounds } from './messages.js';
import { chatListSchema, encodeParquet, stringColumnSchema, type ParquetCodec } from './parquet.js';
import { openRows, writeFormat } from './row_source.js';
import { Reservoir } from './sample.js';

export interface SftPair {
  prompt: string; // the user turn the answer replies to (the first one with rounds 'first')
  real: string; // the assistant reply (the human / SFT answer)
  task?: string; // family label, when the row has a string "task" (synthetic data)
  /** Every turn before the answer (system turns, earlier rounds), when that is more than the user turn `prompt`. */
  messages?: ChatMessage[];
}

const LAYOUTS =
  'messages (UltraChat), real (SPIN pair: messages, or a string with prompt), prompt+completion, prompt+response or instruction+output';

/**
 * One row -> a pair. Layouts, first match wins: `messages` [{role, content}] (the round `rounds` picks: messages.ts chatRound),
 * `real` (a SPIN pair row's [user, assistant], or a string beside a string `prompt`), `prompt` + `completion` | `response`,
 * `instruction` + `output` (a non-empty `input` is appended to the instruction after a blank line).
 */
export function sftPairFromRow(row: unknown, rounds: Rounds = 'first'): SftPair {
  if (row === null || typeof row !== 'object' || Array.isArray(row)) throw new RowProblem(`row must be a JSON object, got ${preview(row)}`);
  const r = row as Record<string, unknown>;
  let pair: SftPair;
  if (r.messages !== undefined) pair = chatRound(parseMessages(r.messages, 'messages'), 'messages', rounds);
  else if (typeof r.real === 'string') pair = { prompt: textField(r, 'prompt'), real: textField(r, 'real') };
  else if (r.real !== undefined) pair = chatRound(parseMessages(r.real, 'real'), 'real', rounds);
  else if (r.prompt !== undefined && (r.completion !== undefined || r.response !== undefined)) {
    const key = r.completion !== undefined ? 'completion' : 'response';
    pair = { prompt: textField(r, 'prompt'), real: textField(r, key) };
  } else if (r.instruction !== undefined && r.output !== undefined) {
    let prompt = textField(r, 'instruction');
    if (r.input !== undefined && r.input !== null) {
      if (typeof r.input !== 'string') throw new RowProblem(`"input" must be a string, got ${preview(r.input)}`);
      if (r.input.trim() !== '') prompt = `${prompt}\n\n${r.input}`;
    }
    pair = { prompt, real: textField(r, 'output') };
  } else {
    throw new RowProblem(`row has none of the layouts ${LAYOUTS} (keys: ${Object.keys(r).join(', ') || 'none'})`);
  }
  if (r.task !== undefined && r.task !== null) {
    if (typeof r.task !== 'string') throw new RowProblem(`"task" must be a string, got ${preview(r.task)}`);
    pair.task = r.task;
  }
  return pair;
}

function textField(r: Record<string, unknown>, key: string): string {
  const v = r[key];
  if (typeof v !== 'string') throw new RowProblem(`"${key}" must be a string, got ${preview(v)}`);
  if (v.trim() === '') throw new RowProblem(`"${key}" is empty`);
  return v;
}

/** Parquet columns needed for the layouts above; throws when none is present. */
export function sftColumns(columns: string[]): string[] {
  const has = (c: string) => columns.includes(c);
  const extra = has('task') ? ['task'] : [];
  if (has('messages')) return ['messages', ...extra];
  if (has('real')) return ['real', ...(has('prompt') ? ['prompt'] : []), ...extra];
  if (has('prompt') && has('completion')) return ['prompt', 'completion', ...extra];
  if (has('prompt') && has('response')) return ['prompt', 'response', ...extra];
  if (has('instruction') && has('output')) return ['instruction', 'output', ...(has('input') ? ['input'] : []), ...extra];
  throw new Error(`missing columns: expected ${LAYOUTS}; the file has columns ${columns.join(', ') || '(none)'}`);
}

export interface LoadSftOptions {
  format?: FormatOption; // default 'auto'
  /** Keep n pairs: with a seed, a uniform random sample (shuffled); without, the first n valid rows. */
  n?: number;
  /** Sampling / shuffling seed. With no n, all pairs are returned shuffled. */
  seed?: Seed;
  /** Skip malformed rows (counted in `skipped`) instead of throwing on the first one. */
  skipInvalid?: boolean;
  /** Which round of a conversation is the answer (messages.ts chatRound; default 'first', the official SPIN). */
  rounds?: Rounds;
  /** A further check of each pair (e.g. its length in tokens): a message makes the row invalid, named by file and row. */
  check?: (pair: SftPair) => string | null;
  /** Refuse a file with invalid UTF-8 (default: warn once per file and read it as U+FFFD). */
  strictUtf8?: boolean;
}

export interface LoadSftResult {
  pairs: SftPair[];
  skipped: number; // malformed rows passed over (skipInvalid); with n and no seed, only those read before stopping
  problems: string[]; // the first few skipped rows' errors, "file: line N: problem"
}

const MAX_PROBLEMS = 5;

export async function loadSftPairs(path: string, opts: LoadSftOptions = {}): Promise<LoadSftResult> {
  const { n, seed, skipInvalid = false } = opts;
  if (n !== undefined && !(Number.isSafeInteger(n) && n >= 1)) throw new RangeError(`n must be a positive integer, got ${n}`);
  const { rows } = await openRows(path, opts.format ?? 'auto', sftColumns, { strict: opts.strictUtf8 });
  const reservoir = seed !== undefined ? new Reservoir<SftPair>(n ?? Number.MAX_SAFE_INTEGER, seed) : null;
  const kept: SftPair[] = [];
  const problems: string[] = [];
  let skipped = 0;
  let total = 0;
  for await (const raw of rows) {
    total++;
    let pair: SftPair;
    try {
      if ('problem' in raw) throw new RowProblem(raw.problem);
      pair = sftPairFromRow(raw.value, opts.rounds);
      const problem = opts.check?.(pair);
      if (problem) throw new RowProblem(problem);
    } catch (err) {
      if (!(err instanceof RowProblem)) throw err;
      const e = new DataError(path, raw.where, err.message);
      if (!skipInvalid) throw e;
      skipped++;
      if (problems.length < MAX_PROBLEMS) problems.push(e.message);
      continue;
    }
    if (reservoir) reservoir.add(pair);
    else {
      kept.push(pair);
      if (n !== undefined && kept.length === n) break;
    }
  }
  const valid = reservoir ? reservoir.count : kept.length;
  if (total === 0) throw new DataError(path, null, 'file has no rows');
  if (valid === 0) throw new DataError(path, null, `no valid rows (${skipped} skipped; first: ${problems[0] ?? 'none'})`);
  if (n !== undefined && valid < n) throw new DataError(path, null, `asked for n=${n} pairs but the file has only ${valid} valid rows`);
  return { pairs: reservoir ? reservoir.result() : kept, skipped, problems };
}

// ---- writing UltraChat-layout rows (synthetic data, fixtures) ----

export interface ChatRow {
  prompt: string;
  messages: ChatMessage[];
  task?: string;
}

/** Writes rows as JSON lines or Parquet (by extension or `format`), atomically. */
export async function writeChatRows(
  path: string,
  rows: readonly ChatRow[],
  opts: { format?: 'jsonl' | 'parquet'; codec?: ParquetCodec; rowGroupSize?: number } = {},
): Promise<void> {
  if (rows.length === 0) throw new Error(`${path}: no rows to write`);
  if (writeFormat(path, opts.format) === 'jsonl') {
    await writeFileAtomic(path, jsonlLines(rows));
    return;
  }
  const withTask = rows.some((r) => r.task !== undefined);
  const columns = [
    { name: 'prompt', data: rows.map((r) => r.prompt) },
    { name: 'messages', data: rows.map((r) => r.messages) },
    ...(withTask ? [{ name: 'task', data: rows.map((r) => r.task ?? null) }] : []),
  ];
  const schemas = [stringColumnSchema('prompt'), chatListSchema('messages'), ...(withTask ? [stringColumnSchema('task')] : [])];
  await writeFileAtomic(path, encodeParquet(columns, schemas, opts));
}
