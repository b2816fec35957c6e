// JSON lines (streamed line by line, so files of any size) and JSON-array files, as raw rows.
import { isUtf8 } from 'node:buffer';
import { createReadStream } from 'node:fs';
import { INPUT_CAPS, InputFileError, readInputBytes } from '../util/input_file.js';
import { DataError } from './data_error.js';

/** One row of a file before interpretation: its value, or why it could not be parsed. */
export type RawRow = { where: string; value: unknown } | { where: string; problem: string };

/** Longest line (row) read, in bytes: a longer one is a problem row, never held in memory whole. */
export const MAX_LINE_BYTES = 16 * 2 ** 20;

/** Deepest nesting of arrays and objects in a row: deeper is a problem row (naming file and line), not a stack overflow later. */
export const MAX_ROW_DEPTH = 64;

/** The nesting depth of a JSON value, walked without recursion; stops counting past `limit`. */
export function jsonDepth(value: unknown, limit = MAX_ROW_DEPTH): number {
  let deepest = 0;
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length > 0) {
    const [v, d] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    deepest = Math.max(deepest, d);
    if (deepest > limit) return deepest;
    for (const child of Array.isArray(v) ? v : Object.values(v))
      if (child !== null && typeof child === 'object') stack.push([child, d + 1]);
  }
  return deepest;
}

/** A parsed row, or its problem when it nests deeper than MAX_ROW_DEPTH. */
function checkedRow(where: string, value: unknown): RawRow {
  if (jsonDepth(value) > MAX_ROW_DEPTH)
    return { where, problem: `the row nests arrays / objects more than ${MAX_ROW_DEPTH} levels deep (a row is a flat record of strings)` };
  return { where, value };
}

/**
 * What to do with invalid UTF-8 in a text data file: by default each file with any gets one warning
 * (rows and bytes, read as U+FFFD); strict refuses the file at its first such line.
 */
export interface Utf8Policy {
  strict?: boolean;
  /** Where the warning goes (default: stderr). */
  warn?: (message: string) => void;
}

/** Bytes of `buf` that are not part of a valid UTF-8 sequence (each becomes U+FFFD when decoded), 0 for valid UTF-8. */
export function invalidUtf8Bytes(buf: Buffer): number {
  if (isUtf8(buf)) return 0;
  const text = buf.toString('utf8');
  let replaced = 0;
  for (let i = text.indexOf('\uFFFD'); i >= 0; i = text.indexOf('\uFFFD', i + 1)) replaced++;
  let genuine = 0; // U+FFFD written in the file itself (EF BF BD)
  for (let i = buf.indexOf('\uFFFD'); i >= 0; i = buf.indexOf('\uFFFD', i + 3)) genuine++;
  // every valid character re-encodes to its own bytes; U+FFFD stands for 3 bytes when re-encoded
  return buf.length - (Buffer.byteLength(text) - 3 * (replaced - genuine));
}

/** Counts a file's invalid UTF-8 rows; refuses at the first with strict; warns once at the end otherwise. */
class Utf8Check {
  rows = 0;
  bytes = 0;
  constructor(
    private readonly file: string,
    private readonly policy: Utf8Policy,
    /** false: the whole file was decoded at once (a JSON array), so rows are not counted. */
    private readonly byRow = true,
  ) {}

  /** The text of one line's bytes. */
  decode(buf: Buffer, where: string): string {
    const bad = invalidUtf8Bytes(buf);
    if (bad > 0) {
      if (this.policy.strict)
        throw new DataError(
          this.file,
          where,
          `${bad} byte(s) of invalid UTF-8 (--strict); fix the file's encoding (e.g. iconv -f latin1 -t utf-8), or drop --strict to read them as U+FFFD`,
        );
      this.rows++;
      this.bytes += bad;
    }
    return buf.toString('utf8');
  }

  report(): void {
    if (this.rows === 0) return;
    const warn = this.policy.warn ?? ((m: string) => process.stderr.write(`${m}\n`));
    warn(
      `spinlm: warning: ${this.file}: ${this.byRow ? `${this.rows} row(s) hold` : 'holds'} ${this.bytes} byte(s) of invalid UTF-8, read as U+FFFD (the replacement character); --strict refuses such a file`,
    );
    this.rows = 0;
  }
}

/** Lines of a stream split on "\n" (a trailing "\r" dropped), as bytes; a line over maxBytes comes as its byte count only. */
async function* splitLines(input: AsyncIterable<Buffer>, maxBytes: number): AsyncGenerator<Buffer | { oversize: number }> {
  let parts: Buffer[] = [];
  let size = 0;
  let oversize = false;
  const end = function* (): Generator<Buffer | { oversize: number }> {
    if (oversize) yield { oversize: size };
    else {
      const line = Buffer.concat(parts);
      yield line.length > 0 && line[line.length - 1] === 13 ? line.subarray(0, -1) : line;
    }
    parts = [];
    size = 0;
    oversize = false;
  };
  for await (const chunk of input) {
    let start = 0;
    for (let nl = chunk.indexOf(10, start); ; nl = chunk.indexOf(10, start)) {
      const piece = chunk.subarray(start, nl < 0 ? chunk.length : nl);
      size += piece.length;
      if (size > maxBytes) oversize = true;
      if (!oversize) parts.push(piece);
      if (nl < 0) break;
      yield* end();
      start = nl + 1;
    }
  }
  if (size > 0 || parts.length > 0) yield* end();
}

/**
 * Yields one RawRow per non-blank line ("line N", 1-based). A line that is not JSON, or longer than
 * maxLineBytes (default MAX_LINE_BYTES), is a problem row.
 */
export async function* readJsonlRows(file: string, maxLineBytes = MAX_LINE_BYTES, utf8: Utf8Policy = {}): AsyncGenerator<RawRow> {
  const input = createReadStream(file);
  const check = new Utf8Check(file, utf8);
  let n = 0;
  try {
    for await (const line of splitLines(input, maxLineBytes)) {
      n++;
      if (!Buffer.isBuffer(line)) {
        const mb = (x: number) => `${(x / 2 ** 20).toFixed(1)} MiB`;
        yield { where: `line ${n}`, problem: `the row is ${mb(line.oversize)}, over the ${mb(maxLineBytes)} limit for one row` };
        continue;
      }
      const decoded = check.decode(line, `line ${n}`);
      const text = n === 1 ? decoded.replace(/^\uFEFF/, '') : decoded;
      if (text.trim() === '') continue;
      let row: RawRow;
      try {
        row = checkedRow(`line ${n}`, JSON.parse(text));
      } catch (err) {
        row = { where: `line ${n}`, problem: `not valid JSON (${(err as Error).message})` };
      }
      yield row;
    }
  } catch (err) {
    if (err instanceof DataError) throw err;
    throw new DataError(file, n > 0 ? `line ${n}` : null, `read failed: ${(err as Error).message}`);
  } finally {
    input.destroy();
    check.report();
  }
}

/** A file holding one JSON array (e.g. the official SPIN's synthetic_train.json); "row index i", 0-based. */
export async function* readJsonArrayRows(file: string, utf8: Utf8Policy = {}): AsyncGenerator<RawRow> {
  let data: unknown;
  let bytes: Buffer;
  try {
    bytes = await readInputBytes(file, INPUT_CAPS.data);
  } catch (err) {
    throw new DataError(file, null, err instanceof InputFileError ? err.reason : `read failed: ${(err as Error).message}`);
  }
  // the file is decoded whole: its invalid UTF-8 is counted for the file (rows are not known yet)
  const check = new Utf8Check(file, utf8, false);
  const text = check.decode(bytes, 'the file');
  check.report();
  try {
    data = JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch (err) {
    throw new DataError(file, null, `not valid JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(data)) throw new DataError(file, null, 'a .json data file must hold one JSON array of row objects');
  for (let i = 0; i < data.length; i++) yield checkedRow(`row index ${i}`, data[i]);
}

/** Serializes rows as JSON lines ("\n" after each), lazily in ~1 MB chunks, so big files stream to disk. */
export function* jsonlLines(rows: Iterable<unknown>, chunkChars = 1 << 20): Generator<string> {
  let chunk = '';
  for (const row of rows) {
    chunk += `${JSON.stringify(row)}\n`;
    if (chunk.length >= chunkChars) {
      yield chunk;
      chunk = '';
    }
  }
  if (chunk !== '') yield chunk;
}
