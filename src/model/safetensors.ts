// Safetensors files (https://github.com/huggingface/safetensors), read and written by hand: the reader
// here, the format and header check in src/model/safetensors_format.ts, the writer in
// src/model/safetensors_write.ts (both re-exported, so this module is the one to import).
import { type FileHandle, open } from 'node:fs/promises';
import { endianness } from 'node:os';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../tensor/bf16.js';
import { type HostArray } from '../tensor/dtype.js';
import {
  IO_CHUNK,
  MAX_HEADER_BYTES,
  SafetensorsError,
  parseHeader,
  f16ArrayToF32,
  type HostTensor,
  type TensorInfo,
  type ReadOptions,
  ST_DTYPE_BYTES,
  READABLE,
} from './safetensors_format.js';

export * from './safetensors_format.js';
export { layoutOrder, type TensorToWrite, writeSafetensors } from './safetensors_write.js';

// ---- reading ----

async function readExactly(fh: FileHandle, into: Uint8Array, position: number, file: string, tensor: string | null): Promise<void> {
  let done = 0;
  while (done < into.length) {
    const { bytesRead } = await fh.read(into, done, Math.min(IO_CHUNK, into.length - done), position + done);
    if (bytesRead === 0) {
      throw new SafetensorsError(
        file,
        tensor,
        `file ended at byte ${position + done} while reading ${into.length} bytes from byte ${position}`,
      );
    }
    done += bytesRead;
  }
}

/** An open safetensors file: header checked, tensors read on demand. Call close() when done. */
export class SafetensorsFile {
  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    /** The `__metadata__` map ({} when absent). */
    readonly metadata: Readonly<Record<string, string>>,
    /** Header entries by name. */
    readonly tensors: ReadonlyMap<string, TensorInfo>,
  ) {}

  /** Opens `path` and parses its header (only the header is read). */
  static async open(path: string): Promise<SafetensorsFile> {
    if (endianness() !== 'LE') throw new SafetensorsError(path, null, 'reading safetensors needs a little-endian host');
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (err) {
      throw new SafetensorsError(path, null, `cannot open (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    try {
      const size = (await fh.stat()).size;
      if (size < 8) throw new SafetensorsError(path, null, `file is ${size} bytes, too short for the 8-byte header length`);
      const lenBytes = new Uint8Array(8);
      await readExactly(fh, lenBytes, 0, path, null);
      const headerLen = new DataView(lenBytes.buffer).getBigUint64(0, true);
      if (headerLen > BigInt(MAX_HEADER_BYTES)) {
        throw new SafetensorsError(path, null, `header length ${headerLen} is over the ${MAX_HEADER_BYTES}-byte limit`);
      }
      const n = Number(headerLen);
      if (8 + n > size) throw new SafetensorsError(path, null, `header length ${n} runs past the end of the ${size}-byte file`);
      const headerBytes = new Uint8Array(n);
      await readExactly(fh, headerBytes, 8, path, null);
      let text: string;
      try {
        text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(headerBytes);
      } catch {
        throw new SafetensorsError(path, null, 'header is not valid UTF-8');
      }
      const { metadata, tensors } = parseHeader(text, path, 8 + n, size - 8 - n);
      return new SafetensorsFile(path, fh, metadata, tensors);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /** Tensor names in data order. */
  names(): string[] {
    return [...this.tensors.values()].sort((a, b) => a.begin - b.begin || a.end - b.end).map((t) => t.name);
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new SafetensorsError(this.path, name, 'no such tensor in this file');
    return t;
  }

  /** The tensor's raw little-endian bytes. */
  async readRaw(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    const out = new Uint8Array(t.end - t.begin);
    await readExactly(this.fh, out, t.begin, this.path, name);
    return out;
  }

  /**
   * Streams a float tensor (BF16, F16, F32) in chunks of at most `chunkElements` elements, converted
   * to `dtype` exactly as readTensor converts: `onChunk(data, elementOffset)` gets a host array that is
   * reused for the next chunk (copy it out before returning). Host memory: one or two chunk buffers,
   * never the whole tensor, so a loader can fill device tensors without a second full copy.
   */
  async readTensorChunks(
    name: string,
    dtype: 'bf16' | 'f32',
    chunkElements: number,
    onChunk: (data: Uint16Array | Float32Array, elementOffset: number) => void | Promise<void>,
  ): Promise<void> {
    const t = this.info(name);
    if (t.dtype !== 'BF16' && t.dtype !== 'F16' && t.dtype !== 'F32')
      throw new SafetensorsError(this.path, name, `dtype ${t.dtype} is not a float dtype`);
    if (!Number.isSafeInteger(chunkElements) || chunkElements < 1)
      throw new RangeError(`chunkElements must be a positive integer, got ${chunkElements}`);
    const width = ST_DTYPE_BYTES[t.dtype];
    const numel = (t.end - t.begin) / width;
    const n = Math.min(chunkElements, Math.max(1, numel));
    const raw = new Uint8Array(new ArrayBuffer(n * width));
    const out: Float32Array<ArrayBuffer> | Uint16Array<ArrayBuffer> | null =
      dtype === 'f32' ? (t.dtype === 'F32' ? null : new Float32Array(n)) : t.dtype === 'BF16' ? null : new Uint16Array(n);
    const f32: Float32Array<ArrayBuffer> | null = t.dtype === 'F16' && dtype === 'bf16' ? new Float32Array(n) : null;
    for (let off = 0; off < numel; off += n) {
      const m = Math.min(n, numel - off);
      const bytes = raw.subarray(0, m * width);
      await readExactly(this.fh, bytes, t.begin + off * width, this.path, name);
      let data: Uint16Array | Float32Array;
      if (t.dtype === 'F32') {
        const src = new Float32Array(raw.buffer, 0, m);
        data = dtype === 'f32' ? src : f32ArrayToBf16(src, (out as Uint16Array<ArrayBuffer>).subarray(0, m));
      } else if (t.dtype === 'BF16') {
        const src = new Uint16Array(raw.buffer, 0, m);
        data = dtype === 'bf16' ? src : bf16ArrayToF32(src, (out as Float32Array<ArrayBuffer>).subarray(0, m));
      } else {
        const src = new Uint16Array(raw.buffer, 0, m);
        data =
          dtype === 'f32'
            ? f16ArrayToF32(src, (out as Float32Array<ArrayBuffer>).subarray(0, m))
            : f32ArrayToBf16(f16ArrayToF32(src, f32!.subarray(0, m)), (out as Uint16Array<ArrayBuffer>).subarray(0, m));
      }
      await onChunk(data, off);
    }
  }

  /** Reads one tensor into host memory (BF16 -> bf16, F32 and F16 -> f32, I32/I64 -> i32), converting if asked. */
  async readTensor(name: string, opts: ReadOptions = {}): Promise<HostTensor> {
    const t = this.info(name);
    const numel = (t.end - t.begin) / ST_DTYPE_BYTES[t.dtype];
    const fail = (problem: string) => new SafetensorsError(this.path, name, problem);
    if (!READABLE.includes(t.dtype)) throw fail(`dtype ${t.dtype} is not supported (spinlm reads ${READABLE.join(', ')})`);
    const isInt = t.dtype === 'I32' || t.dtype === 'I64';
    if (isInt && opts.dtype !== undefined) throw fail(`integer dtype ${t.dtype} cannot be converted to ${opts.dtype}`);

    const read = async <A extends HostArray | BigInt64Array>(arr: A): Promise<A> => {
      await readExactly(this.fh, new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength), t.begin, this.path, name);
      return arr;
    };
    const shape = t.shape;
    switch (t.dtype) {
      case 'BF16': {
        const raw = await read(new Uint16Array(numel));
        return opts.dtype === 'f32' ? { dtype: 'f32', shape, data: bf16ArrayToF32(raw) } : { dtype: 'bf16', shape, data: raw };
      }
      case 'F32': {
        const raw = await read(new Float32Array(numel));
        return opts.dtype === 'bf16' ? { dtype: 'bf16', shape, data: f32ArrayToBf16(raw) } : { dtype: 'f32', shape, data: raw };
      }
      case 'F16': {
        const f32 = f16ArrayToF32(await read(new Uint16Array(numel)));
        return opts.dtype === 'bf16' ? { dtype: 'bf16', shape, data: f32ArrayToBf16(f32) } : { dtype: 'f32', shape, data: f32 };
      }
      case 'I32':
        return { dtype: 'i32', shape, data: await read(new Int32Array(numel)) };
      default: {
        const wide = await read(new BigInt64Array(numel));
        const out = new Int32Array(numel);
        for (let i = 0; i < numel; i++) {
          const v = wide[i];
          if (v < -2147483648n || v > 2147483647n) throw fail(`I64 element ${i} = ${v} does not fit in i32`);
          out[i] = Number(v);
        }
        return { dtype: 'i32', shape, data: out };
      }
    }
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** Opens a safetensors file and checks its header; tensors are read later, one at a time. */
export function openSafetensors(path: string): Promise<SafetensorsFile> {
  return SafetensorsFile.open(path);
}
