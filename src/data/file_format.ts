// Which reader a data file needs: by extension, else by its first bytes.
import { open, stat } from 'node:fs/promises';
import { extname } from 'node:path';
import { DataError } from './data_error.js';

/** jsonl: one JSON object per line. json: one JSON array of objects. parquet: Apache Parquet. */
export type DataFormat = 'jsonl' | 'json' | 'parquet';
export type FormatOption = 'auto' | DataFormat;

const FORMATS: readonly FormatOption[] = ['auto', 'jsonl', 'json', 'parquet'];

/** Throws a DataError unless `file` is a regular, non-empty file. Returns its size in bytes. */
export async function expectDataFile(file: string): Promise<number> {
  let size: number;
  try {
    const st = await stat(file);
    if (!st.isFile()) throw new DataError(file, null, 'is not a regular file');
    size = st.size;
  } catch (err) {
    if (err instanceof DataError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new DataError(file, null, code === 'ENOENT' ? 'no such file' : `cannot read: ${(err as Error).message}`);
  }
  if (size === 0) throw new DataError(file, null, 'file is empty');
  return size;
}

async function firstBytes(file: string, n: number): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(n);
    const { bytesRead } = await fh.read(buf, 0, n, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/**
 * auto: `.parquet` -> parquet, `.jsonl`/`.ndjson` -> jsonl; otherwise (and for `.json`) the content
 * decides: "PAR1" magic -> parquet, first non-blank character `[` -> json array, `{` -> jsonl.
 */
export async function detectFormat(file: string, requested: FormatOption = 'auto'): Promise<DataFormat> {
  if (!FORMATS.includes(requested))
    throw new DataError(file, null, `unknown format '${requested}' (expected one of ${FORMATS.join(', ')})`);
  await expectDataFile(file);
  if (requested !== 'auto') return requested;
  const ext = extname(file).toLowerCase();
  if (ext === '.parquet') return 'parquet';
  if (ext === '.jsonl' || ext === '.ndjson') return 'jsonl';
  const head = await firstBytes(file, 4096);
  if (head.subarray(0, 4).toString('latin1') === 'PAR1') return 'parquet';
  const text = head
    .toString('utf8')
    .replace(/^\uFEFF/, '')
    .trimStart();
  if (text.startsWith('[')) return 'json';
  if (text.startsWith('{')) return 'jsonl';
  if (text === '' && head.length < 4096) throw new DataError(file, null, 'file is empty (only whitespace)');
  throw new DataError(
    file,
    null,
    `cannot tell the format (not Parquet, and text starting with ${JSON.stringify(text.slice(0, 12))} is neither a JSON array nor JSON lines); pass format 'jsonl', 'json' or 'parquet'`,
  );
}
