// Argument checks shared by every backend: they run before any device work, so a bad call throws
// one clear error naming the argument, whatever the device.
import type { DType } from '../tensor/dtype.js';
import type { Tensor } from '../tensor/tensor.js';
import type { Backend } from './backend.js';

function describe(t: Tensor): string {
  return `${t.dtype} [${t.shape.join(', ')}]`;
}

export function expectTensor(backend: Backend, t: Tensor, what: string): void {
  if (t === null || typeof t !== 'object' || !('backend' in t)) throw new TypeError(`${what} must be a Tensor`);
  if (t.backend !== backend) {
    throw new TypeError(`${what} lives on backend '${t.backend.name}', not '${backend.name}': move it first`);
  }
}

export function expectDType(t: Tensor, allowed: readonly DType[], what: string): void {
  if (!allowed.includes(t.dtype)) {
    throw new TypeError(`${what} must have dtype ${allowed.join(' or ')}, got ${describe(t)}`);
  }
}

export function expectRank(t: Tensor, rank: number, what: string): void {
  if (t.shape.length !== rank) throw new RangeError(`${what} must have ${rank} dimension(s), got ${describe(t)}`);
}

/** logits [N, V] f32|bf16 and targets i32 [N]. Returns N and V. */
export function checkLogprobArgs(backend: Backend, logits: Tensor, targets: Tensor): { n: number; v: number } {
  expectTensor(backend, logits, 'logits');
  expectTensor(backend, targets, 'targets');
  expectDType(logits, ['f32', 'bf16'], 'logits');
  expectDType(targets, ['i32'], 'targets');
  expectRank(logits, 2, 'logits');
  expectRank(targets, 1, 'targets');
  const [n, v] = logits.shape;
  if (targets.shape[0] !== n) {
    throw new RangeError(`targets ${describe(targets)} must have one entry per logits row (${n}), logits are ${describe(logits)}`);
  }
  if (n > 0 && v < 1) throw new RangeError(`logits ${describe(logits)} need a vocabulary of at least 1`);
  return { n, v };
}

export function expectShape(t: Tensor, shape: readonly number[], what: string): void {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new RangeError(`${what} must have shape [${shape.join(', ')}], got ${describe(t)}`);
  }
}

export function checkFinite(x: number, what: string): void {
  if (typeof x !== 'number' || !Number.isFinite(x)) throw new RangeError(`${what} must be a finite number, got ${x}`);
}
