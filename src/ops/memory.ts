// Memory ops: make tensors, move data between host and device, fill, cast. read() is the one place
// where device results reach the host, so it is also where device-side index errors surface.
import type { Backend } from '../backend/backend.js';
import { f32ToBf16 } from '../tensor/bf16.js';
import { checkHostArray, type DType, dtypeSize, type HostArrayOf, type HostData, numelOf } from '../tensor/dtype.js';
import type { Tensor } from '../tensor/tensor.js';
import { checkFinite, expectTensor } from './check.js';
import { deviceError } from './errors.js';

const DTYPE_NAMES: readonly DType[] = ['f32', 'bf16', 'i32'];

function checkDType(dtype: DType): void {
  if (!DTYPE_NAMES.includes(dtype)) throw new TypeError(`dtype must be 'f32', 'bf16' or 'i32', got ${String(dtype)}`);
}

/** A new tensor with unspecified contents. */
export function empty<D extends DType>(backend: Backend, dtype: D, shape: readonly number[]): Tensor<D> {
  checkDType(dtype);
  numelOf(shape);
  return backend.empty(dtype, shape);
}

/** A new tensor of zeros. */
export function zeros<D extends DType>(backend: Backend, dtype: D, shape: readonly number[]): Tensor<D> {
  const t = empty(backend, dtype, shape);
  backend.fillBits(t, 0);
  return t;
}

/** Copies host data into an existing tensor (same dtype and element count). */
export function write<D extends DType>(t: Tensor<D>, host: HostData<D>): void {
  const be = expectTensor(t, 'tensor');
  checkHostArray(host.dtype, host.data, 'write');
  if (host.dtype !== t.dtype) throw new TypeError(`write: ${host.dtype} data into ${t}`);
  if (host.data.length !== t.numel) throw new RangeError(`write: ${host.data.length} elements into ${t} (${t.numel})`);
  be.write(t, host);
}

/** Copies host data into a new tensor of the given shape. */
export function upload<D extends DType>(backend: Backend, host: HostData<D>, shape: readonly number[]): Tensor<D> {
  checkHostArray(host.dtype, host.data, 'upload');
  if (host.data.length !== numelOf(shape)) {
    throw new RangeError(`upload: ${host.data.length} elements do not fill shape [${shape.join(', ')}] (${numelOf(shape)})`);
  }
  const t = backend.empty(host.dtype, shape);
  backend.write(t, host);
  return t;
}

/**
 * Copies a tensor to the host once the work issued before it is done. Throws when a kernel met an
 * out-of-range index since the last read (naming the op; its results are then invalid).
 */
export async function read<D extends DType>(t: Tensor<D>): Promise<HostArrayOf<D>> {
  const be = expectTensor(t, 'tensor');
  const [data, bits] = await Promise.all([be.read(t), be.takeErrors()]);
  if (bits !== 0) throw deviceError(bits);
  return data;
}

/** Elements per chunk of readChunks: 4 MiB of f32, a multiple of every dtype's 256-byte view alignment. */
export const READ_CHUNK_ELEMENTS = 1 << 20;

/**
 * A tensor's contents on the host in consecutive chunks of `chunkElements` (the last may be shorter),
 * read one at a time through views: writing a checkpoint never holds a whole tensor on the host.
 */
export async function* readChunks<D extends DType>(
  t: Tensor<D>,
  chunkElements: number = READ_CHUNK_ELEMENTS,
): AsyncGenerator<HostArrayOf<D>, void, undefined> {
  expectTensor(t, 'tensor');
  if (!Number.isSafeInteger(chunkElements) || chunkElements < 1 || (chunkElements * dtypeSize(t.dtype)) % 256 !== 0)
    throw new RangeError(`readChunks: chunk of ${chunkElements} elements is not a positive multiple of 256 bytes`);
  for (let off = 0; off < t.numel; off += chunkElements) {
    const n = Math.min(chunkElements, t.numel - off);
    yield await read(off === 0 && n === t.numel ? t : t.view(off, [n]));
  }
}

/** Sets every element to `value`, rounded to the dtype (bf16: nearest even; i32: must be an integer). */
export function fill(t: Tensor, value: number): void {
  const be = expectTensor(t, 'tensor');
  if (typeof value !== 'number') throw new TypeError(`fill value must be a number, got ${typeof value}`);
  let bits: number;
  if (t.dtype === 'i32') {
    checkFinite(value, 'fill value');
    if (!Number.isInteger(value) || value < -(2 ** 31) || value >= 2 ** 31)
      throw new RangeError(`an i32 fill value must be a 32-bit integer, got ${value}`);
    bits = value >>> 0;
  } else if (t.dtype === 'bf16') {
    bits = f32ToBf16(value);
  } else {
    bits = new Uint32Array(new Float32Array([value]).buffer)[0];
  }
  be.fillBits(t, bits);
}

/** Writes a raw bit pattern into every element (e.g. 0x7fc00000 = f32 NaN): for poisoning outputs in tests. */
export function fillBits(t: Tensor, bits: number): void {
  const be = expectTensor(t, 'tensor');
  if (!Number.isInteger(bits) || bits < 0 || bits > (t.dtype === 'bf16' ? 0xffff : 0xffffffff)) {
    throw new RangeError(`fill bits ${bits} do not fit a ${t.dtype} element`);
  }
  be.fillBits(t, bits);
}

/** A new tensor with the values converted to `dtype` (f32 <-> bf16 rounds to nearest even). */
export function cast<D extends DType>(t: Tensor, dtype: D): Tensor<D> {
  const be = expectTensor(t, 'tensor');
  checkDType(dtype);
  if ((t.dtype === 'i32') !== (dtype === 'i32')) throw new TypeError(`cannot cast ${t} to ${dtype}: i32 converts only to i32`);
  const out = be.empty(dtype, t.shape);
  be.cast(t, out);
  return out;
}
