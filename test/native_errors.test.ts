// The error classes the native addon throws, called directly (below the backend's own checks), as Node
// does it: TypeError for an argument of the wrong kind (not a number, not a buffer handle, an unknown
// dtype or enum name, a dtype the op does not take), RangeError for a value outside what is allowed
// (negative or fractional sizes, indices out of range, overruns, non-finite numbers), plain Error for
// an object in the wrong state (a buffer used after free()). Every message starts "spinlm native: ".
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { loadAddon, type NativeView } from '../src/backend/native/addon.js';
import { withSeed } from './helpers/random.js';

const native = loadAddon();

type Kind = 'TypeError' | 'RangeError' | 'Error';

function throwsKind(fn: () => unknown, kind: Kind, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof Error, `threw a non-Error: ${String(err)}`);
    assert.equal(err.constructor.name, kind, `expected ${kind}, got ${err.constructor.name}: ${err.message}`);
    assert.match(err.message, /^spinlm native: /);
    assert.match(err.message, pattern);
    return true;
  });
}

/** A fresh buffer of `n` f32 (or i32) elements holding `values` (or nonzero random values). */
function buffer(n: number, values?: ArrayLike<number>, int = false): NativeView {
  const view = { handle: native.alloc(n * 4), byteOffset: 0 };
  const data = int ? new Int32Array(n) : new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = values ? values[i] : 0.5 + i;
  native.write(view, data);
  return view;
}

describe('native errors: TypeError for arguments of the wrong kind', () => {
  test('buffers, views, numbers and host data', () => {
    return withSeed((rng) => {
      const n = rng.int(2, 40);
      const x = buffer(n);
      throwsKind(() => native.alloc('64' as never), 'TypeError', /bytes must be a number/);
      throwsKind(() => native.free({}), 'TypeError', /buffer is not a spinlm buffer handle/);
      throwsKind(() => native.write({ handle: {}, byteOffset: 0 }, new Float32Array(n)), 'TypeError', /not a spinlm buffer handle/);
      throwsKind(() => native.write(7 as never, new Float32Array(n)), 'TypeError', /must be a tensor view/);
      throwsKind(() => native.write(x, Array.from({ length: n }, () => 1) as never), 'TypeError', /host data must be a TypedArray/);
      throwsKind(
        () => native.read({ handle: x.handle, byteOffset: '0' as never }, new Float32Array(n)),
        'TypeError',
        /byteOffset must be a number/,
      );
      throwsKind(() => native.fill(x, n, 4, null as never), 'TypeError', /pattern must be a number/);
      throwsKind(() => native.expThroughput(1024, 'exp2' as never), 'TypeError', /exp must be 'loss' or 'cephes'/);
      throwsKind(() => native.expThroughput(1024, 1 as never), 'TypeError', /exp must be 'loss' or 'cephes'/);
      native.free(x.handle);
    });
  });

  test('dtypes: unknown names and dtypes an op does not take', () => {
    return withSeed((rng) => {
      const n = rng.int(2, 16),
        v = rng.int(2, 16);
      const z = buffer(n * v),
        y = buffer(
          n,
          Array.from({ length: n }, () => rng.int(0, v - 1)),
          true,
        );
      const logp = buffer(n),
        lse = buffer(n);
      throwsKind(() => native.cast(z, 'f64', buffer(n * v), 'f32', n * v), 'TypeError', /source dtype must be 'f32', 'bf16' or 'i32'/);
      throwsKind(() => native.cast(z, 'f32', buffer(n * v), 3 as never, n * v), 'TypeError', /destination dtype must be/);
      throwsKind(() => native.cast(z, 'f32', buffer(n * v), 'i32', n * v), 'TypeError', /cannot cast between i32 and floats/);
      throwsKind(() => native.logprobGather(z, 'i32', n, v, y, logp, lse), 'TypeError', /logits must be f32 or bf16/);
      throwsKind(
        () => native.logprobGatherBackward(z, 'f32', n, v, y, lse, logp, buffer(n * v), 'i32'),
        'TypeError',
        /logits and dlogits must be f32 or bf16/,
      );
      throwsKind(
        () => native.rmsnorm(z, buffer(v), 'i32', n, v, 1e-5, buffer(n * v), buffer(n), false),
        'TypeError',
        /weight dtype must be f32 or bf16/,
      );
      throwsKind(() => native.swiglu(z, z, n * v, buffer(n * v), 'relu' as never), 'TypeError', /activation must be 'silu' or 'gelu_tanh'/);
      const g = buffer(n);
      const h = { lr: 1e-3, alpha: 0.99, eps: 1e-8, weightDecay: 0 };
      throwsKind(() => native.rmspropStep(buffer(n), 'i32', null, g, n, buffer(n), h, null), 'TypeError', /parameters must be f32 or bf16/);
      throwsKind(
        () => native.rmspropStep(buffer(n), 'bf16', null, g, n, buffer(n), h, null),
        'TypeError',
        /bf16 parameter needs an f32 master copy/,
      );
    });
  });

  test('numbers, options objects and enum names', () => {
    return withSeed((rng) => {
      const b = rng.int(1, 9);
      const both = () =>
        buffer(
          2 * b,
          Array.from({ length: 2 * b }, () => -1 - 10 * rng.next()),
        );
      const outs = [buffer(7 * b), buffer(8), buffer(2 * b)] as const;
      throwsKind(
        () => native.spinLoss(both(), both(), null, b, '0.1' as never, 'sigmoid', 0, null, 1, ...outs),
        'TypeError',
        /beta must be a number/,
      );
      throwsKind(
        () => native.spinLoss(both(), both(), null, b, 0.1, 'dpo', 0, null, 1, ...outs),
        'TypeError',
        /loss type must be 'sigmoid', 'hinge', 'ipo' or 'sppo_hard'/,
      );
      throwsKind(
        () => native.spinLoss(both(), both(), null, b, 0.1, 'sigmoid', 0, null, 'x' as never, ...outs),
        'TypeError',
        /gradScale must be a number/,
      );
      const n = rng.int(2, 30);
      const p = buffer(n),
        g = buffer(n),
        m = buffer(n),
        s = buffer(n);
      throwsKind(
        () => native.rmspropStep(p, 'f32', null, g, n, s, 0.01 as never, null),
        'TypeError',
        /rmsprop hyperparameters must be an object/,
      );
      throwsKind(
        () => native.adamwStep(p, 'f32', null, g, n, m, s, null as never, null),
        'TypeError',
        /adamw hyperparameters must be an object/,
      );
      throwsKind(
        () => native.rmspropStep(p, 'f32', null, g, n, s, { lr: '1e-3', alpha: 0.99, eps: 1e-8, weightDecay: 0 } as never, null),
        'TypeError',
        /optimizer hyperparameter 'lr' must be a number/,
      );
      throwsKind(() => native.clipCoefficient(buffer(1), 1, 'inf' as never, buffer(2)), 'TypeError', /maxNorm must be a number/);
      throwsKind(() => native.scaleInPlace(p, n, undefined as never), 'TypeError', /scale must be a number/);
      throwsKind(() => native.softcapInPlace(p, n, '30' as never), 'TypeError', /softcap must be a number/);
      throwsKind(
        () => native.rope(buffer(4 * n), buffer(n, new Int32Array(n), true), new Float32Array(2), n, 1, 4, '1' as never, false),
        'TypeError',
        /attnScale must be a number/,
      );
      throwsKind(
        () => native.rope(buffer(4 * n), buffer(n, new Int32Array(n), true), [1, 1] as never, n, 1, 4, 1, false),
        'TypeError',
        /invFreq must be a Float32Array/,
      );
    });
  });
});

describe('native errors: RangeError for values out of range', () => {
  test('sizes, offsets and overruns', () => {
    return withSeed((rng) => {
      const n = rng.int(2, 40);
      const x = buffer(n);
      throwsKind(() => native.alloc(-rng.int(1, 100)), 'RangeError', /bytes must be a non-negative integer/);
      throwsKind(() => native.alloc(rng.int(1, 100) + 0.5), 'RangeError', /bytes must be a non-negative integer/);
      throwsKind(() => native.write(x, new Float32Array(n + rng.int(1, 5))), 'RangeError', /overrun its buffer/);
      throwsKind(() => native.read({ handle: x.handle, byteOffset: 4 * n + 4 }, new Float32Array(1)), 'RangeError', /overrun its buffer/);
      throwsKind(() => native.fill(x, n, 3 as never, 1), 'RangeError', /elementBytes must be 2 or 4/);
    });
  });

  test('indices and numeric values', () => {
    return withSeed((rng) => {
      const n = rng.int(2, 16),
        v = rng.int(2, 16);
      const bad = rng.int(0, n - 1);
      const ids = Array.from({ length: n }, (_, i) => (i === bad ? v + rng.int(0, 5) : rng.int(0, v - 1)));
      // an index out of range is device data, not an argument: no throw, the error word gets its bit
      // (src/ops turns it into an error at the next read) and the outputs are NaN
      const logp = buffer(n);
      native.logprobGather(buffer(n * v), 'f32', n, v, buffer(n, ids, true), logp, buffer(n));
      assert.equal(native.takeErrors(), 1, 'kErrTargets');
      assert.equal(native.takeErrors(), 0, 'taking clears the word');
      const host = new Float32Array(n);
      native.read(logp, host);
      assert.ok(host.every(Number.isNaN));
      const b = rng.int(1, 9);
      const both = () =>
        buffer(
          2 * b,
          Array.from({ length: 2 * b }, () => -1 - 10 * rng.next()),
        );
      throwsKind(
        () => native.spinLoss(both(), both(), null, b, 0.1, 'sigmoid', -rng.next() - 0.1, null, 1, buffer(7 * b), buffer(8), buffer(2 * b)),
        'RangeError',
        /nllAlpha must be a finite number >= 0/,
      );
      const p = buffer(n),
        g = buffer(n);
      const h = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 0 };
      throwsKind(
        () => native.adamwStep(p, 'f32', null, g, n, buffer(n), buffer(n), h, null),
        'RangeError',
        /adamw 'step' must be an integer >= 1/,
      );
      for (const c of [0, -rng.next() - 0.1, NaN, Infinity, 1e-50, 1e39])
        throwsKind(() => native.softcapInPlace(p, n, c), 'RangeError', /softcap must be a finite number > 0/);
      throwsKind(
        () => native.rmspropStep(p, 'f32', null, g, n, buffer(n), { lr: Number.NaN, alpha: 0.99, eps: 1e-8, weightDecay: 0 }, null),
        'RangeError',
        /'lr' must be finite/,
      );
      throwsKind(
        () => native.rope(buffer(3 * n), buffer(n, new Int32Array(n), true), new Float32Array(1), n, 1, 3, 1, false),
        'RangeError',
        /even head dimension/,
      );
      throwsKind(
        () => native.rope(buffer(4 * n), buffer(n, new Int32Array(n), true), new Float32Array(3), n, 1, 4, 1, false),
        'RangeError',
        /invFreq must hold headDim \/ 2 values/,
      );
    });
  });
});

test('native errors: a buffer used after free() is a state error (Error, neither TypeError nor RangeError)', () => {
  return withSeed((rng) => {
    const n = rng.int(1, 40);
    const x = buffer(n);
    native.free(x.handle);
    throwsKind(() => native.read(x, new Float32Array(n)), 'Error', /tensor was used after free\(\)/);
    throwsKind(() => native.free(x.handle), 'Error', /buffer was used after free\(\)/);
  });
});
