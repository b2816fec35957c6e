// JSON lines (streamed line by line, so files of any size) and JSON-array files, as raw rows.
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { DataError } from './data_error.js';

/** One row of a file before interpretation: its value, or why it could not be parsed. */
export type RawRow = { where: string; value: unknown } | { where: string; problem: string };

/** Yields one RawRow per non-blank line ("line N", 1-based). A line that is not JSON is a problem row. */
export async function* readJsonlRows(file: string): AsyncGenerator<RawRow> {
  const input = createReadStream(file, { encoding: 'utf8' });
  const lines = createInterface({ input, crlfDelay: Infinity });
  let n = 0;
  try {
    for await (const line of lines) {
      n++;
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
    lines.close();
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
