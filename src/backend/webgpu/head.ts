// The LM head fused with the target log-probs on WebGPU (docs/ops.md "Fused head"; head.wgsl, and
// native/cpu/head.cc, the reference design): the logits h w^T exist only as one panel of rows x
// vocabulary columns at a time, made by the GEMM (gemm.ts) into a scratch buffer.
//
// Forward: for each panel of vocabulary columns, for each chunk of rows: the panel's logits (GEMM,
// transposed w, whose rows never depend on M), soft-capped in place, then one workgroup per row merges
// the panel's (max, sum of exp) into the row's running state in panel order and keeps the target's
// logit; a last kernel writes lse and logp. The panel width depends on H and the binding limit only,
// so a row's result never depends on N or on the other rows.
//
// Backward: the same panels again, the logits recomputed, turned in place into g, then dh (+)= g w_panel
// (overwritten on the first panel) and dw_panel += g^T h, two more GEMMs.
import type { HeadOpts } from '../backend.js';
import { asBf16, roundedToBf16, roundInPlace } from '../bf16_compute.js';
import type { Tensor } from '../../tensor/tensor.js';
import { matmul } from './gemm.js';
import { empty } from './memory.js';
import type { Param, WebGpuRuntime } from './runtime.js';

/** Vocabulary columns per panel (fewer where a panel of w or dw would not fit one binding). */
const PANEL = 2048;
/** Bytes of the logits scratch at most (a chunk of rows x one panel, f32). */
const SCRATCH_BYTES = 16 * 2 ** 20;

/**
 * The panel width and rows per chunk for rows of hdim. Panels are multiples of 128 columns, so a panel
 * of w rows starts at a 256-byte offset (bf16 too); chunks after the first start at multiples of 64
 * rows (the same for h and dh rows). The width never depends on N and a row's result never depends
 * on its chunk, so a row's result never depends on N.
 */
function plan(rt: WebGpuRuntime, n: number, hdim: number, v: number): { panel: number; chunk: number } {
  const rowBytes = Math.max(1, hdim) * 4; // a row of f32 h, dh, dw (a bf16 row of w is smaller)
  const panel = Math.min(PANEL, Math.floor(rt.maxBinding / rowBytes / 128) * 128);
  if (panel < 128)
    throw new RangeError(
      `webgpu: headLogprob with h rows of ${hdim} elements: 128 rows of w do not fit one binding (${rt.maxBinding} bytes)`,
    );
  const width = Math.min(panel, v);
  const cap = Math.floor(Math.min(SCRATCH_BYTES, rt.maxBinding) / (Math.max(width, hdim, 1) * 4) / 64) * 64;
  return { panel, chunk: n <= cap ? n : Math.max(64, cap) };
}

/** One dispatch of head.wgsl: hp = [rows, cols, row0, v0, v, first, softcap, n]. */
function params(rows: number, cols: number, row0: number, v0: number, v: number, first: boolean, softcap: number, n: number): Param[] {
  return [rows, cols, row0, v0, v, first ? 1 : 0, [softcap, 'f'], n];
}

export function headLogprob(
  rt: WebGpuRuntime,
  h: Tensor<'f32'>,
  w: Tensor,
  targets: Tensor<'i32'>,
  opts: HeadOpts,
): { logp: Tensor<'f32'>; lse: Tensor<'f32'> } {
  const [n, hdim] = h.shape;
  const v = w.shape[0];
  const w0 = w;
  const logp = empty(rt, 'f32', [n]);
  const lse = empty(rt, 'f32', [n]);
  if (n === 0) return { logp, lse };
  const c = opts.softcap ?? 0;
  const d = { SUBGROUPS: rt.subgroups };
  // bf16 compute: h and w rounded to bf16 first, then the f32 GEMM (as gemm.ts's matmul)
  const bf16 = opts.computeDtype === 'bf16';
  const hc = bf16 ? roundedToBf16(rt.backend, h) : h;
  const wc = bf16 ? asBf16(rt.backend, w) : w;
  w = wc;
  const { panel, chunk } = plan(rt, n, hdim, v);
  const z = rt.tensor('f32', [chunk * Math.min(panel, v)]);
  const state = rt.temp(n * 12); // per row: running max, sum, target logit
  for (let v0 = 0; v0 < v; v0 += panel) {
    const cols = Math.min(panel, v - v0);
    const wp = w.view(v0 * hdim, [cols, hdim]);
    for (let r0 = 0; r0 < n; r0 += chunk) {
      const rows = Math.min(chunk, n - r0);
      const zc = z.view(0, [rows, cols]);
      matmul(rt, hc.view(r0 * hdim, [rows, hdim]), wp, { transB: true, out: zc });
      if (c > 0)
        rt.dispatch('head', d, 'head_softcap', params(rows, cols, r0, v0, v, false, c, rows * cols), [zc], Math.ceil((rows * cols) / 256));
      rt.dispatch('head', d, 'head_panel', params(rows, cols, r0, v0, v, v0 === 0, c, 0), [zc, targets, state], rows);
    }
  }
  rt.dispatch('head', d, 'head_finish', params(0, 0, 0, 0, v, false, c, n), [state, targets, logp, lse, rt.err], Math.ceil(n / 64));
  rt.releaseBuffer(state.buffer);
  z.free();
  if (hc !== h) hc.free();
  if (wc !== w0) wc.free();
  return { logp, lse };
}

export function headLogprobBackward(
  rt: WebGpuRuntime,
  h: Tensor<'f32'>,
  w: Tensor,
  targets: Tensor<'i32'>,
  lse: Tensor<'f32'>,
  dlogp: Tensor<'f32'>,
  dh: Tensor<'f32'>,
  dw: Tensor<'f32'> | null,
  opts: HeadOpts,
): void {
  const [n, hdim] = h.shape;
  const v = w.shape[0];
  if (n === 0 || hdim === 0) return;
  const c = opts.softcap ?? 0;
  const d = { SUBGROUPS: rt.subgroups }; // the forward's module
  const { panel, chunk } = plan(rt, n, hdim, v);
  // bf16 compute: h and w rounded to bf16, and g before dh = g w and dw = g^T h (f32 GEMMs on those)
  const bf16 = opts.computeDtype === 'bf16';
  const h0 = h,
    w0 = w;
  if (bf16) {
    h = roundedToBf16(rt.backend, h);
    w = asBf16(rt.backend, w);
  }
  const z = rt.tensor('f32', [chunk * Math.min(panel, v)]);
  for (let v0 = 0; v0 < v; v0 += panel) {
    const cols = Math.min(panel, v - v0);
    const wp = w.view(v0 * hdim, [cols, hdim]);
    const dwp = dw?.view(v0 * hdim, [cols, hdim]);
    for (let r0 = 0; r0 < n; r0 += chunk) {
      const rows = Math.min(chunk, n - r0);
      const zc = z.view(0, [rows, cols]);
      const hr = h.view(r0 * hdim, [rows, hdim]);
      matmul(rt, hr, wp, { transB: true, out: zc });
      const p = params(rows, cols, r0, v0, v, false, c, rows * cols);
      rt.dispatch('head', d, 'head_grad', p, [zc, targets, lse, dlogp, rt.err], Math.ceil((rows * cols) / 256));
      if (bf16) roundInPlace(rt.backend, zc);
      matmul(rt, zc, wp, { out: dh.view(r0 * hdim, [rows, hdim]), accumulate: v0 > 0 });
      if (dwp) matmul(rt, zc, hr, { transA: true, out: dwp, accumulate: true });
    }
  }
  z.free();
  if (h !== h0) rt.backend.free(h);
  if (w !== w0) rt.backend.free(w);
}
