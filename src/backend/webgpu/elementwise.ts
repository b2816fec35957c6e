// Elementwise f32 ops on the WebGPU device (elementwise.wgsl; native/cpu/layers.cc and optim.cc on
// the CPU): residual add, scaling, logit soft-cap, metric accumulation, SwiGLU / GeGLU and its backward, bias add and its
// backward. The per-element ops go in chunks of elements, so no binding passes the device's limit.
import type { Tensor } from '../../tensor/tensor.js';
import type { GluOpts } from '../backend.js';
import type { Defines } from './kernels.js';
import { empty } from './memory.js';
import type { WebGpuRuntime } from './runtime.js';

/** An elementwise f32 kernel over n elements of same-shaped tensors, chunked by binding size. */
function ew(rt: WebGpuRuntime, entry: string, ts: Tensor[], a: number, b: number, defines: Defines = {}): void {
  const n = ts[0].numel;
  if (n === 0) return;
  const chunk = rt.elementChunk();
  for (let e0 = 0; e0 < n; e0 += chunk) {
    const cnt = Math.min(chunk, n - e0);
    rt.dispatch(
      'elementwise',
      defines,
      entry,
      [cnt, 0, 0, 0, [a, 'f'], [b, 'f'], 0, 0],
      ts.map((t) => rt.sub(t, e0, cnt)),
      Math.ceil(cnt / 256),
    );
  }
}

export function scaleInPlace(rt: WebGpuRuntime, x: Tensor<'f32'>, a: number): void {
  ew(rt, 'scale', [x], a, 0);
}

/** x = c tanh(x / c), in place (c > 0; common.wgsl's tanh_f, accurate near 0). */
export function softcapInPlace(rt: WebGpuRuntime, x: Tensor<'f32'>, c: number): void {
  ew(rt, 'softcap', [x], c, 0);
}

export function accumulate(rt: WebGpuRuntime, acc: Tensor<'f32'>, x: Tensor<'f32'>, alpha: number): void {
  const hi = Math.fround(alpha);
  ew(rt, 'accumulate', [acc, x], hi, alpha - hi);
}

/** The variant of the swiglu kernels: GELU_TANH picks GeGLU's activation (elementwise.wgsl gelu_z). */
const gluDefines = (opts: GluOpts): Defines => ({ GELU_TANH: opts.activation === 'gelu_tanh' });

export function swiglu(rt: WebGpuRuntime, gate: Tensor<'f32'>, up: Tensor<'f32'>, opts: GluOpts = {}): Tensor<'f32'> {
  const out = empty(rt, 'f32', gate.shape);
  ew(rt, 'swiglu', [gate, up, out], 0, 0, gluDefines(opts));
  return out;
}

export function swigluBackward(
  rt: WebGpuRuntime,
  gate: Tensor<'f32'>,
  up: Tensor<'f32'>,
  dout: Tensor<'f32'>,
  opts: GluOpts = {},
): { dgate: Tensor<'f32'>; dup: Tensor<'f32'> } {
  const dgate = empty(rt, 'f32', gate.shape);
  const dup = empty(rt, 'f32', gate.shape);
  ew(rt, 'swiglu_backward', [gate, up, dout, dgate, dup], 0, 0, gluDefines(opts));
  return { dgate, dup };
}

export function add(rt: WebGpuRuntime, a: Tensor<'f32'>, b: Tensor<'f32'>, out?: Tensor<'f32'>): Tensor<'f32'> {
  const y = out ?? empty(rt, 'f32', a.shape);
  const same = (x: Tensor, z: Tensor): boolean => x.handle === z.handle && x.byteOffset === z.byteOffset;
  if (same(y, a)) ew(rt, 'add_inplace', [y, b], 0, 0);
  else if (same(y, b)) ew(rt, 'add_inplace', [y, a], 0, 0);
  else ew(rt, 'add', [a, b, y], 0, 0);
  return y;
}

export function addBias(rt: WebGpuRuntime, x: Tensor<'f32'>, bias: Tensor): void {
  const [t, n] = x.shape;
  if (t * n === 0) return;
  rt.dispatch(
    'elementwise',
    { W_BF16: bias.dtype === 'bf16' },
    'add_bias',
    [t * n, n, t, 0, [0, 'f'], [0, 'f'], 0, 0],
    [x, bias],
    Math.ceil((t * n) / 256),
  );
}

export function biasBackward(rt: WebGpuRuntime, dy: Tensor<'f32'>, dbias: Tensor<'f32'>): void {
  const [t, n] = dy.shape;
  if (n === 0) return;
  rt.dispatch('elementwise', {}, 'bias_backward', [0, n, t, 0, [0, 'f'], [0, 'f'], 0, 0], [dbias, dy], Math.ceil(n / 64));
}
