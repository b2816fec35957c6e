// Safetensors files (https://github.com/huggingface/safetensors), read and written by hand.
//
// Layout: [u64 little-endian N][N bytes: UTF-8 JSON header][data section]
// Header: { "__metadata__"?: {string: string},
//           "<name>": { "dtype": "BF16", "shape": [d0, d1, ...], "data_offsets": [begin, end] }, ... }
// with offsets relative to the data section. Files are data, never code: the header is size-capped
// and every offset is checked before anything is allocated or read, and tensors are read one at a
// time with positioned reads (files may exceed 2 GiB; nothing reads the whole file).
import { type FileHandle, open } from 'node:fs/promises';
import { endianness } from 'node:os';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../tensor/bf16.js';
import { type DType, type HostArray, type HostData, checkHostArray, dtypeSize, numelOf } from '../tensor/dtype.js';
import { withAtomicFile } from '../util/atomic.js';

/** Every failure to read or write a safetensors file: names the file, the tensor when one is at fault. */
export class SafetensorsError extends Error {
  constructor(
    readonly file: string,
    readonly tensor: string | null,
    readonly problem: string,
  ) {
    super(tensor === null ? `${file}: ${problem}` : `${file}: tensor ${JSON.stringify(tensor)}: ${problem}`);
    this.name = 'SafetensorsError';
  }
}

/** Headers above this are refused (real ones are well under 10 MB even for 100B-parameter shards). */
export const MAX_HEADER_BYTES = 100_000_000;

/** Bytes per element of each dtype the safetensors format defines (sub-byte types are refused). */
const ST_DTYPE_BYTES = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
} as const;

/** A dtype name as written in safetensors headers. */
export type StDType = keyof typeof ST_DTYPE_BYTES;

/** The dtypes spinlm reads into host memory. */
const READABLE: readonly StDType[] = ['BF16', 'F16', 'F32', 'I32', 'I64'];

/** The safetensors dtype spinlm writes for each of its own dtypes. */
export function stDTypeOf(dtype: DType): StDType {
  return dtype === 'bf16' ? 'BF16' : dtype === 'f32' ? 'F32' : 'I32';
}

/** Host data with its shape. */
export interface HostTensor<D extends DType = DType> extends HostData<D> {
  readonly shape: readonly number[];
}

/** One header entry, checked. */
export interface TensorInfo {
  readonly name: string;
  readonly dtype: StDType;
  readonly shape: readonly number[];
  /** Absolute byte range [begin, end) of the tensor's data in the file. */
  readonly begin: number;
  readonly end: number;
}

export interface ReadOptions {
  /** Convert floating-point data to this dtype (bf16 <-> f32; F16 always arrives as f32 unless bf16 is asked). */
  dtype?: 'f32' | 'bf16';
}

// ---- f16 -> f32 (exact: every f16 value is a float32) ----

let f16Table: Float32Array | null = null;

/** Float32 value of each of the 65536 f16 bit patterns; NaN payloads kept (shifted into the f32 mantissa). */
function f16ToF32Table(): Float32Array {
  if (f16Table) return f16Table;
  const table = new Float32Array(65536);
  const bits = new Uint32Array(table.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >> 10) & 0x1f;
    const man = h & 0x3ff;
    if (exp === 0) {
      table[h] = (sign ? -1 : 1) * man * 2 ** -24; // zero or subnormal: man * 2^-24, exact in f32
    } else if (exp === 31) {
      bits[h] = sign | 0x7f800000 | (man << 13); // Inf (man 0) or NaN
    } else {
      bits[h] = sign | ((exp - 15 + 127) << 23) | (man << 13);
    }
  }
  f16Table = table;
  return table;
}

/** One IEEE binary16 bit pattern to its (exact) value. */
export function f16ToF32(h: number): number {
  return f16ToF32Table()[h & 0xffff];
}

export function f16ArrayToF32(src: Uint16Array, out = new Float32Array(src.length)): Float32Array {
  const table = f16ToF32Table();
  const outBits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  const tableBits = new Uint32Array(table.buffer);
  for (let i = 0; i < src.length; i++) outBits[i] = tableBits[src[i]]; // bit copy keeps NaN payloads
  return out;
}

// ---- header parsing ----

function isPlainObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/**
 * The first key that appears twice in one object of a JSON text (JSON.parse silently keeps the
 * last one), with its nesting depth (1 = top level), or null. The text must already be valid JSON.
 * Iterative, so hostile nesting depth cannot overflow the stack.
 */
export function findDuplicateKey(text: string): { key: string; depth: number } | null {
  const stack: (Set<string> | null)[] = []; // one entry per open container: keys seen (objects) or null (arrays)
  let expectKey = false;
  let i = 0;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const start = i++;
      while (text.charCodeAt(i) !== 0x22) i += text.charCodeAt(i) === 0x5c /* \ */ ? 2 : 1;
      i++;
      const keys = stack[stack.length - 1];
      if (keys && expectKey) {
        const key = JSON.parse(text.slice(start, i)) as string;
        if (keys.has(key)) return { key, depth: stack.length };
        keys.add(key);
      }
      expectKey = false;
      continue;
    }
    if (c === 0x7b /* { */) {
      stack.push(new Set());
      expectKey = true;
    } else if (c === 0x5b /* [ */) {
      stack.push(null);
      expectKey = false;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
      expectKey = false;
    } else if (c === 0x2c /* , */) {
      expectKey = stack[stack.length - 1] != null;
    }
    i++;
  }
  return null;
}

function isSafeNonNegInt(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

/**
 * Checks a header (the JSON text) against a data section of `dataLength` bytes starting at file
 * offset `dataStart`. Tensors must tile the data section exactly, as the reference implementation
 * requires: no overlaps, no gaps, no trailing bytes.
 */
export function parseHeader(
  text: string,
  file: string,
  dataStart: number,
  dataLength: number,
): { metadata: Record<string, string>; tensors: Map<string, TensorInfo> } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new SafetensorsError(file, null, `header is not valid JSON (${(err as Error).message})`);
  }
  if (!isPlainObject(json)) throw new SafetensorsError(file, null, 'header is not a JSON object');
  const dup = findDuplicateKey(text);
  if (dup) {
    throw new SafetensorsError(
      file,
      null,
      dup.depth === 1
        ? `header names tensor ${JSON.stringify(dup.key)} twice`
        : `header repeats the key ${JSON.stringify(dup.key)} inside one entry`,
    );
  }

  let metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  for (const [name, entry] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isPlainObject(entry)) throw new SafetensorsError(file, null, '__metadata__ must be an object of strings');
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== 'string') {
          throw new SafetensorsError(
            file,
            null,
            `__metadata__[${JSON.stringify(k)}] must be a string, got ${JSON.stringify(v).slice(0, 40)}`,
          );
        }
      }
      metadata = Object.fromEntries(Object.entries(entry)) as Record<string, string>; // own keys, even "__proto__"
      continue;
    }
    const fail = (problem: string) => new SafetensorsError(file, name, problem);
    if (!isPlainObject(entry)) throw fail('entry must be an object with dtype, shape and data_offsets');
    const { dtype, shape, data_offsets: offsets } = entry;
    if (typeof dtype !== 'string' || !Object.hasOwn(ST_DTYPE_BYTES, dtype)) {
      throw fail(`unknown dtype ${JSON.stringify(dtype)} (expected one of ${Object.keys(ST_DTYPE_BYTES).join(', ')})`);
    }
    if (!Array.isArray(shape) || !shape.every(isSafeNonNegInt)) {
      throw fail(`shape must be a list of non-negative integers, got ${JSON.stringify(shape)?.slice(0, 80)}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isSafeNonNegInt)) {
      throw fail(`data_offsets must be [begin, end] with non-negative integers, got ${JSON.stringify(offsets)?.slice(0, 80)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) throw fail(`data_offsets [${begin}, ${end}] end before they begin`);
    if (end > dataLength) throw fail(`data_offsets [${begin}, ${end}] run past the data section (${dataLength} bytes)`);
    const elemBytes = ST_DTYPE_BYTES[dtype as StDType];
    const want = (shape as number[]).reduce((n, d) => n * BigInt(d), 1n) * BigInt(elemBytes);
    if (want !== BigInt(end - begin)) {
      throw fail(`shape [${shape.join(', ')}] of ${dtype} needs ${want} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`);
    }
    tensors.set(name, { name, dtype: dtype as StDType, shape: shape as number[], begin: dataStart + begin, end: dataStart + end });
  }

  // Tiling: sorted by (begin, end), each tensor starts where the previous one ended.
  const sorted = [...tensors.values()].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = dataStart;
  let prev: TensorInfo | null = null;
  for (const t of sorted) {
    if (t.begin < at) {
      throw new SafetensorsError(
        file,
        t.name,
        `data overlaps tensor ${JSON.stringify(prev?.name)} (bytes ${t.begin - dataStart}..${at - dataStart} of the data section)`,
      );
    }
    if (t.begin > at) {
      throw new SafetensorsError(file, null, `bytes ${at - dataStart}..${t.begin - dataStart} of the data section belong to no tensor`);
    }
    at = t.end;
    prev = t;
  }
  if (at !== dataStart + dataLength) {
    throw new SafetensorsError(file, null, `the last ${dataStart + dataLength - at} bytes of the data section belong to no tensor`);
  }
  return { metadata, tensors };
}

// ---- reading ----

const IO_CHUNK = 64 * 1024 * 1024; // single read()/write() calls stay well below the 2 GiB syscall limit

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
