// One stream of raw rows from a JSONL, JSON-array or Parquet file.
import { detectFormat, type DataFormat, type FormatOption } from './file_format.js';
import { readJsonArrayRows, readJsonlRows, type RawRow, type Utf8Policy } from './jsonl.js';
import { readParquetRows } from './parquet.js';

/**
 * Rows of `file`. For Parquet, `pickColumns` chooses the columns to decode from the file's column
 * names and throws when required ones are missing; JSON rows carry all their fields. `utf8`: what
 * invalid UTF-8 in a JSON file does (a warning per file by default; strict refuses it).
 */
export async function openRows(
  file: string,
  format: FormatOption,
  pickColumns: (columns: string[]) => string[],
  utf8: Utf8Policy = {},
): Promise<{ format: DataFormat; rows: AsyncGenerator<RawRow> }> {
  const fmt = await detectFormat(file, format);
  const rows =
    fmt === 'parquet'
      ? readParquetRows(file, pickColumns)
      : fmt === 'json'
        ? readJsonArrayRows(file, utf8)
        : readJsonlRows(file, undefined, utf8);
  return { format: fmt, rows };
}

/** Writing: `.parquet` -> parquet, anything else -> JSON lines, unless a format is given. */
export function writeFormat(file: string, format?: 'jsonl' | 'parquet'): 'jsonl' | 'parquet' {
  if (format !== undefined) {
    if (format !== 'jsonl' && format !== 'parquet')
      throw new Error(`${file}: unknown write format '${format}' (expected 'jsonl' or 'parquet')`);
    return format;
  }
  return file.toLowerCase().endsWith('.parquet') ? 'parquet' : 'jsonl';
}
