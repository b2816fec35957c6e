// Parquet in (hyparquet; snappy, gzip, zstd, brotli, lz4 through hyparquet-compressors) and out
// (hyparquet-writer). Rows are read one row group at a time, so memory follows the row group size.
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects, parquetSchema } from 'hyparquet';
import type { AsyncBuffer, FileMetaData, SchemaElement } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { parquetWriteBuffer } from 'hyparquet-writer';
import { gzipSync } from 'node:zlib';
import { DataError } from './data_error.js';
import type { RawRow } from './jsonl.js';

async function openParquet(file: string): Promise<{ buffer: AsyncBuffer; metadata: FileMetaData }> {
  let buffer: AsyncBuffer;
  try {
    buffer = await asyncBufferFromFile(file);
  } catch (err) {
    throw new DataError(file, null, `cannot read: ${(err as Error).message}`);
  }
  if (buffer.byteLength < 12) throw new DataError(file, null, `too short to be a Parquet file (${buffer.byteLength} bytes)`);
  try {
    return { buffer, metadata: await parquetMetadataAsync(buffer) };
  } catch (err) {
    throw new DataError(file, null, `not a readable Parquet file (${(err as Error).message})`);
  }
}

/**
 * Yields each row as an object of the columns `pick` chooses from the file's top-level column names
 * ("row index i", 0-based). `pick` throws (a string problem) when required columns are missing.
 */
export async function* readParquetRows(file: string, pick: (columns: string[]) => string[]): AsyncGenerator<RawRow> {
  const { buffer, metadata } = await openParquet(file);
  const names = parquetSchema(metadata).children.map((c) => c.element.name);
  let columns: string[];
  try {
    columns = pick(names);
  } catch (err) {
    throw new DataError(file, null, (err as Error).message);
  }
  if (Number(metadata.num_rows) === 0) throw new DataError(file, null, 'file has no rows');
  let start = 0;
  for (const group of metadata.row_groups) {
    const end = start + Number(group.num_rows);
    let rows: Record<string, unknown>[];
    try {
      rows = await parquetReadObjects({ file: buffer, metadata, columns, rowStart: start, rowEnd: end, compressors });
    } catch (err) {
      throw new DataError(file, `row indexes ${start}..${end - 1}`, `cannot decode row group (${(err as Error).message})`);
    }
    for (let i = 0; i < rows.length; i++) yield { where: `row index ${start + i}`, value: rows[i] };
    start = end;
  }
}

// ---- writing ----

export type ParquetCodec = 'SNAPPY' | 'GZIP' | 'UNCOMPRESSED';

export interface ParquetColumn {
  name: string;
  data: unknown[];
}

/** An optional UTF-8 string column. */
export function stringColumnSchema(name: string): SchemaElement[] {
  return [{ name, type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: 'OPTIONAL' }];
}

/**
 * list<struct<content: string, role: string>>, the 3-level LIST layout pyarrow writes for
 * UltraChat's `messages` and the official SPIN pair files' `real` / `generated`.
 */
export function chatListSchema(name: string): SchemaElement[] {
  return [
    { name, repetition_type: 'OPTIONAL', converted_type: 'LIST', num_children: 1 },
    { name: 'list', repetition_type: 'REPEATED', num_children: 1 },
    { name: 'element', repetition_type: 'OPTIONAL', num_children: 2 },
    ...stringColumnSchema('content'),
    ...stringColumnSchema('role'),
  ];
}

/**
 * Encodes columns (each `data` one value per row) under an explicit schema: the root followed by
 * each column's elements in `columnSchemas`. Snappy by default.
 */
export function encodeParquet(
  columns: ParquetColumn[],
  columnSchemas: SchemaElement[][],
  opts: { codec?: ParquetCodec; rowGroupSize?: number } = {},
): Uint8Array {
  const schema: SchemaElement[] = [{ name: 'root', num_children: columns.length }, ...columnSchemas.flat()];
  const buffer = parquetWriteBuffer({
    columnData: columns.map((c) => ({ name: c.name, data: c.data as never })),
    schema,
    codec: opts.codec ?? 'SNAPPY',
    compressors: { GZIP: (input: Uint8Array) => new Uint8Array(gzipSync(input)) },
    rowGroupSize: opts.rowGroupSize ?? 10000,
    statistics: false,
  });
  return new Uint8Array(buffer);
}
