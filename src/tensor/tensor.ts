// A device tensor: dtype, shape and a backend-specific buffer handle. Ops on tensors go through the
// Backend that made them (src/backend/backend.ts); only Backend.read brings data to the host.
import type { Backend } from '../backend/backend.js';
import { type DType, dtypeSize, numelOf } from './dtype.js';

/**
 * Views start at multiples of this many bytes on every backend: WebGPU binds storage buffers only at
 * 256-byte-aligned offsets, so code above the backends takes no view that one backend could not bind
 * (docs/ops.md). Offset 0 (reshape) is always allowed.
 */
export const VIEW_ALIGNMENT = 256;

export class Tensor<D extends DType = DType> {
  readonly numel: number;

  /**
   * @param handle     the backend's buffer (CPU: a native External; WebGPU: a GPUBuffer; ...)
   * @param byteOffset where this tensor starts inside that buffer
   * @param base       the tensor that owns the buffer when this one is a view, else null
   */
  constructor(
    readonly backend: Backend,
    readonly dtype: D,
    readonly shape: readonly number[],
    readonly handle: unknown,
    readonly byteOffset = 0,
    readonly base: Tensor | null = null,
  ) {
    this.numel = numelOf(shape);
  }

  get byteLength(): number {
    return this.numel * dtypeSize(this.dtype);
  }

  /** A non-owning view of `shape` starting `elementOffset` elements into this tensor. */
  view(elementOffset: number, shape: readonly number[]): Tensor<D> {
    const n = numelOf(shape);
    if (!Number.isSafeInteger(elementOffset) || elementOffset < 0 || elementOffset + n > this.numel) {
      throw new RangeError(
        `view of [${shape.join(', ')}] at element ${elementOffset} does not fit in a tensor of [${this.shape.join(', ')}]`,
      );
    }
    const byteOffset = this.byteOffset + elementOffset * dtypeSize(this.dtype);
    if (byteOffset % VIEW_ALIGNMENT !== 0) {
      throw new RangeError(
        `view of [${shape.join(', ')}] at element ${elementOffset} starts at byte ${byteOffset}: views must start at multiples of ${VIEW_ALIGNMENT} bytes (VIEW_ALIGNMENT)`,
      );
    }
    const owner = this.base ?? this;
    return new Tensor(this.backend, this.dtype, shape, this.handle, byteOffset, owner);
  }

  /** Same data, new shape with the same element count. */
  reshape(shape: readonly number[]): Tensor<D> {
    if (numelOf(shape) !== this.numel) {
      throw new RangeError(`cannot reshape [${this.shape.join(', ')}] to [${shape.join(', ')}]`);
    }
    return this.view(0, shape);
  }

  /** Releases the buffer now instead of at garbage collection. Views cannot be freed. */
  free(): void {
    if (this.base) throw new Error(`${this} is a view: free the tensor it views instead`);
    this.backend.free(this);
  }

  toString(): string {
    return `Tensor(${this.backend.name}, ${this.dtype}, [${this.shape.join(', ')}])`;
  }
}
