// Atomic file writes: data goes to a temp name in the same directory, is flushed, then renamed over
// the target, so readers see the old file or the whole new one, never a half-written file.
import { randomBytes } from 'node:crypto';
import { type FileHandle, open, rm, rename, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Anything FileHandle.writeFile takes: a string, bytes, or a (async) iterable of chunks (streamed). */
export type FileData = string | Uint8Array | Iterable<string | Uint8Array> | AsyncIterable<string | Uint8Array>;

/** The temp name used for `path`: hidden, in the same directory (rename must not cross filesystems). */
function tempNameFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/**
 * Streaming variant: `write` gets a handle to a fresh temp file and writes it however it likes
 * (positioned writes, many chunks); on success the file is flushed and renamed to `path`, on any
 * error the temp file is removed and the error rethrown.
 */
export async function withAtomicFile<T>(path: string, write: (fh: FileHandle) => Promise<T>): Promise<T> {
  const tmp = tempNameFor(path);
  try {
    const fh = await open(tmp, 'wx');
    let result: T;
    try {
      result = await write(fh);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    return result;
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

export async function writeFileAtomic(path: string, data: FileData): Promise<void> {
  await withAtomicFile(path, (fh) => writeFile(fh, data));
}
