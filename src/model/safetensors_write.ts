// Writing safetensors files (format: src/model/safetensors_format.ts): the header and every tensor to a
// temporary name renamed into place, tensors pulled to the host one at a time.
import { type FileHandle } from 'node:fs/promises';
import { endianness } from 'node:os';
import { type DType, type HostArray, checkHostArray, dtypeSize, numelOf } from '../tensor/dtype.js';
import { withAtomicFile } from '../util/atomic.js';
import { IO_CHUNK, SafetensorsError, stDTypeOf, isPlainObject } from './safetensors_format.js';

// ---- writing ----

/**
 * A tensor to write; `data` may be a function so big checkpoints are pulled to the host one tensor at
 * a time, or return the tensor in consecutive chunks (ops.readChunks) so no whole tensor is ever
 * on the host.
 */
export interface TensorToWrite {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly data: HostArray | (() => HostArray | Promise<HostArray> | AsyncIterable<HostArray>);
}

function isAsyncIterable(x: unknown): x is AsyncIterable<HostArray> {
  return typeof x === 'object' && x !== null && Symbol.asyncIterator in x;
}

/**
 * The order tensors are laid out in: larger elements first, then by name. Since the header is padded
 * to 8 bytes, every tensor then starts aligned to its element size (as the reference writer does).
 */
export function layoutOrder<T extends { name: string; dtype: DType }>(tensors: readonly T[]): T[] {
  return [...tensors].sort((a, b) => dtypeSize(b.dtype) - dtypeSize(a.dtype) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Checks names, shapes and metadata; returns the tensors in layout order with their byte sizes. */
function planWrite(path: string, tensors: readonly TensorToWrite[], metadata: Record<string, string> | undefined) {
  const seen = new Set<string>();
  for (const t of tensors) {
    if (typeof t.name !== 'string' || t.name === '') throw new SafetensorsError(path, null, 'tensor names must be non-empty strings');
    if (t.name === '__metadata__') throw new SafetensorsError(path, t.name, 'name is reserved for the metadata');
    if (seen.has(t.name)) throw new SafetensorsError(path, t.name, 'given twice');
    seen.add(t.name);
    if (t.dtype !== 'f32' && t.dtype !== 'bf16' && t.dtype !== 'i32')
      throw new SafetensorsError(path, t.name, `unknown dtype ${String(t.dtype)}`);
    try {
      numelOf(t.shape);
    } catch (err) {
      throw new SafetensorsError(path, t.name, (err as Error).message);
    }
  }
  if (metadata !== undefined) {
    if (!isPlainObject(metadata)) throw new SafetensorsError(path, null, 'metadata must be an object of strings');
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new SafetensorsError(path, null, `metadata[${JSON.stringify(k)}] must be a string`);
    }
  }
  return layoutOrder(tensors).map((t) => ({ t, bytes: numelOf(t.shape) * dtypeSize(t.dtype) }));
}

/** The header bytes (length prefix included) for tensors in layout order, padded with spaces to 8 bytes. */
function encodeHeader(plan: { t: TensorToWrite; bytes: number }[], metadata: Record<string, string> | undefined): Uint8Array {
  const entries: [string, unknown][] = metadata !== undefined ? [['__metadata__', metadata]] : [];
  let offset = 0;
  for (const { t, bytes } of plan) {
    entries.push([t.name, { dtype: stDTypeOf(t.dtype), shape: [...t.shape], data_offsets: [offset, offset + bytes] }]);
    offset += bytes;
  }
  // fromEntries makes own properties, so even a tensor named "__proto__" is written as a key.
  const json = new TextEncoder().encode(JSON.stringify(Object.fromEntries(entries)));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) {
    const { bytesWritten } = await fh.write(bytes, done, Math.min(IO_CHUNK, bytes.length - done));
    done += bytesWritten;
  }
}

/**
 * Writes a safetensors file in the Hugging Face layout: header padded with spaces to 8 bytes,
 * tensors contiguous in layoutOrder(). Written to a temp name and renamed, so a failure leaves any
 * old file untouched. Returns the file's size in bytes.
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[],
  metadata?: Record<string, string>,
): Promise<number> {
  if (endianness() !== 'LE') throw new SafetensorsError(path, null, 'writing safetensors needs a little-endian host');
  const plan = planWrite(path, tensors, metadata);
  const header = encodeHeader(plan, metadata);
  await withAtomicFile(path, async (fh) => {
    await writeAll(fh, header);
    for (const { t, bytes } of plan) {
      const data = typeof t.data === 'function' ? await t.data() : t.data;
      const chunks = isAsyncIterable(data) ? data : [data];
      const size = dtypeSize(t.dtype);
      const wrongSize = (elements: number | string) =>
        new SafetensorsError(path, t.name, `shape [${t.shape.join(', ')}] needs ${bytes / size} elements, data has ${elements}`);
      let written = 0;
      for await (const chunk of chunks) {
        try {
          checkHostArray(t.dtype, chunk, 'data');
        } catch (err) {
          throw new SafetensorsError(path, t.name, (err as Error).message);
        }
        if (written + chunk.byteLength > bytes) throw wrongSize(`more than ${bytes / size}`);
        await writeAll(fh, new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
        written += chunk.byteLength;
      }
      if (written !== bytes) throw wrongSize(written / size);
    }
  });
  return header.length + plan.reduce((s, p) => s + p.bytes, 0);
}
