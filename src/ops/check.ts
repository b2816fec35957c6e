// Argument checks of the op layer: they run once, before any device work, so a bad call throws one
// clear error naming the argument whatever the device. Wrong types and dtypes are TypeErrors, wrong
// shapes and values RangeErrors (as Node's own APIs do).
import type { Backend } from '../backend/backend.js';
import type { DType } from '../tensor/dtype.js';
import { Tensor } from '../tensor/tensor.js';

export function describe(t: Tensor): string {
  return `${t.dtype} [${t.shape.join(', ')}]`;
}

/** t is a Tensor (of `backend`, when given); returns its backend. */
export function expectTensor(t: Tensor, what: string, backend?: Backend): Backend {
  if (!(t instanceof Tensor)) throw new TypeError(`${what} must be a Tensor, got ${t === null ? 'null' : typeof t}`);
  if (backend && t.backend !== backend) {
    throw new TypeError(`${what} lives on backend '${t.backend.name}', not '${backend.name}': move it first`);
  }
  return t.backend;
}

export function expectDType(t: Tensor, allowed: readonly DType[], what: string): void {
  if (!allowed.includes(t.dtype)) {
    throw new TypeError(`${what} must have dtype ${allowed.join(' or ')}, got ${describe(t)}`);
  }
}

export function expectRank(t: Tensor, rank: number, what: string): void {
  if (t.shape.length !== rank) throw new RangeError(`${what} must have ${rank} dimension(s), got ${describe(t)}`);
}

export function expectShape(t: Tensor, shape: readonly number[], what: string): void {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new RangeError(`${what} must have shape [${shape.join(', ')}], got ${describe(t)}`);
  }
}

/** A tensor of `backend` with one of `dtypes` and, when given, exactly `shape`. */
export function expectArg(backend: Backend, t: Tensor, what: string, dtypes: readonly DType[], shape?: readonly number[]): void {
  expectTensor(t, what, backend);
  expectDType(t, dtypes, what);
  if (shape) expectShape(t, shape, what);
}

/** [rows, cols] of a 2-D f32 tensor of `backend`. */
export function expectRows(backend: Backend, t: Tensor, what: string): [number, number] {
  expectArg(backend, t, what, ['f32']);
  expectRank(t, 2, what);
  return [t.shape[0], t.shape[1]];
}

export function checkFinite(x: number, what: string): void {
  if (typeof x !== 'number') throw new TypeError(`${what} must be a number, got ${typeof x}`);
  if (!Number.isFinite(x)) throw new RangeError(`${what} must be a finite number, got ${x}`);
}

export function checkCount(x: number, what: string, min = 0): void {
  if (typeof x !== 'number') throw new TypeError(`${what} must be a number, got ${typeof x}`);
  if (!Number.isSafeInteger(x) || x < min) throw new RangeError(`${what} must be an integer >= ${min}, got ${x}`);
}

/** Two tensors that must not share memory (an op reads one while writing the other). */
export function expectDisjoint(a: Tensor, b: Tensor, what: string): void {
  if (a.handle !== b.handle) return;
  const a0 = a.byteOffset,
    a1 = a0 + a.byteLength,
    b0 = b.byteOffset,
    b1 = b0 + b.byteLength;
  if (a0 < b1 && b0 < a1) throw new RangeError(`${what}: the tensors overlap in memory`);
}
