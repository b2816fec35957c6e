// Safetensors files (https://github.com/huggingface/safetensors): the format, its dtypes and the header
// check shared by the reader (src/model/safetensors.ts) and the writer (src/model/safetensors_write.ts).
//
// Layout: [u64 little-endian N][N bytes: UTF-8 JSON header][data section]
// Header: { "__metadata__"?: {string: string},
//           "<name>": { "dtype": "BF16", "shape": [d0, d1, ...], "data_offsets": [begin, end] }, ... }
// with offsets relative to the data section. Files are data, never code: the header is size-capped
// and every offset is checked before anything is allocated or read, and tensors are read one at a
// time with positioned reads (files may exceed 2 GiB; nothing reads the whole file).
import { type DType, type HostData } from '../tensor/dtype.js';

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
export const ST_DTYPE_BYTES = {
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
export const READABLE: readonly StDType[] = ['BF16', 'F16', 'F32', 'I32', 'I64'];

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

export function isPlainObject(x: unknown): x is Record<string, unknown> {
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

/** Single read()/write() calls stay well below the 2 GiB syscall limit. */
export const IO_CHUNK = 64 * 1024 * 1024;
