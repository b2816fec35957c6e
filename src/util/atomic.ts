// Output files. Every file spinlm writes goes through here:
//  - a regular file (or a name that does not exist yet) is written to a temp name in the same
//    directory, flushed, then renamed over the target, so readers see the old file or the whole new
//    one, never a half-written file. A symlink is followed first: the file it names is replaced and
//    the link stays a link.
//  - a FIFO, a character device (/dev/null, a terminal) or the process's own stdout/stderr
//    (/dev/stdout, /dev/fd/N, /proc/self/fd/N) is streamed to: never renamed over.
//  - anything else (a directory where a file is expected, a socket, a block device) is refused with
//    one OutputError naming the path.
// Errors from the file system name the path (ENOSPC, EACCES, ...), and makeDirs() creates directories
// by walking up itself instead of Node's recursive mkdir (which loops forever under /proc).
import { randomBytes } from 'node:crypto';
import { appendFileSync, createWriteStream, writeFileSync } from 'node:fs';
import { type FileHandle, lstat, mkdir, open, readlink, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { Writable } from 'node:stream';

/** Anything FileHandle.writeFile takes: a string, bytes, or a (async) iterable of chunks (streamed). */
export type FileData = string | Uint8Array | Iterable<string | Uint8Array> | AsyncIterable<string | Uint8Array>;

/** An output path that cannot be written as asked (a directory, a socket, ...), or a write that failed: names the path. */
export class OutputError extends Error {
  constructor(
    readonly path: string,
    problem: string,
    readonly code?: string,
  ) {
    super(`${path}: ${problem}`);
    this.name = 'OutputError';
  }
}

/** How an output path is written: atomically at `path` (the symlink-resolved target), or streamed to. */
export interface OutputTarget {
  kind: 'file' | 'stream';
  path: string;
  /** For the process's own descriptors (/dev/stdout, /dev/fd/N, /proc/self/fd/N): the descriptor, written directly (it may be a socket, which cannot be opened by name). */
  fd?: number;
}

/** The descriptor a path names when it is one of this process's own (/dev/stdout, /dev/fd/N, /proc/self/fd/N), else null. */
function ownDescriptor(abs: string): number | null {
  if (abs === '/dev/stdout') return 1;
  if (abs === '/dev/stderr') return 2;
  const m = /^\/(?:dev\/fd|proc\/(self|\d+)\/fd)\/(\d+)$/.exec(abs);
  if (!m || (m[1] !== undefined && m[1] !== 'self' && Number(m[1]) !== process.pid)) return null;
  return Number(m[2]);
}

/** Writes data to one of this process's descriptors (stdout/stderr through their streams), in order, waiting for it to drain. */
async function writeToDescriptor(fd: number, data: FileData): Promise<void> {
  const out: Writable = fd === 1 ? process.stdout : fd === 2 ? process.stderr : createWriteStream('', { fd, autoClose: false });
  const chunks: AsyncIterable<string | Uint8Array> | Iterable<string | Uint8Array> =
    typeof data === 'string' || data instanceof Uint8Array ? [data] : data;
  for await (const chunk of chunks) {
    await new Promise<void>((res, rej) => {
      out.write(chunk, (err) => (err ? rej(err) : res()));
    });
  }
}

const errCode = (e: unknown) => (e as NodeJS.ErrnoException).code;

/** Decides how `path` is written (see the file comment); throws OutputError for what cannot be. */
export async function resolveOutput(path: string): Promise<OutputTarget> {
  if (path === '') throw new OutputError("''", 'the output path is empty; give a file name');
  const own = ownDescriptor(resolve(path));
  if (own !== null) return { kind: 'stream', path, fd: own };
  let target = path;
  for (let hops = 0; hops < 40; hops++) {
    let st;
    try {
      st = await lstat(target);
    } catch (e) {
      if (errCode(e) === 'ENOENT') return { kind: 'file', path: target };
      if (errCode(e) === 'ENOTDIR') throw new OutputError(path, 'a parent of this path is not a directory', 'ENOTDIR');
      throw new OutputError(path, `cannot inspect it (${(e as Error).message})`, errCode(e));
    }
    if (st.isSymbolicLink()) {
      // follow the link by hand so that a dangling link still names where the file goes
      target = resolve(dirname(target), await readlink(target));
      continue;
    }
    if (st.isFile()) return { kind: 'file', path: hops > 0 ? await realpath(target) : target };
    if (st.isFIFO() || st.isCharacterDevice()) return { kind: 'stream', path };
    if (st.isDirectory()) throw new OutputError(path, 'is a directory; give a file name for this output', 'EISDIR');
    const what = st.isSocket() ? 'a socket' : st.isBlockDevice() ? 'a block device' : 'not a regular file';
    throw new OutputError(
      path,
      `is ${what}; spinlm writes outputs only to regular files (replaced atomically), FIFOs and character devices such as /dev/stdout (streamed)`,
    );
  }
  throw new OutputError(path, 'too many levels of symbolic links', 'ELOOP');
}

/** An fs error rewritten to name `path` (Node's messages for write/fsync/close name no file). */
function named(err: unknown, path: string): unknown {
  if (err instanceof OutputError || typeof errCode(err) !== 'string') return err;
  const msg = (err as Error).message;
  return new OutputError(path, msg.includes(path) ? msg : `cannot write it (${msg})`, errCode(err));
}

/** appendFileSync whose errors (ENOSPC, EIO, EFBIG: Node's messages for a write name no file) name `path`. */
export function appendFileNamed(path: string, data: string | Uint8Array): void {
  try {
    appendFileSync(path, data);
  } catch (err) {
    throw named(err, path);
  }
}

/** writeFileSync whose errors name `path`. */
export function writeFileNamed(path: string, data: string | Uint8Array): void {
  try {
    writeFileSync(path, data);
  } catch (err) {
    throw named(err, path);
  }
}

/** The temp name used for `path`: hidden, in the same directory (rename must not cross filesystems). */
function tempNameFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/**
 * Streaming variant: `write` gets a handle and writes it however it likes (many chunks; positioned
 * writes only for regular files). A regular-file target gets a fresh temp file that is flushed and
 * renamed to the target on success and removed on any error; a FIFO or device is opened and written
 * in place. Errors name `path`.
 */
export async function withAtomicFile<T>(path: string, write: (fh: FileHandle) => Promise<T>): Promise<T> {
  const target = await resolveOutput(path);
  if (target.fd !== undefined) throw new OutputError(path, 'this output needs a file (positioned writes); give a file name');
  if (target.kind === 'stream') {
    let fh: FileHandle | null = null;
    try {
      fh = await open(target.path, 'w');
      const result = await write(fh);
      await fh.close();
      fh = null;
      return result;
    } catch (err) {
      await fh?.close().catch(() => {});
      throw named(err, path);
    }
  }
  const tmp = tempNameFor(target.path);
  try {
    const fh = await open(tmp, 'wx');
    let result: T;
    try {
      result = await write(fh);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, target.path);
    return result;
  } catch (err) {
    await rm(tmp, { force: true });
    throw named(err, path);
  }
}

export async function writeFileAtomic(path: string, data: FileData): Promise<void> {
  const target = await resolveOutput(path);
  if (target.fd !== undefined) {
    try {
      await writeToDescriptor(target.fd, data);
    } catch (err) {
      throw named(err, path);
    }
    return;
  }
  await withAtomicFile(path, (fh) => writeFile(fh, data));
}

/**
 * mkdir -p without Node's recursive mkdir: creates the missing directories from the top down,
 * trying each once, so a file system that refuses (e.g. /proc) fails at once with an OutputError
 * naming the directory; an existing non-directory on the way is an OutputError too.
 */
export async function makeDirs(dir: string): Promise<void> {
  if (dir === '') throw new OutputError("''", 'the directory path is empty');
  const isDir = async (p: string) => (await stat(p).catch(() => null))?.isDirectory() ?? false;
  const attempt = async (p: string): Promise<'made' | 'missing-parent'> => {
    try {
      await mkdir(p);
      return 'made';
    } catch (e) {
      const code = errCode(e);
      if (code === 'EEXIST') {
        if (await isDir(p)) return 'made';
        throw new OutputError(p, 'exists and is not a directory', 'EEXIST');
      }
      if (code === 'ENOENT') return 'missing-parent';
      if (code === 'ENOTDIR') throw new OutputError(p, 'a parent of this path is not a directory', code);
      throw new OutputError(p, `cannot create the directory (${(e as Error).message})`, code);
    }
  };
  const abs = resolve(dir);
  if ((await attempt(abs)) === 'made') return;
  // walk up to the deepest existing ancestor, then create downwards, each directory once
  const missing: string[] = [abs];
  let p = dirname(abs);
  while (p !== dirname(p) && !(await isDir(p))) {
    if (await stat(p).catch(() => null)) throw new OutputError(p, 'exists and is not a directory', 'EEXIST');
    missing.push(p);
    p = dirname(p);
  }
  for (const d of missing.reverse()) {
    if ((await attempt(d)) === 'missing-parent')
      throw new OutputError(d, 'cannot create the directory here (the file system refused it: ENOENT)', 'ENOENT');
  }
}
