// Element types that travel with tensor data. A Uint16Array says nothing about whether it holds
// bf16 or f16, so host data is always passed as a HostData { dtype, data }.

export type DType = 'f32' | 'bf16' | 'i32';

/** Bytes per element. */
export function dtypeSize(dtype: DType): number {
  return dtype === 'bf16' ? 2 : 4;
}

/** The typed array that stores each dtype on the host (bf16 as raw 16-bit patterns). */
export type HostArrayOf<D extends DType> = D extends 'f32' ? Float32Array : D extends 'bf16' ? Uint16Array : Int32Array;

export type HostArray = Float32Array | Uint16Array | Int32Array;

/** Host-side data with its dtype tag. */
export interface HostData<D extends DType = DType> {
  readonly dtype: D;
  readonly data: HostArrayOf<D>;
}

export function allocHost<D extends DType>(dtype: D, numel: number): HostArrayOf<D> {
  switch (dtype) {
    case 'f32':
      return new Float32Array(numel) as HostArrayOf<D>;
    case 'bf16':
      return new Uint16Array(numel) as HostArrayOf<D>;
    default:
      return new Int32Array(numel) as HostArrayOf<D>;
  }
}

/** Checks that a typed array can hold the given dtype's elements. */
export function checkHostArray(dtype: DType, data: HostArray, what = 'data'): void {
  const ok =
    (dtype === 'f32' && data instanceof Float32Array) ||
    (dtype === 'bf16' && data instanceof Uint16Array) ||
    (dtype === 'i32' && data instanceof Int32Array);
  if (!ok) {
    const expected = dtype === 'f32' ? 'Float32Array' : dtype === 'bf16' ? 'Uint16Array' : 'Int32Array';
    throw new TypeError(`${what}: dtype ${dtype} needs a ${expected}, got ${data.constructor.name}`);
  }
}

/** Number of elements of a shape; checks the dims are non-negative integers. */
export function numelOf(shape: readonly number[], what = 'shape'): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new RangeError(`${what} [${shape.join(', ')}] has a dimension that is not a non-negative integer`);
    }
    n *= d;
  }
  if (!Number.isSafeInteger(n)) throw new RangeError(`${what} [${shape.join(', ')}] has too many elements`);
  return n;
}
