// JSON lines (streamed line by line, so files of any size) and JSON-array files, as raw rows.
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { DataError } from './data_error.js';

/** One row of a file before interpretation: its value, or why it could not be parsed. */
export type RawRow = { where: string; value: unknown } | { where: string; problem: string };

/** Longest line (row) read, in bytes: a longer one is a problem row, never held in memory whole. */
export const MAX_LINE_BYTES = 16 * 2 ** 20;

/** Lines of a stream split on "\n" (a trailing "\r" dropped); a line over maxBytes comes as its byte count only. */
async function* splitLines(input: AsyncIterable<Buffer>, maxBytes: number): AsyncGenerator<string | { oversize: number }> {
  let parts: Buffer[] = [];
  let size = 0;
  let oversize = false;
  const end = function* (): Generator<string | { oversize: number }> {
    if (oversize) yield { oversize: size };
    else {
      const text = Buffer.concat(parts).toString('utf8');
      yield text.endsWith('\r') ? text.slice(0, -1) : text;
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
export async function* readJsonlRows(file: string, maxLineBytes = MAX_LINE_BYTES): AsyncGenerator<RawRow> {
  const input = createReadStream(file);
  let n = 0;
  try {
    for await (const line of splitLines(input, maxLineBytes)) {
      n++;
      if (typeof line !== 'string') {
        const mb = (x: number) => `${(x / 2 ** 20).toFixed(1)} MiB`;
        yield { where: `line ${n}`, problem: `the row is ${mb(line.oversize)}, over the ${mb(maxLineBytes)} limit for one row` };
        continue;
      }
      const text = n === 1 ? line.replace(/^\uFEFF/, '') : line;
      if (text.trim() === '') continue;
      let row: RawRow;
      try {
        row = { where: `line ${n}`, value: JSON.parse(text) };
      } catch (err) {
        row = { where: `line ${n}`, problem: `not valid JSON (${(err as Error).message})` };
      }
      yield row;
    }
  } catch (err) {
    throw new DataError(file, n > 0 ? `line ${n}` : null, `read failed: ${(err as Error).message}`);
  } finally {
    input.destroy();
  }
}

/** A file holding one JSON array (e.g. the official SPIN's synthetic_train.json); "row index i", 0-based. */
export async function* readJsonArrayRows(file: string): AsyncGenerator<RawRow> {
  let data: unknown;
  try {
    data = JSON.parse((await readFile(file, 'utf8')).replace(/^\uFEFF/, ''));
  } catch (err) {
    throw new DataError(file, null, `not valid JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(data)) throw new DataError(file, null, 'a .json data file must hold one JSON array of row objects');
  for (let i = 0; i < data.length; i++) yield { where: `row index ${i}`, value: data[i] };
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
