// Reading a small input file named by a flag (--config, --init_config, a model's config.json, a
// tokenizer's JSON, a sweep config, a JSON-array data file): it must be a regular file (after
// symlinks), and no more than a cap is ever read. A FIFO, /dev/zero, /dev/stdin or a directory is
// refused at once in one line (never read: /dev/zero would fill memory), and so is a file over the
// cap, however it reports its size (/proc files say 0): the read stops one byte past the cap.
import { closeSync, constants, fstatSync, openSync, readSync, statSync, type Stats } from 'node:fs';
import { open } from 'node:fs/promises';

/** Caps, in bytes, by what the file is (docs/reliability.md, "Limits on input size"). */
export const INPUT_CAPS = {
  /** --config, a sweep config, --init_config, a model's config.json. */
  config: 16 * 2 ** 20,
  /** tokenizer.json and its companions (the largest real ones are ~35 MB), a safetensors index. */
  json: 256 * 2 ** 20,
  /** A JSON-array data file, read whole (V8 strings stop at ~512 M characters). */
  data: 512 * 2 ** 20,
} as const;

/** Why an input file was refused (its message is the reason, without the file name). */
export class InputFileError extends Error {
  override name = 'InputFileError';
  constructor(
    readonly file: string,
    readonly reason: string,
    readonly code?: string,
  ) {
    super(reason);
  }
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(n < 2 ** 20 ? 2 : 0)} MiB`;

function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/**
 * Why an existing input path cannot be read as a file or a model directory (a FIFO, a device, a
 * socket), or null (a regular file, a directory, or nothing there: the reader names a missing one).
 */
export function unreadableKind(path: string): string | null {
  let st: Stats;
  try {
    st = statSync(path);
  } catch {
    return null;
  }
  return st.isFile() || st.isDirectory() ? null : `is ${kindOf(st)}, not a regular file`;
}

function checkStat(file: string, st: Stats, maxBytes: number): void {
  if (!st.isFile()) throw new InputFileError(file, `is ${kindOf(st)}, not a regular file`);
  if (st.size > maxBytes) throw new InputFileError(file, `is ${mib(st.size)}, over the ${mib(maxBytes)} limit for this file`);
}

const tooLong = (file: string, maxBytes: number) => new InputFileError(file, `holds more than the ${mib(maxBytes)} limit for this file`);

function wrapOpen(file: string, err: unknown): InputFileError {
  if (err instanceof InputFileError) return err;
  const code = (err as NodeJS.ErrnoException).code;
  return new InputFileError(file, code === 'ENOENT' ? 'no such file' : `cannot read it (${code ?? (err as Error).message})`, code);
}

// O_NONBLOCK: opening a FIFO with no writer returns at once (then fstat refuses it) instead of waiting
const FLAGS = constants.O_RDONLY | (constants.O_NONBLOCK ?? 0);

/** The text (UTF-8) of a regular file of at most maxBytes; an InputFileError otherwise. */
export function readInputFileSync(file: string, maxBytes: number): string {
  return readInputBytesSync(file, maxBytes).toString('utf8');
}

/** The bytes of a regular file of at most maxBytes; an InputFileError otherwise. */
export function readInputBytesSync(file: string, maxBytes: number): Buffer {
  let fd: number;
  try {
    fd = openSync(file, FLAGS);
  } catch (err) {
    throw wrapOpen(file, err);
  }
  try {
    checkStat(file, fstatSync(fd), maxBytes);
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const buf = Buffer.allocUnsafe(Math.min(1 << 20, maxBytes + 1 - total));
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      total += n;
      if (total > maxBytes) throw tooLong(file, maxBytes);
      chunks.push(buf.subarray(0, n));
    }
    return Buffer.concat(chunks);
  } catch (err) {
    throw wrapOpen(file, err);
  } finally {
    closeSync(fd);
  }
}

/** readInputFileSync, without blocking the event loop. */
export async function readInputFile(file: string, maxBytes: number): Promise<string> {
  return (await readInputBytes(file, maxBytes)).toString('utf8');
}

/** readInputBytesSync, without blocking the event loop. */
export async function readInputBytes(file: string, maxBytes: number): Promise<Buffer> {
  let fh;
  try {
    fh = await open(file, FLAGS);
  } catch (err) {
    throw wrapOpen(file, err);
  }
  try {
    checkStat(file, await fh.stat(), maxBytes);
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const buf = Buffer.allocUnsafe(Math.min(1 << 20, maxBytes + 1 - total));
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      total += bytesRead;
      if (total > maxBytes) throw tooLong(file, maxBytes);
      chunks.push(buf.subarray(0, bytesRead));
    }
    return Buffer.concat(chunks);
  } catch (err) {
    throw wrapOpen(file, err);
  } finally {
    await fh.close();
  }
}
