// Matrix products on the WebGPU device (gemm.wgsl; native/cpu/gemm.cc and gemm_rows.cc on the CPU):
// one tiled GEMM kernel, rows of A (when not transposed) and of C bound one chunk at a time; linears
// is one GEMM per weight.
import type { Tensor } from '../../tensor/tensor.js';
import type { LinearsOpts, MatmulOpts } from '../backend.js';
import { matmulOnRounded } from '../bf16_compute.js';
import { empty } from './memory.js';
import type { Bindable, Param, WebGpuRuntime } from './runtime.js';

// One GEMM dispatch per weight: the submits are batched already, and a fused kernel would need the
// weights' rows in one binding.
export function linears(rt: WebGpuRuntime, x: Tensor, weights: readonly Tensor[], opts: LinearsOpts): Tensor<'f32'>[] {
  return weights.map((w) => matmul(rt, x, w, { transB: true, ...opts }));
}

// opts.rowInvariant needs nothing here: gemm.wgsl sums each output over k in order and its variants
// depend on K only, so a row never depends on M (test/model_ops.test.ts checks it on this backend).
export function matmul(rt: WebGpuRuntime, a: Tensor, b: Tensor, opts: MatmulOpts = {}): Tensor<'f32'> {
  // bf16 compute: a and b rounded to bf16 first (bf16_compute.ts), then this f32 GEMM: the same products
  if (opts.computeDtype === 'bf16') return matmulOnRounded(rt.backend, a, b, opts);
  const [ar, ac] = a.shape;
  const [br, bc] = b.shape;
  const ta = !!opts.transA;
  const tb = !!opts.transB;
  const [m, k] = ta ? [ac, ar] : [ar, ac];
  const n = tb ? br : bc;
  const out = opts.out ?? empty(rt, 'f32', [m, n]);
  if (m === 0 || n === 0) return out;
  const acc = opts.accumulate ? 1 : 0;
  const bb = b.dtype === 'bf16';
  // 4-wide loads where rows are whole vec4s: A row-major, B the transposed [N, K] weight, K % 4 = 0
  const bVec = tb && k % 4 === 0;
  const gemmDefines = { B_BF16: bb, A_VEC: !ta && k % 4 === 0, B_VEC: bVec && !bb, B_VEC_BF16: bVec && bb, B_SCALAR: !bVec };
  // rows of A (when not transposed) and of C go in chunks; B (and a transposed A) are bound whole
  if (ta) rt.binding(a); // a transposed A larger than one binding: the clear error
  rt.binding(b);
  const chunk = rt.rowChunk(m, Math.max(ta ? 4 : ac * 4, n * 4), 'matmul operand');
  for (let r0 = 0; r0 < m; r0 += chunk) {
    const rows = Math.min(chunk, m - r0);
    if (ta && r0 > 0)
      throw new RangeError(`webgpu: matmul with transA whose output (${m} x ${n}) is larger than one binding is not supported`);
    const abind: Bindable = ta ? a : rt.rowsOf(a, r0, rows, ac);
    const params: Param[] = [rows, n, k, ac, bc, n, 0, ta ? 1 : 0, tb ? 1 : 0, acc, [opts.alpha ?? 1, 'f'], 0];
    rt.dispatch('gemm', gemmDefines, 'gemm', params, [abind, b, rt.rowsOf(out, r0, rows, n)], [Math.ceil(n / 64), Math.ceil(rows / 64)]);
  }
  return out;
}
